"""The ingested dataset: what ingest writes and every later stage reads.

An ingest directory holds `<split>-NNNNN.tfrecord` shards of `tf.train.Example`
records and `manifest.json`, written last. `IngestedDataset` is that directory
as a frozen, typed object: `pipeline.ingest` returns one, and transform, train,
tune and evaluate take it; nothing else reads `manifest.json`. The record
format is declared here once, beside the one parser of it, as TF Model Garden
keeps a decoder apart from the preprocessing that follows it.
"""

import dataclasses
import json
import os

import tensorflow as tf

from pipeline.config import PipelineError

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
# Bump when the layout or the records change, so that older ingests are redone.
FORMAT_VERSION = 1

# ImageNet's convention (TF's build_imagenet_data.py, TF Model Garden): the
# original encoded bytes and a label, 0-based once ingested, with the format and
# size for people and tools. Only the first two are read back, so that records
# made by other tools (the tfrecord: source) parse alike.
RECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
}
_READ_FEATURES = {key: RECORD_FEATURES[key] for key in ("image/encoded", "image/class/label")}


def parse_record(record):
    """A serialized record (scalar or [batch]) -> (encoded image bytes, int64 label)."""
    parse = tf.io.parse_single_example if record.shape.rank == 0 else tf.io.parse_example
    features = parse(record, _READ_FEATURES)
    return features["image/encoded"], features["image/class/label"]


def serialize_record(image_bytes, image_format, label, height, width):
    """The `tf.train.Example` bytes of one ingested image."""

    def bytes_feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    features = {
        "image/encoded": bytes_feature(image_bytes),
        "image/format": bytes_feature(image_format.encode()),
        "image/class/label": int_feature(label),
        "image/height": int_feature(height),
        "image/width": int_feature(width),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's shard file names (relative to the directory) and example count."""

    files: tuple[str, ...]
    num_examples: int


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An image ingest could not use, and why."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class IngestedDataset:
    """A finished ingest.

    Attributes:
        directory: where the shards and `manifest.json` are.
        source: the `dataset` spec it was made from, e.g. "tfds:cifar10".
        fingerprint: identifies the source's content and the ingest settings.
        class_names: one name per label, in label order.
        channels: the dataset's own channels: 1 only if every image is grey.
        flip: whether a horizontal flip keeps an image's class.
        image_size: the median (height, width) of the images, or None if empty.
        splits: {"train" | "validation" | "test": Split}.
        skipped: the images left out, with the reason.
    """

    directory: str
    source: str
    fingerprint: str
    class_names: tuple[str, ...]
    channels: int
    flip: bool
    image_size: tuple[int, int] | None
    splits: dict[str, Split]
    skipped: tuple[Skipped, ...] = ()

    @property
    def num_classes(self):
        return len(self.class_names)

    def num_examples(self, split):
        return self.splits[split].num_examples if split in self.splits else 0

    def files(self, split):
        """Full paths of a split's shards."""
        return [os.path.join(self.directory, name) for name in self.splits[split].files]

    def records(self, split):
        """A `tf.data.Dataset` of (encoded image, label) in file order."""
        return tf.data.TFRecordDataset(self.files(split)).map(parse_record)

    def encoded_batches(self, split, batch_size=64):
        """Batches of (encoded images, labels) as numpy arrays, in file order."""
        return self.records(split).batch(batch_size).as_numpy_iterator()

    def write_manifest(self):
        """Writes `manifest.json` into `directory`, flushed to disk before it returns."""
        fields = dataclasses.asdict(self)
        del fields["directory"]
        path = os.path.join(self.directory, MANIFEST)
        with open(path, "w") as file:
            json.dump({"format_version": FORMAT_VERSION, **fields}, file, indent=2)
            file.flush()
            os.fsync(file.fileno())

    @classmethod
    def load(cls, directory):
        """The finished ingest in `directory`; anything else raises `PipelineError`."""
        path = os.path.join(directory, MANIFEST)
        try:
            with open(path) as file:
                fields = json.load(file)
        except (OSError, ValueError):
            raise PipelineError(
                f"{directory} holds no finished ingest ({path} is missing or unreadable); "
                f"ingest a dataset into it first"
            ) from None
        try:
            if fields.pop("format_version") != FORMAT_VERSION:
                raise ValueError("another format version")
            image_size = fields.pop("image_size")
            return cls(
                directory=directory,
                class_names=tuple(fields.pop("class_names")),
                image_size=tuple(image_size) if image_size else None,
                splits={
                    name: Split(tuple(split["files"]), split["num_examples"])
                    for name, split in fields.pop("splits").items()
                },
                skipped=tuple(Skipped(**item) for item in fields.pop("skipped")),
                **fields,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PipelineError(
                f"{path} is not a manifest of this version of pipeline.ingest; "
                "ingest the dataset again into a new directory"
            ) from None
