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

import functools
import hashlib
import os

import numpy as np
import tensorflow as tf

from pipeline.data import file_sources
from pipeline.data import source
from pipeline.errors import PipelineError
from pipeline.errors import first_line

KINDS = ("digits", "tfds", "folder", "tfrecord")
SPEC_HELP = "digits, tfds:<name>, folder:<path> or tfrecord:<glob>"

# Digit and character sets whose classes a horizontal flip would change or
# make unreadable; every other TFDS set (fashion_mnist included) is flip-safe.
NO_FLIP_TFDS = frozenset(
    {"mnist", "emnist", "kmnist", "binarized_mnist", "svhn_cropped"}
)


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
        return file_sources.folder(spec, argument)
    return file_sources.tfrecord(spec, argument, data_config.label_offset, data_config.class_names)


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
        split = source.SourceSplit(
            keys=[f"digits[{index}]" for index in range(len(labels))],
            ids=[str(index) for index in range(len(labels))],
            labels=labels,
            read_one=encoded.__getitem__,
        )
        return [str(digit) for digit in range(10)], {"train": split}

    fingerprint = source.fingerprint(
        [hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()]
    )
    # A mirrored digit is another digit, or none.
    return source.Source(spec, fingerprint, channels=1, flip=False, load=load)


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
            splits[split] = source.SourceSplit(
                keys=[f"{name}:{split}[{index}]" for index in range(len(labels))],
                # A TFDS version's content is fixed: a position names an example.
                ids=[f"{split}[{index}]" for index in range(len(labels))],
                labels=labels,
                read_all=functools.partial(images, split),
            )
        return list(info.features[label_key].names), splits

    base_name = name.split("/")[0].split(":")[0]
    return source.Source(
        spec,
        source.fingerprint([info.full_name, split_sizes]),
        channels={1: 1, 3: 3, 4: 3}.get(image_channels),
        flip=base_name not in NO_FLIP_TFDS,
        load=load,
    )
