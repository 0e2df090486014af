"""Which split each example of a source goes to.

The source's own splits where it has them. A missing validation or test split
is carved out of train by a stable hash of each example's identity (its path
in the folder, its index in the set): `VALIDATION_FRACTION` and
`TEST_FRACTION` of it each, so a source without splits of its own becomes
about 80/10/10, and adding images never moves the others between splits.
"""

import hashlib
import logging
import os

import numpy as np

from pipeline.data import ingested_dataset
from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.1
# Fixed, so a split never changes between runs (and not `seed`, which varies
# training only).
SPLIT_SEED = 2012


def _unit_hash(example_id):
    """A stable number in [0, 1) for an example's identity."""
    digest = hashlib.sha256(os.fsencode(f"{SPLIT_SEED}/{example_id}")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _hash_split(ids, fractions):
    """Indices per part: each `fractions` part, then "train" for the rest.

    Each example's part depends on its own identity only: the parts take
    consecutive bands of the hash range, so adding or removing examples never
    moves another one, and every class lands in each part in proportion, give
    or take binomial noise: a standard deviation of sqrt(n * f * (1 - f)) per
    class, 4 examples for a 180-example class at 10% (exact counts would need
    a rank within the class, which an added example shifts).
    """
    hashes = np.array([_unit_hash(example_id) for example_id in ids], dtype=np.float64)
    parts, low = {}, 0.0
    for name, fraction in fractions.items():
        parts[name] = np.flatnonzero((hashes >= low) & (hashes < low + fraction))
        low += fraction
    parts["train"] = np.flatnonzero(hashes >= low)
    return parts


def plan(source_splits):
    """Which output split each source example goes to: {source split: array}."""
    if "train" not in source_splits:
        raise PipelineError(
            f"the source has splits {sorted(source_splits)} but no train split"
        )
    ignored = sorted(set(source_splits) - set(ingested_dataset.SPLITS))
    if ignored:
        logger.info("ignoring source splits %s", ", ".join(ignored))
    carve = {}
    if "test" not in source_splits:
        carve["test"] = TEST_FRACTION
    if "validation" not in source_splits:
        carve["validation"] = VALIDATION_FRACTION
    plan = {}
    for name in set(source_splits) & set(ingested_dataset.SPLITS):
        plan[name] = np.full(len(source_splits[name].labels), name, dtype=object)
    for part, indices in _hash_split(source_splits["train"].ids, carve).items():
        plan["train"][indices] = part
        if part != "train":
            logger.info("%s: %d examples carved out of train", part, len(indices))
    return plan
