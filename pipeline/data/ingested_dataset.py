"""The ingested dataset: what ingest writes and every later stage reads.

An ingest directory holds one sub-directory per version of the data,
`v-<fingerprint[:12]>/`, each with `<split>-NNNNN.tfrecord` shards of
`tf.train.Example` records and its own `manifest.json`, and a top-level
`manifest.json` that names the current version: replacing that one file
(atomically) switches every later reader to new data, while a run still reading
the old version keeps its files. `IngestedDataset` is one version as a frozen,
typed object: `pipeline.ingest` returns one, and transform, train, tune and
evaluate take it; nothing else reads `manifest.json`. The record format is
declared here once, beside the one parser of it, as TF Model Garden keeps a
decoder apart from the preprocessing that follows it.
"""

import dataclasses
import json
import os
import re
from typing import NamedTuple

import tensorflow as tf

from pipeline.storage import atomic
from pipeline.errors import PipelineError

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
# Bump when the layout or the records change, so that older ingests are redone.
# 1 kept the shards beside the top-level manifest; 2 keeps them in versions.
FORMAT_VERSION = 2
# Every manifest says who wrote it: ingest replaces only its own ingests.
WRITER = "pipeline.ingest"
_VERSION_NAME = re.compile(r"^v-[0-9a-f]{12}$")


def version_name(fingerprint):
    """The sub-directory of an ingest directory that holds one version."""
    return f"v-{fingerprint[:12]}"


def is_version_name(name):
    return bool(_VERSION_NAME.match(name))


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
        directory: where the shards are: a version directory inside the
            ingest directory.
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

    def _manifest(self, **extra):
        fields = dataclasses.asdict(self)
        del fields["directory"]
        return {"format_version": FORMAT_VERSION, "written_by": WRITER, **fields, **extra}

    def write_manifest(self):
        """Writes `manifest.json` into `directory`, flushed to disk before it returns."""
        _write_json(os.path.join(self.directory, MANIFEST), self._manifest())

    def publish(self, ingest_dir):
        """Makes this version, a sub-directory of `ingest_dir`, the current one:
        the top-level `manifest.json` is written aside, flushed and renamed over
        the old one, so a reader sees the old version or the new, never half."""
        version = os.path.relpath(self.directory, ingest_dir)
        if not is_version_name(version):
            raise ValueError(f"{self.directory} is not a version directory of {ingest_dir}")
        temp_path = os.path.join(ingest_dir, f".ingest-{atomic.owner_tag()}-{MANIFEST}")
        _write_json(temp_path, self._manifest(version=version))
        atomic.rename(temp_path, os.path.join(ingest_dir, MANIFEST))
        atomic.sync(ingest_dir)

    @classmethod
    def load(cls, directory):
        """The finished ingest in `directory`; anything else raises `PipelineError`."""
        path = os.path.join(directory, MANIFEST)
        try:
            with tf.io.gfile.GFile(path) as file:
                fields = json.load(file)
        except (OSError, ValueError, tf.errors.OpError):
            raise PipelineError(
                f"{directory} holds no finished ingest ({path} is missing or unreadable); "
                f"ingest a dataset into it first"
            ) from None
        try:
            if fields.pop("format_version") != FORMAT_VERSION:
                raise ValueError("another format version")
            if fields.pop("written_by") != WRITER:
                raise ValueError("another writer")
            version = fields.pop("version", None)
            if version is not None:
                if not is_version_name(version):
                    raise ValueError("not a version directory")
                directory = os.path.join(directory, version)
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


def _write_json(path, fields):
    atomic.write_synced(path, json.dumps(fields, indent=2))


class Existing(NamedTuple):
    """What an ingest directory holds: an ingest of `source`, made by this or an
    earlier `pipeline.ingest`. `version` names the current version; it is None
    in the format-1 layout and in a version directory itself."""

    source: str
    fingerprint: str
    version: str | None


def existing(directory):
    """The ingest `pipeline.ingest` wrote into `directory`; None if it holds no
    `manifest.json`; `PipelineError` if its manifest is anyone else's."""
    path = os.path.join(directory, MANIFEST)
    # A dangling link named like a manifest is not "no manifest".
    there = os.path.lexists(path) if atomic.is_local(path) else tf.io.gfile.exists(path)
    if not there:
        return None
    try:
        with tf.io.gfile.GFile(path) as file:
            fields = json.load(file)
        format_version = fields["format_version"]
        # Format 1 predates `written_by`; its shape is its signature.
        if format_version == 1 and {"source", "fingerprint", "splits"} <= set(fields):
            return Existing(fields["source"], fields["fingerprint"], None)
        if fields["written_by"] == WRITER and format_version == FORMAT_VERSION:
            return Existing(fields["source"], fields["fingerprint"], fields.get("version"))
    except (OSError, ValueError, KeyError, TypeError, tf.errors.OpError):
        pass
    raise PipelineError(
        f"{directory} holds a {MANIFEST} that this pipeline.ingest did not write; "
        f"choose another ingest directory, or delete {directory} yourself"
    )
