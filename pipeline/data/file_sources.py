"""Sources on a file system: folders of images per class, and TFRecord files.

    folder:<path>     a sub-folder of images per class (ImageNet's), or split
                      folders train/ and val/, validation/ or test/ of those
    tfrecord:<glob>   tf.train.Example records: image/encoded, image/class/label
"""

import errno
import functools
import glob
import os
import re

import numpy as np
import tensorflow as tf

from pipeline.data import image_formats
from pipeline.data import ingested_dataset
from pipeline.data import source
from pipeline.errors import PipelineError
from pipeline.errors import first_line
from pipeline.storage import atomic

# Split folders of a folder: source (PATH/train/<class>/, PATH/val/<class>/, ...).
SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation",
                 "test": "test"}

# ImageNet's TFRecords are named train-00000-of-01024, validation-00000-of-00128.
_SPLIT_FILE_NAME = re.compile(r"^(train|validation|test)[-_.]")


def _visible(names):
    """Hidden entries (.DS_Store, .git) are not data."""
    return sorted(name for name in names if not name.startswith("."))


def _subfolders(directory):
    return [
        name
        for name in _visible(os.listdir(directory))
        if os.path.isdir(os.path.join(directory, name))
    ]


def _printable(path):
    """A path as text even when it is not valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _files(directory, visited):
    """The visible files under `directory`, links followed, each real directory
    once: a link back up (`loop -> .`) ends the walk instead of recursing.
    Dangling links are listed like files; reading them fails and ingest skips them."""
    real = os.path.realpath(directory)
    if real in visited:
        return []
    visited.add(real)
    try:
        names = _visible(os.listdir(directory))
    except OSError:
        return []
    paths = []
    for name in names:
        path = os.path.join(directory, name)
        paths += _files(path, visited) if os.path.isdir(path) else [path]
    return paths


def _split_folders(spec, root):
    """{split: directory}: the split folders if `root` has train/ and another,
    else {"train": root}."""
    folders = _subfolders(root)
    splits = [name for name in folders if name in SPLIT_FOLDERS]
    if "train" not in splits or len(splits) < 2:
        return {"train": root}
    others = sorted(set(folders) - set(splits))
    if others:
        raise PipelineError(
            f"{spec}: {root} has split folders {', '.join(splits)} and also "
            f"{', '.join(others)}; put every class folder inside a split folder"
        )
    if "val" in splits and "validation" in splits:
        raise PipelineError(
            f"{spec}: {root} has both val/ and validation/; keep one of them"
        )
    return {SPLIT_FOLDERS[name]: os.path.join(root, name) for name in splits}


def _class_folders(spec, directory):
    class_names = _subfolders(directory)
    for name in class_names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise PipelineError(
                f"{spec}: the class folder name {_printable(os.path.join(directory, name))} "
                "is not valid UTF-8; rename it"
            ) from None
    if len(class_names) < 2:
        raise PipelineError(
            f"{spec}: {directory} has {len(class_names)} class folder(s); a classifier "
            "needs at least two sub-folders, one per class, holding its images"
        )
    return class_names


def folder(spec, path):
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise PipelineError(
            f"{spec}: {root} is not a directory; "
            "give a folder with one sub-folder per class"
        )
    split_dirs = _split_folders(spec, root)
    class_names = _class_folders(spec, split_dirs["train"])
    split_paths, all_paths = {}, []
    for split, split_dir in split_dirs.items():
        names = _class_folders(spec, split_dir)
        if names != class_names:
            missing = sorted(set(class_names) - set(names))
            extra = sorted(set(names) - set(class_names))
            raise PipelineError(
                f"{spec}: the class folders of {split_dir} differ from train's "
                f"(missing: {', '.join(missing) or 'none'}; "
                f"not in train: {', '.join(extra) or 'none'}); every split needs the same"
            )
        paths, labels = [], []
        for label, class_name in enumerate(class_names):
            class_paths = _files(os.path.join(split_dir, class_name), set())
            if not class_paths:
                raise PipelineError(
                    f"{spec}: class folder {os.path.join(split_dir, class_name)} has no "
                    "files; add its images or remove it"
                )
            paths += class_paths
            labels += [label] * len(class_paths)
        split_paths[split] = paths, np.array(labels, np.int64)
        all_paths += paths

    def read_one(paths, index):
        path = paths[index]
        if os.path.islink(path) and not os.path.exists(path):
            raise OSError(errno.ENOENT, "dangling symbolic link")
        return atomic.read_regular_file(path, image_formats.MAX_FILE_BYTES)

    def load():
        splits = {
            split: source.SourceSplit(
                keys=paths,
                ids=[os.path.relpath(path, root) for path in paths],
                labels=labels,
                read_one=functools.partial(read_one, paths),
            )
            for split, (paths, labels) in split_paths.items()
        }
        return class_names, splits

    return source.Source(
        spec, source.file_fingerprint(root, all_paths), channels=None, flip=True, load=load
    )


def read_class_names(value):
    """`class_names`: a file with one name per line, or a comma-separated list."""
    if os.path.isfile(value):
        with open(value) as file:
            names = [line.strip() for line in file if line.strip()]
    elif "," in value:
        names = [name.strip() for name in value.split(",")]
    else:
        raise PipelineError(
            f"class_names={value!r} is neither a file "
            "nor a comma-separated list of names"
        )
    if "" in names or len(set(names)) != len(names):
        raise PipelineError(f"class_names={value!r} has empty or repeated names")
    return names


# The most classes a `tfrecord:` dataset may have: ten times ImageNet-21k's.
MAX_CLASSES = 250_000


def _read_labels(path):
    """The labels of one file; parsing both features finds a record missing one."""
    records = tf.data.TFRecordDataset(path).map(
        lambda record: ingested_dataset.parse_record(record)[1]
    )
    try:
        batches = list(records.batch(4096).as_numpy_iterator())
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        raise PipelineError(
            f"{path} is not a TFRecord file of tf.train.Example records with "
            f"image/encoded and image/class/label ({first_line(error)})"
        ) from None
    return np.concatenate(batches) if batches else np.zeros([0], np.int64)


def tfrecord(spec, pattern, label_offset, class_names_option):
    paths = sorted(glob.glob(os.path.expanduser(pattern)))
    if not paths:
        raise PipelineError(
            f"{spec}: no files match {pattern!r}; check the path and the glob"
        )
    names = [os.path.basename(path) for path in paths]
    split_of = [_SPLIT_FILE_NAME.match(name) for name in names]
    # Splits come from the file names only when every file names one; a mix
    # would be a guess.
    if all(split_of):
        split_paths = {}
        for path, match in zip(paths, split_of):
            split_paths.setdefault(match.group(1), []).append(path)
    else:
        split_paths = {"train": paths}
    given_names = (
        read_class_names(class_names_option) if class_names_option else None
    )

    def images(files):
        records = tf.data.TFRecordDataset(files)
        return records.map(
            lambda record: ingested_dataset.parse_record(record)[0]
        ).as_numpy_iterator()

    def load():
        splits = {}
        for split, files in split_paths.items():
            keys, ids, labels = [], [], []
            for path in files:
                file_labels = _read_labels(path) - label_offset
                keys += [f"{path}#{index}" for index in range(len(file_labels))]
                # By file name: adding a file moves none of the others' records.
                name = os.path.basename(path)
                ids += [f"{name}#{index}" for index in range(len(file_labels))]
                labels.append(file_labels)
                if len(file_labels) and file_labels.min() < 0:
                    raise PipelineError(
                        f"{path} has label {file_labels.min() + label_offset}, "
                        f"below label_offset={label_offset}; "
                        "labels must start at the offset"
                    )
                # Every label up to the largest is a class: one far off the
                # others would make billions of them.
                limit = MAX_CLASSES if given_names is None else len(given_names)
                if len(file_labels) and file_labels.max() >= limit:
                    index = int(file_labels.argmax())
                    raise PipelineError(
                        f"{path}, record {index}, has label "
                        f"{int(file_labels[index]) + label_offset}: "
                        + (f"over the {MAX_CLASSES:,} classes a dataset may have; labels "
                           "must count classes from label_offset" if given_names is None
                           else f"`class_names` gives {len(given_names)} names; give every "
                                "class a name or fix `label_offset`")
                    )
            splits[split] = source.SourceSplit(
                keys=keys,
                ids=ids,
                labels=np.concatenate(labels),
                read_all=functools.partial(images, files),
            )
        top_label = max(int(split.labels.max(initial=-1)) for split in splits.values())
        if given_names is None:
            return [str(label) for label in range(top_label + 1)], splits
        return given_names, splits

    fingerprint = source.fingerprint(
        [source.file_fingerprint(os.path.dirname(paths[0]), paths), label_offset, given_names]
    )
    return source.Source(spec, fingerprint, channels=None, flip=True, load=load)
