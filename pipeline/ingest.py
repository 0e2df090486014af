"""Ingest: turn a `--dataset` into sharded TFRecords with train/validation/test splits.

    python -m pipeline.ingest --dataset digits --output-dir data/digits

Every image is decoded once here, so corrupt, truncated and non-image files are
found before training: by default they are skipped, logged and listed in the
manifest; with `--strict` the first one stops the run. The output directory
holds `<split>-NNNNN.tfrecord` shards (features `image/encoded` with the
original bytes, `image/format`, `image/height`, `image/width` and a 0-based
`image/class/label`) and `manifest.json`, written last.

Splits: the source's own where it has them. A missing validation or test split
is carved out of train, stratified by class and the same on every run:
`VALIDATION_FRACTION` and `TEST_FRACTION` of it each, so a source without
splits of its own becomes 80/10/10.

A directory is finished when its manifest is there: the shards are written into
a temporary sibling directory that is renamed into place when complete, and a
re-run on an unchanged source (same fingerprint) reuses what is there.
"""

if __name__ == "__main__":
    # A command, not an import: set the process up before TensorFlow loads.
    from pipeline import environment

    environment.prepare()

import collections
import concurrent.futures
import errno
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from pipeline import artifact
from pipeline import sources
from pipeline import temp_dirs
from pipeline.config import DataConfig
from pipeline.config import PipelineError
from pipeline.config import first_line

logger = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.1
# Fixed, so a split never changes between runs (and not `seed`, which varies
# training only).
SPLIT_SEED = 2012
# ~1000 records per shard: enough files for every worker of a multi-worker run
# to read its own on a large set, few enough to keep small sets in one file.
SHARD_SIZE = 1024
# Images decoded (and, for folders, read) by a thread pool at a time; TensorFlow
# ops release the GIL.
_CHUNK = 256
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG", "png"),
    (b"GIF8", "gif"),
    (b"BM", "bmp"),
)


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


def _stratified_split(labels, fractions, seed):
    """Indices per part: each `fractions` part, then "train" for the rest.

    Examples are grouped by class (shuffled within it) and each part takes evenly
    spaced positions of that order, so it gets every class in proportion (to
    within one example) and exactly round(n * fraction) examples, even for tiny
    classes.
    """
    rng = np.random.default_rng(seed)
    remaining = np.lexsort((rng.permutation(len(labels)), labels))
    parts, left = {}, 1.0
    for name, fraction in fractions.items():
        steps = np.floor(np.arange(len(remaining) + 1) * fraction / left + 0.5)
        chosen = np.diff(steps) > 0
        parts[name] = remaining[chosen]
        remaining, left = remaining[~chosen], left - fraction
    parts["train"] = remaining
    return parts


def _plan(source_splits):
    """Which output split each source example goes to: {source split: array}."""
    if "train" not in source_splits:
        raise PipelineError(
            f"the source has splits {sorted(source_splits)} but no train split"
        )
    ignored = sorted(set(source_splits) - set(artifact.SPLITS))
    if ignored:
        logger.info("ignoring source splits %s", ", ".join(ignored))
    carve = {}
    if "test" not in source_splits:
        carve["test"] = TEST_FRACTION
    if "validation" not in source_splits:
        carve["validation"] = VALIDATION_FRACTION
    plan = {}
    for name in set(source_splits) & set(artifact.SPLITS):
        plan[name] = np.full(len(source_splits[name].labels), name, dtype=object)
    for part, indices in _stratified_split(
        source_splits["train"].labels, carve, SPLIT_SEED
    ).items():
        plan["train"][indices] = part
        if part != "train":
            logger.info("%s: %d examples carved out of train", part, len(indices))
    return plan


class _Checked(NamedTuple):
    index: int
    image_bytes: bytes | None
    image_format: str | None = None
    shape: tuple[int, int, int] | None = None
    problem: str | None = None


def _check(split, index, image_bytes):
    """Reads (if needed) and fully decodes one image: a truncated JPEG fails here."""
    try:
        if image_bytes is None:
            image_bytes = split.read_one(index)
    except OSError as error:
        return _Checked(index, None, problem=f"unreadable: {error.strerror}")
    image_format = next(
        (name for magic, name in _MAGIC if image_bytes.startswith(magic)), None
    )
    if image_format is None:
        return _Checked(index, None, problem="not a JPEG, PNG, BMP or GIF image")
    try:
        image = tf.io.decode_image(image_bytes, expand_animations=False)
    except tf.errors.OpError as error:
        return _Checked(
            index, None, problem=f"corrupt {image_format}: {first_line(error)}"
        )
    return _Checked(index, image_bytes, image_format, tuple(image.shape))


def _checked_records(split, seed):
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
            yield from pool.map(lambda record: _check(split, *record), chunk)


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
        self._writer.write(artifact.serialize_record(
            checked.image_bytes, checked.image_format, label, height, width
        ))
        self.num_examples += 1

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _write(source, fingerprint, directory, strict):
    """Writes every split into `directory` and returns it as an `IngestedDataset`."""
    class_names, source_splits = source.load()
    if len(class_names) < 2:
        raise PipelineError(
            f"{source.spec} has {len(class_names)} class(es); a classifier needs two"
        )
    plan = _plan(source_splits)
    expected = collections.Counter(
        destination for source_split in plan for destination in plan[source_split]
    )
    writers = {split: _ShardWriter(directory, split, expected[split]) for split in artifact.SPLITS}
    skipped, channels, sizes = [], set(), []
    for source_split in sorted(plan):
        split, destination = source_splits[source_split], plan[source_split]
        logger.info(
            "reading %s: %d examples of %s",
            source_split,
            len(split.labels),
            source.spec,
        )
        for done, checked in enumerate(_checked_records(split, SPLIT_SEED), start=1):
            if done % 10000 == 0:
                logger.info(
                    "%s: %d of %d examples done", source_split, done, len(split.labels)
                )
            key = split.keys[checked.index]
            if checked.problem:
                if strict:
                    raise PipelineError(
                        f"{key}: {checked.problem} (`strict` stops at the first bad "
                        "image; without it, bad images are skipped and listed)"
                    )
                logger.warning("skipping %s: %s", key, checked.problem)
                skipped.append(artifact.Skipped(key, checked.problem))
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
    dataset = artifact.IngestedDataset(
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
            split: artifact.Split(tuple(writer.files), writer.num_examples)
            for split, writer in writers.items()
        },
        skipped=tuple(skipped),
    )
    dataset.write_manifest()
    return dataset


def _temp_prefix(output_dir):
    parent, name = os.path.split(os.path.abspath(output_dir))
    return parent, f".{name}.ingest-"


def _finished(output_dir, fingerprint):
    """The ingest in `output_dir` if it is a finished ingest of `fingerprint`."""
    if not os.path.isfile(os.path.join(output_dir, artifact.MANIFEST)):
        return None
    try:
        dataset = artifact.IngestedDataset.load(output_dir)
    except PipelineError:
        logger.warning("%s has an unreadable manifest.json", output_dir)
        return None
    return dataset if dataset.fingerprint == fingerprint else None


def _publish(temp_dir, output_dir, fingerprint):
    """Moves the finished `temp_dir` to `output_dir`, replacing an older ingest."""
    try:
        # Atomic; it also replaces an empty directory, but no other.
        os.rename(temp_dir, output_dir)
        return
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    # The workers of a multi-worker run all ingest: another one may have
    # finished the same data meanwhile, and may be reading it already.
    if _finished(output_dir, fingerprint):
        return
    # The old one goes under a temporary name first, so that if this process
    # dies in between, the next run cleans it up like any other leftover.
    old_dir = temp_dir + "-replaced"
    os.rename(output_dir, old_dir)
    os.rename(temp_dir, output_dir)
    shutil.rmtree(old_dir)


def ingest(data_config: DataConfig, output_dir: str | None = None) -> dict:
    """Ingests `data_config.dataset`, or reuses an earlier ingest; returns it.

    `output_dir` defaults to `data_config.ingest_dir`, then `default_ingest_dir`.
    """
    output_dir = (
        output_dir or data_config.ingest_dir or default_ingest_dir(data_config.dataset)
    )
    source = sources.open_source(data_config)
    settings = [
        source.fingerprint,
        artifact.FORMAT_VERSION,
        VALIDATION_FRACTION,
        TEST_FRACTION,
        SPLIT_SEED,
    ]
    fingerprint = hashlib.sha256(json.dumps(settings).encode()).hexdigest()
    dataset = _finished(output_dir, fingerprint)
    if dataset:
        logger.info("reusing %s: %s is unchanged", output_dir, source.spec)
        if data_config.strict and dataset.skipped:
            first = dataset.skipped[0]
            raise PipelineError(
                f"{first.path}: {first.reason} (skipped by an earlier ingest "
                f"into {output_dir}; `strict` allows no bad images)"
            )
        return dataset
    if os.path.isfile(os.path.join(output_dir, artifact.MANIFEST)):
        logger.info("%s changed since %s was ingested", source.spec, output_dir)
    elif os.path.isdir(output_dir) and os.listdir(output_dir):
        raise PipelineError(
            f"{output_dir} exists but holds no manifest.json, so it is not a finished "
            "ingest; remove it or choose another `ingest_dir`"
        )
    parent, prefix = _temp_prefix(output_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        temp_dirs.remove_abandoned(parent, prefix)
        temp_dir = tempfile.mkdtemp(prefix=f"{prefix}{temp_dirs.owner_tag()}-", dir=parent)
        # mkdtemp makes it private (0700); the published data is for everyone.
        os.chmod(temp_dir, 0o755)
    except OSError as error:
        raise PipelineError(
            f"cannot write to {parent} ({error.strerror}); choose another `ingest_dir`"
        ) from None
    try:
        _write(source, fingerprint, temp_dir, data_config.strict)
        _publish(temp_dir, output_dir, fingerprint)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    logger.info("ingested %s into %s", source.spec, output_dir)
    return artifact.IngestedDataset.load(output_dir)


if __name__ == "__main__":
    from pipeline import cli

    sys.exit(cli.main("ingest"))
