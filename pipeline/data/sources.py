"""Where images come from: the `dataset` spec and one reader per kind of source.

    digits            scikit-learn's 1,797 8x8 digits, installed with it (offline)
    tfds:<name>       a TFDS image-classification dataset, e.g. tfds:cifar10
    folder:<path>     a sub-folder of images per class (ImageNet's), or split
                      folders train/ and val/, validation/ or test/ of those
    tfrecord:<glob>   tf.train.Example records: image/encoded, image/class/label

`open_source` is cheap (it lists and fingerprints, it reads no images), so the
ingest stage can tell an unchanged source from a changed one before doing any
work; `Source.load` reads the labels and hands out the image bytes.
"""

import dataclasses
import errno
import functools
import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from pipeline.data import ingested_dataset
from pipeline.errors import PipelineError
from pipeline.errors import first_line

KINDS = ("digits", "tfds", "folder", "tfrecord")
SPEC_HELP = "digits, tfds:<name>, folder:<path> or tfrecord:<glob>"

# Digit and character sets whose classes a horizontal flip would change or
# make unreadable; every other TFDS set (fashion_mnist included) is flip-safe.
NO_FLIP_TFDS = frozenset(
    {"mnist", "emnist", "kmnist", "binarized_mnist", "svhn_cropped"}
)

# Split folders of a folder: source (PATH/train/<class>/, PATH/val/<class>/, ...).
SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation",
                 "test": "test"}

# ImageNet's TFRecords are named train-00000-of-01024, validation-00000-of-00128.
_SPLIT_FILE_NAME = re.compile(r"^(train|validation|test)[-_.]")


@dataclasses.dataclass(frozen=True)
class SourceSplit:
    """One split of a source: its examples' names, identities and labels, and
    their image bytes.

    `keys` name examples for people (a file's path); `ids` identify them for the
    split assignment, and stay the same when other examples come or go and when
    the source moves (a file's path relative to the folder, an index into a
    fixed set, a record's position in its file). Exactly one of the readers is
    set: `read_one(index)` where the source can seek (files, arrays),
    `read_all()` (every example, in stored order) where it can only stream
    (TFDS, TFRecord).
    """

    keys: list[str]
    ids: list[str]
    labels: np.ndarray
    read_one: Callable[[int], bytes] | None = None
    read_all: Callable[[], Iterator[bytes]] | None = None


@dataclasses.dataclass(frozen=True)
class Source:
    """An opened `dataset`: what identifies its content, and how to load it.

    `load()` returns `(class_names, {split name: SourceSplit})`; a source without
    splits of its own has just "train". `channels` is None when only the images
    can tell (folders, TFRecords).
    """

    spec: str
    fingerprint: str
    channels: int | None
    flip: bool
    load: Callable[[], tuple[list[str], dict[str, SourceSplit]]]


def parse_spec(spec):
    """Splits a `dataset` spec: "tfds:cifar10" -> ("tfds", "cifar10")."""
    kind, _, argument = spec.partition(":")
    if kind not in KINDS:
        raise PipelineError(f"unknown dataset {spec!r}: use {SPEC_HELP}")
    if (kind == "digits") != (argument == ""):
        raise PipelineError(f"malformed dataset {spec!r}: use {SPEC_HELP}")
    return kind, argument


def canonical_spec(spec):
    """The spec with a folder's or glob's path made absolute: "folder:images"
    names another source in another working directory."""
    kind, argument = parse_spec(spec)
    if kind in ("folder", "tfrecord"):
        return f"{kind}:{os.path.abspath(os.path.expanduser(argument))}"
    return spec


def open_source(data_config):
    """Opens `data_config.dataset` without reading its images; the `Source`'s
    spec is the canonical one."""
    kind, argument = parse_spec(data_config.dataset)
    spec = canonical_spec(data_config.dataset)
    if kind != "tfrecord" and (data_config.label_offset or data_config.class_names):
        raise PipelineError(
            "`label_offset` and `class_names` apply to tfrecord: datasets only; "
            f"{data_config.dataset!r} has its own labels and class names"
        )
    if kind == "digits":
        return _digits(spec)
    if kind == "tfds":
        return _tfds(spec, argument, data_config.data_dir)
    if kind == "folder":
        return _folder(spec, argument)
    return _tfrecord(spec, argument, data_config.label_offset, data_config.class_names)


def _fingerprint(values):
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def _file_fingerprint(root, paths):
    """Names, sizes and modification times: reading every byte of a large set
    again only to find it unchanged would cost as much as ingesting it. A
    dangling link counts by its name; ingest skips it."""

    def stat(path):
        try:
            result = os.stat(path)
        except OSError:
            return None, None
        return result.st_size, result.st_mtime_ns

    return _fingerprint([[os.path.relpath(path, root), *stat(path)] for path in paths])


def _digits(spec):
    # Imported here: only this source needs scikit-learn.
    from sklearn import datasets

    digits = datasets.load_digits()
    # The 8x8 images hold counts 0-16 of set pixels in 4x4 blocks; 0-255 makes
    # them ordinary 8-bit grey images.
    pixels = np.round(digits.images * 255 / 16).astype(np.uint8)[..., np.newaxis]
    labels = digits.target.astype(np.int64)

    def load():
        encoded = [tf.io.encode_png(image).numpy() for image in pixels]
        split = SourceSplit(
            keys=[f"digits[{index}]" for index in range(len(labels))],
            ids=[str(index) for index in range(len(labels))],
            labels=labels,
            read_one=encoded.__getitem__,
        )
        return [str(digit) for digit in range(10)], {"train": split}

    fingerprint = _fingerprint(
        [hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()]
    )
    # A mirrored digit is another digit, or none.
    return Source(spec, fingerprint, channels=1, flip=False, load=load)


def _tfds(spec, name, data_dir):
    # Imported here: tensorflow_datasets takes seconds to import.
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise PipelineError(
            f"unknown TFDS dataset {name!r}: "
            "see https://www.tensorflow.org/datasets/catalog"
        ) from None
    try:
        builder.download_and_prepare()
    # Downloads fail in many ways (DNS, HTTP, checksums, missing manual files).
    except Exception as error:
        raise PipelineError(
            f"could not download or prepare TFDS dataset {name!r} "
            f"({first_line(error)}); "
            "without network access, point `data_dir` at a directory holding it "
            f"already prepared (tfds build {name} --data_dir DIR)"
        ) from None
    info = builder.info
    image_key, label_key = info.supervised_keys or (None, None)
    features = dict(info.features)
    if not (
        isinstance(features.get(image_key), tfds.features.Image)
        and isinstance(features.get(label_key), tfds.features.ClassLabel)
    ):
        raise PipelineError(
            f"TFDS dataset {name!r} is not an image classification dataset "
            f"(supervised keys {info.supervised_keys}): choose one with image and label"
        )
    split_sizes = {split: info.splits[split].num_examples for split in info.splits}
    if not split_sizes:
        raise PipelineError(
            f"TFDS dataset {name!r} in {builder.data_dir} lists no splits"
        )
    image_channels = info.features[image_key].shape[-1]

    def dataset(split):
        # SkipDecoding keeps TFDS's own PNG/JPEG bytes, so nothing is re-encoded.
        return builder.as_dataset(
            split=split,
            decoders={image_key: tfds.decode.SkipDecoding()},
            shuffle_files=False,
        )

    def images(split):
        return (
            dataset(split).map(lambda example: example[image_key]).as_numpy_iterator()
        )

    def load():
        splits = {}
        for split in split_sizes:
            labels = dataset(split).map(lambda example: example[label_key])
            labels = np.concatenate(list(labels.batch(4096).as_numpy_iterator()))
            splits[split] = SourceSplit(
                keys=[f"{name}:{split}[{index}]" for index in range(len(labels))],
                # A TFDS version's content is fixed: a position names an example.
                ids=[f"{split}[{index}]" for index in range(len(labels))],
                labels=labels,
                read_all=functools.partial(images, split),
            )
        return list(info.features[label_key].names), splits

    base_name = name.split("/")[0].split(":")[0]
    return Source(
        spec,
        _fingerprint([info.full_name, split_sizes]),
        channels={1: 1, 3: 3, 4: 3}.get(image_channels),
        flip=base_name not in NO_FLIP_TFDS,
        load=load,
    )


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


def _folder(spec, path):
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
        with open(path, "rb") as file:
            return file.read()

    def load():
        splits = {
            split: SourceSplit(
                keys=paths,
                ids=[os.path.relpath(path, root) for path in paths],
                labels=labels,
                read_one=functools.partial(read_one, paths),
            )
            for split, (paths, labels) in split_paths.items()
        }
        return class_names, splits

    return Source(
        spec, _file_fingerprint(root, all_paths), channels=None, flip=True, load=load
    )


def _class_names_option(value):
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


def _tfrecord(spec, pattern, label_offset, class_names_option):
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
        _class_names_option(class_names_option) if class_names_option else None
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
            splits[split] = SourceSplit(
                keys=keys,
                ids=ids,
                labels=np.concatenate(labels),
                read_all=functools.partial(images, files),
            )
        top_label = max(int(split.labels.max(initial=-1)) for split in splits.values())
        if given_names is None:
            return [str(label) for label in range(top_label + 1)], splits
        if top_label >= len(given_names):
            raise PipelineError(
                f"{spec} has label {top_label + label_offset} but `class_names` "
                f"gives {len(given_names)} names; "
                "give every class a name or fix `label_offset`"
            )
        return given_names, splits

    fingerprint = _fingerprint(
        [_file_fingerprint(os.path.dirname(paths[0]), paths), label_offset, given_names]
    )
    return Source(spec, fingerprint, channels=None, flip=True, load=load)
