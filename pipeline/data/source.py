"""What a source hands to ingest: its splits' labels and image bytes, and a
fingerprint of its content (`pipeline.data.sources` opens one).
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator

import numpy as np


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


def fingerprint(values):
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def file_fingerprint(root, paths):
    """Names, sizes and modification times: reading every byte of a large set
    again only to find it unchanged would cost as much as ingesting it. A
    dangling link counts by its name; ingest skips it."""

    def stat(path):
        try:
            result = os.stat(path)
        except OSError:
            return None, None
        return result.st_size, result.st_mtime_ns

    return fingerprint([[os.path.relpath(path, root), *stat(path)] for path in paths])
