"""Ingest: turn a `--dataset` into sharded TFRecords with train/validation/test splits.

    python -m pipeline.ingest --dataset digits --output-dir data/digits

Every image is decoded once here, so corrupt, truncated, oversized and
non-image files are found before training: by default they are skipped, logged
and listed in the manifest; with `--strict` the first one stops the run. Each
version of the data is a sub-directory `v-<fingerprint[:12]>/` of the output
directory holding `<split>-NNNNN.tfrecord` shards (features `image/encoded`
with the original bytes, `image/format`, `image/height`, `image/width` and a
0-based `image/class/label`) and its `manifest.json`; the output directory's
own `manifest.json` names the current version (see `pipeline.data.ingested_dataset`).

Splits: the source's own where it has them; a missing validation or test split
is carved out of train by a stable hash of each example's identity
(`pipeline.data.splits`), so adding images never moves the others between
splits.

Ingest never removes what it did not write. A new output directory appears
complete in one rename; a re-run on an unchanged source (same fingerprint)
reuses it; a changed source gets a new version beside the old one, which a run
still reading it keeps. A directory holding anything else (another source's
ingest, another program's manifest.json, other files) is refused.
"""

import collections
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import re
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from pipeline.config import DataConfig
from pipeline.data import image_formats
from pipeline.data import ingested_dataset
from pipeline.data import sources
from pipeline.data import splits
from pipeline.errors import PipelineError
from pipeline.errors import first_line
from pipeline.storage import atomic

logger = logging.getLogger(__name__)

# ~1000 records per shard: enough files for every worker of a multi-worker run
# to read its own on a large set, few enough to keep small sets in one file.
SHARD_SIZE = 1024
# Images decoded (and, for folders, read) by a thread pool at a time; TensorFlow
# ops release the GIL.
_CHUNK = 256


def _slug(text):
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-.") or "dataset"


def default_ingest_dir(spec):
    """`data/<slug>` under the working directory, e.g. data/tfds-cifar10.

    Folder and glob specs name a place on disk, so their slug carries a short hash
    of its absolute path: two folders called `train` do not share a directory.
    """
    kind, argument = sources.parse_spec(spec)
    if kind in ("digits", "tfds"):
        return os.path.join("data", _slug(spec.replace(":", "-")))
    location = os.path.abspath(os.path.expanduser(argument))
    name = os.path.basename(location if kind == "folder" else os.path.dirname(location))
    digest = hashlib.sha256(location.encode()).hexdigest()[:8]
    return os.path.join("data", f"{kind}-{_slug(name)}-{digest}")


class _Checked(NamedTuple):
    index: int
    image_bytes: bytes | None
    image_format: str | None = None
    shape: tuple[int, int, int] | None = None
    problem: str | None = None


def _size_problem(height, width, max_pixels):
    """Why an image of this size is refused, or None."""
    if height * width > max_pixels:
        return (
            f"too large: {width}x{height} pixels, over max_pixels={max_pixels}"
        )
    limit = image_formats.MAX_ASPECT_RATIO
    if max(height, width) > limit * max(1, min(height, width)):
        return f"extreme aspect ratio: {width}x{height} pixels, over {limit}:1"
    return None


def _check(split, index, image_bytes, max_pixels):
    """Reads (if needed) and fully decodes one image: a truncated JPEG fails here.
    Its size is checked from its header first, so no huge image is decoded."""
    try:
        if image_bytes is None:
            image_bytes = split.read_one(index)
    except OSError as error:
        return _Checked(index, None, problem=f"unreadable: {error.strerror}")
    image_format = image_formats.detect(image_bytes)
    if image_format is None:
        return _Checked(index, None, problem=f"not a {image_formats.FORMATS_TEXT} image")
    try:
        height, width = image_formats.header_size(image_bytes, image_format)
    except ValueError as error:
        return _Checked(index, None, problem=f"corrupt {image_format}: {error}")
    problem = _size_problem(height, width, max_pixels)
    if problem:
        return _Checked(index, None, problem=problem)
    try:
        image = tf.io.decode_image(image_bytes, expand_animations=False)
    except tf.errors.OpError as error:
        return _Checked(
            index, None, problem=f"corrupt {image_format}: {first_line(error)}"
        )
    return _Checked(index, image_bytes, image_format, tuple(image.shape))


def _checked_records(split, seed, max_pixels):
    """Every example of `split`, checked. Seekable sources are read in a shuffled
    order so no shard is sorted by class (a folder is); streamed ones (TFDS,
    TFRecord) keep their stored order, shuffled when they were made."""
    if split.read_one is not None:
        order = np.random.default_rng(seed).permutation(len(split.labels))
        records = ((int(index), None) for index in order)
    else:
        records = enumerate(split.read_all())
    with concurrent.futures.ThreadPoolExecutor() as pool:
        while chunk := list(itertools.islice(records, _CHUNK)):
            yield from pool.map(lambda record: _check(split, *record, max_pixels), chunk)


class _ShardWriter:
    """Writes one output split as `<split>-NNNNN.tfrecord` shards of at most
    SHARD_SIZE records and of equal size, give or take one: under multi-worker
    training each worker reads whole files, and a short last shard would let
    one worker see its examples far more often than the others."""

    def __init__(self, directory, split, expected):
        self.directory, self.split = directory, split
        self.files, self.num_examples, self._writer = [], 0, None
        shards = max(1, math.ceil(expected / SHARD_SIZE))
        self.shard_size = max(1, math.ceil(expected / shards))

    def write(self, checked, label):
        if self.num_examples % self.shard_size == 0:
            self.close()
            self.files.append(f"{self.split}-{len(self.files):05d}.tfrecord")
            self._writer = tf.io.TFRecordWriter(
                os.path.join(self.directory, self.files[-1])
            )
        height, width, _ = checked.shape
        self._writer.write(ingested_dataset.serialize_record(
            checked.image_bytes, checked.image_format, label, height, width
        ))
        self.num_examples += 1

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _write(source, fingerprint, directory, data_config):
    """Writes every split into `directory` and returns it as an `IngestedDataset`."""
    tf.io.gfile.makedirs(directory)
    class_names, source_splits = source.load()
    if len(class_names) < 2:
        raise PipelineError(
            f"{source.spec} has {len(class_names)} class(es); a classifier needs two"
        )
    plan = splits.plan(source_splits)
    expected = collections.Counter(
        destination for source_split in plan for destination in plan[source_split]
    )
    writers = {split: _ShardWriter(directory, split, expected[split])
               for split in ingested_dataset.SPLITS}
    skipped, channels, sizes = [], set(), []
    for source_split in sorted(plan):
        split, destination = source_splits[source_split], plan[source_split]
        logger.info(
            "reading %s: %d examples of %s",
            source_split,
            len(split.labels),
            source.spec,
        )
        # Closed here, on any error too: the checking pool then shuts down on
        # this thread, not whenever (and on whichever thread) the garbage
        # collector finalises the generator.
        with contextlib.closing(
            _checked_records(split, splits.SPLIT_SEED, data_config.max_pixels)
        ) as records:
            for done, checked in enumerate(records, start=1):
                if done % 10000 == 0:
                    logger.info(
                        "%s: %d of %d examples done", source_split, done, len(split.labels)
                    )
                key = split.keys[checked.index]
                if checked.problem:
                    if data_config.strict:
                        raise PipelineError(
                            f"{key}: {checked.problem} (`strict` stops at the first bad "
                            "image; without it, bad images are skipped and listed)"
                        )
                    logger.warning("skipping %s: %s", key, checked.problem)
                    skipped.append(ingested_dataset.Skipped(key, checked.problem))
                    continue
                writers[destination[checked.index]].write(
                    checked, split.labels[checked.index]
                )
                channels.add(checked.shape[2])
                sizes.append(checked.shape[:2])
    for writer in writers.values():
        writer.close()
        if not writer.num_examples:
            logger.warning(
                "the %s split is empty: the source is too small", writer.split
            )
    dataset = ingested_dataset.IngestedDataset(
        directory=directory,
        source=source.spec,
        fingerprint=fingerprint,
        class_names=tuple(class_names),
        # The dataset's own: grey only if every image is (2 is grey + alpha).
        channels=source.channels or (3 if max(channels, default=1) >= 3 else 1),
        flip=source.flip,
        image_size=(
            tuple(int(side) for side in np.median(sizes, axis=0)) if sizes else None
        ),
        splits={
            split: ingested_dataset.Split(tuple(writer.files), writer.num_examples)
            for split, writer in writers.items()
        },
        skipped=tuple(skipped),
    )
    dataset.write_manifest()
    return dataset


def _temp_prefix(output_dir):
    parent, name = os.path.split(atomic.absolute(output_dir))
    return parent, f".{name}.ingest-"


def _make_temp_dir(parent, prefix):
    try:
        return atomic.make(parent, prefix)
    except (OSError, tf.errors.OpError) as error:
        reason = getattr(error, "strerror", None) or getattr(error, "message", error)
        raise PipelineError(
            f"cannot write to {parent} ({reason}); choose another ingest directory"
        ) from None


def _check_owner(output_dir, spec):
    """What `output_dir` holds, if ingest may reuse or replace it: nothing, or an
    ingest of the same source; anything else is refused."""
    existing = ingested_dataset.existing(output_dir)
    fix = f"choose another ingest directory, or delete {output_dir} yourself"
    if existing is None:
        if tf.io.gfile.isdir(output_dir) and tf.io.gfile.listdir(output_dir):
            raise PipelineError(
                f"{output_dir} exists but holds no manifest.json, so it is not an "
                f"ingest; {fix}"
            )
    elif sources.canonical_spec(existing.source) != spec:
        raise PipelineError(
            f"{output_dir} holds an ingest of {existing.source}, not {spec}; {fix}"
        )
    return existing


def _remove_old_versions(output_dir, keep):
    """Removes the versions before the replaced one: a run started on that one
    may still be reading it, older ones are no one's."""
    for name in tf.io.gfile.listdir(output_dir):
        name = name.rstrip("/")
        if ingested_dataset.is_version_name(name) and name not in keep:
            logger.info("removing %s, an older version", os.path.join(output_dir, name))
            atomic.remove(os.path.join(output_dir, name))


def _add_version(source, fingerprint, output_dir, data_config, previous):
    """Writes a new version into the ingest `output_dir` and makes it current."""
    version = ingested_dataset.version_name(fingerprint)
    version_dir = os.path.join(output_dir, version)
    if not tf.io.gfile.isdir(version_dir):
        temp_dir = _make_temp_dir(output_dir, ".ingest-")
        try:
            _write(source, fingerprint, os.path.join(temp_dir, version), data_config)
            # Another worker may have written the same version meanwhile.
            atomic.publish(os.path.join(temp_dir, version), version_dir,
                           last=[ingested_dataset.MANIFEST])
        finally:
            atomic.remove(temp_dir)
    dataset = ingested_dataset.IngestedDataset.load(version_dir)
    dataset.publish(output_dir)
    _remove_old_versions(output_dir, keep={version, previous})
    return dataset


def _ingest_new(source, fingerprint, output_dir, data_config):
    """Ingests into a new `output_dir`, which appears complete in one rename."""
    parent, prefix = _temp_prefix(output_dir)
    temp_dir = _make_temp_dir(parent, prefix)
    version = ingested_dataset.version_name(fingerprint)
    try:
        dataset = _write(source, fingerprint, os.path.join(temp_dir, version), data_config)
        dataset.publish(temp_dir)
        if atomic.publish(temp_dir, output_dir, last=[ingested_dataset.MANIFEST]):
            return ingested_dataset.IngestedDataset.load(os.path.join(output_dir, version))
        # The workers of a multi-worker run all ingest: another one got there
        # first, with this data or (rarely) a later version of it.
        existing = _check_owner(output_dir, source.spec)
        if existing.fingerprint == fingerprint:
            return ingested_dataset.IngestedDataset.load(output_dir)
        atomic.publish(os.path.join(temp_dir, version), os.path.join(output_dir, version),
                       last=[ingested_dataset.MANIFEST])
        return _add_version(source, fingerprint, output_dir, data_config, existing.version)
    finally:
        atomic.remove(temp_dir)


def ingest(data_config: DataConfig,
           output_dir: str | None = None) -> ingested_dataset.IngestedDataset:
    """Ingests `data_config.dataset`, or reuses an earlier ingest; returns it.

    `output_dir` defaults to `data_config.ingest_dir`, then `default_ingest_dir`.
    It may hold nothing or an ingest of the same source, which a changed source
    replaces by a new version beside it; anything else raises `PipelineError`
    and is left as it is.
    """
    output_dir = (
        output_dir or data_config.ingest_dir or default_ingest_dir(data_config.dataset)
    )
    source = sources.open_source(data_config)
    settings = [
        source.fingerprint,
        ingested_dataset.FORMAT_VERSION,
        splits.VALIDATION_FRACTION,
        splits.TEST_FRACTION,
        splits.SPLIT_SEED,
        data_config.max_pixels,
        image_formats.MAX_ASPECT_RATIO,
    ]
    fingerprint = hashlib.sha256(json.dumps(settings).encode()).hexdigest()
    existing = _check_owner(output_dir, source.spec)
    try:
        return _ingested(source, fingerprint, output_dir, data_config, existing)
    except (OSError, tf.errors.ResourceExhaustedError, tf.errors.OutOfRangeError) as error:
        # A full disk or a quota (TensorFlow's writers say RESOURCE_EXHAUSTED,
        # or OUT_OF_RANGE for a file-size limit): what was written aside is
        # gone, and an earlier ingest in `output_dir` is as it was.
        reason = getattr(error, "strerror", None) or first_line(error)
        raise PipelineError(
            f"cannot write the ingest of {source.spec} into {output_dir} ({reason}); free "
            "space there and run the same command again (nothing was published)"
        ) from None


def _ingested(source, fingerprint, output_dir, data_config, existing):
    """`ingest`'s work once the directory is known to be free or this source's."""
    if existing is None:
        dataset = _ingest_new(source, fingerprint, output_dir, data_config)
    elif existing.fingerprint == fingerprint:
        logger.info("reusing %s: %s is unchanged", output_dir, source.spec)
        dataset = ingested_dataset.IngestedDataset.load(output_dir)
        if data_config.strict and dataset.skipped:
            first = dataset.skipped[0]
            raise PipelineError(
                f"{first.path}: {first.reason} (skipped by an earlier ingest "
                f"into {output_dir}; `strict` allows no bad images)"
            )
        return dataset
    elif existing.version is None and ingested_dataset.is_version_name(
            os.path.basename(output_dir)):
        parent = os.path.dirname(output_dir)
        raise PipelineError(
            f"{output_dir} is one version of the ingest in {parent}, made from other "
            f"data; use {parent} as the ingest directory"
        )
    else:
        logger.info("%s changed since %s was ingested", source.spec, output_dir)
        dataset = _add_version(source, fingerprint, output_dir, data_config, existing.version)
    logger.info("ingested %s into %s", source.spec, dataset.directory)
    return dataset
