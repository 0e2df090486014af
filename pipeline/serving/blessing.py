"""Blessing, TFX's model validation: may the new model replace the served one?

The candidate is compared with every version already exported, each scored
now on the same test split.
"""

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipeline.errors import PipelineError
from pipeline.errors import first_line
from pipeline.serving import contract
from pipeline.storage import saved_models

BATCH_SIZE = 64

logger = logging.getLogger(__name__)


def _baseline_accuracy(version_dir, ingested):
    """Test accuracy of an exported version, or None and the reason it cannot be
    scored: whatever the directory holds, this never raises."""
    class_names = np.array(
        [name.encode() for name in ingested.class_names], dtype=object
    )
    correct = total = 0
    try:
        loaded, signature = contract.load_serving_signature(version_dir)
        for encoded, labels in ingested.encoded_batches("test", BATCH_SIZE):
            outputs = signature(**{contract.BYTES_INPUT: tf.constant(encoded)})
            class_id = outputs["class_id"].numpy()
            # Same number of classes, and the names the export gives its predictions
            # are the dataset's: otherwise the accuracies measure different tasks.
            if outputs["probabilities"].shape[1] != len(class_names) or np.any(
                outputs["class_name"].numpy() != class_names[np.maximum(class_id, 0)]
            ):
                return None, "its classes differ from the dataset's"
            correct += int(np.sum(class_id == labels))
            total += len(labels)
    except (PipelineError, TypeError, ValueError, KeyError, tf.errors.OpError) as error:
        return None, f"it cannot be run on the test images ({first_line(error)})"
    return correct / total, None


def served_version(export_dir, versions):
    """The version TF Serving serves from `export_dir`: the highest, or the
    highest that the `models.config` beside `export_dir` pins for it with a
    `specific` `model_version_policy`; None if no pinned version is there."""
    path = os.path.join(os.path.dirname(os.path.abspath(export_dir)), "models.config")
    if not os.path.exists(path):
        return versions[-1]
    try:
        with open(path) as file:
            server_config = text_format.Parse(
                file.read(), model_server_config_pb2.ModelServerConfig()
            )
    except (OSError, text_format.ParseError) as error:
        logger.warning("Blessing: %s is unreadable (%s); the newest version is taken as "
                       "the served one", path, first_line(error))
        return versions[-1]
    name = os.path.basename(os.path.abspath(export_dir))
    for model in server_config.model_config_list.config:
        if os.path.basename(model.base_path.rstrip("/")) != name:
            continue
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "specific":
            pinned = [version for version in policy.specific.versions if version in versions]
            return max(pinned, default=None)
    return versions[-1]


@dataclasses.dataclass(frozen=True)
class Blessing:
    """Whether a model may replace the served one, and why (a sentence).

    `baseline_*` is the served version, `best_*` the best-scoring version kept;
    `unscored` names each kept version that could not be scored, and why.
    """

    blessed: bool
    reason: str
    candidate_accuracy: float | None = None
    baseline_accuracy: float | None = None
    baseline_version: int | None = None
    best_accuracy: float | None = None
    best_version: int | None = None
    unscored: tuple = ()

    @classmethod
    def not_chief(cls):
        return cls(False, "this worker is not the chief, which blesses and exports")


def bless(candidate_accuracy, export_dir, ingested, tolerance, force_push, min_accuracy=0.0):
    """Decides whether a model with `candidate_accuracy` may be pushed to `export_dir`.

    Every version kept in `export_dir` is loaded with `tf.saved_model.load` and
    scored through its `serving_default` on the test split of `ingested` now,
    so all are measured on the same data. The candidate is blessed when its
    accuracy is at least `min_accuracy`, at least the served version's (see
    `served_version`) minus `tolerance`, and at least the best kept version's
    minus `tolerance`, so that a chain of slightly worse pushes cannot drift
    far below the best. A served version that cannot be scored blocks the push;
    other unscorable versions are only reported. `force_push` pushes anyway.
    """
    candidate = float(candidate_accuracy)
    found = saved_models.versions(export_dir)
    on_data = f"on the {ingested.source} test split"
    failures = []
    if candidate < min_accuracy:
        failures.append(f"test accuracy {candidate:.4f} is below `min_accuracy` {min_accuracy}")
    scores, problems = {}, {}
    for version in found:
        accuracy, problem = _baseline_accuracy(os.path.join(export_dir, str(version)), ingested)
        if problem:
            problems[version] = problem
            logger.warning("Blessing: version %d in %s cannot be scored: %s",
                           version, export_dir, problem)
        else:
            scores[version] = accuracy
    served = served_version(export_dir, found) if found else None
    baseline = scores.get(served)
    best = max(scores, key=scores.get) if scores else None
    if found and served is None:
        failures.append(f"no version that {export_dir}'s models.config pins is there")
    elif served in problems:
        failures.append(f"the served version {served} cannot be compared: {problems[served]}")
    elif baseline is not None and candidate < baseline - tolerance:
        failures.append(f"test accuracy {candidate:.4f} is below version {served}'s "
                        f"{baseline:.4f} minus the tolerance {tolerance}")
    if best not in (None, served) and candidate < scores[best] - tolerance:
        failures.append(f"test accuracy {candidate:.4f} is below the best kept version "
                        f"{best}'s {scores[best]:.4f} minus the tolerance {tolerance}")
    if baseline is not None:
        compared = f"test accuracy {candidate:.4f} vs version {served}'s {baseline:.4f}"
    else:
        compared = f"test accuracy {candidate:.4f}"
    if not found and not failures:
        reason = f"first model: {export_dir} has no version yet"
        if force_push:
            reason += " (`force_push` was not needed)"
    elif force_push:
        reason = f"forced with `force_push` ({'; '.join(failures) or compared} {on_data})"
    elif failures:
        reason = (f"{'; '.join(failures)} {on_data}; use another `export_dir`, or "
                  "`force_push` exports it anyway")
    else:
        reason = (f"test accuracy {candidate:.4f} is at least version {served}'s "
                  f"{baseline:.4f}" + (f" and the best kept version {best}'s "
                                       f"{scores[best]:.4f}" if best != served else "")
                  + f" minus the tolerance {tolerance} {on_data}")
    logger.info("Blessing: %s", reason)
    return Blessing(force_push or not failures, reason, candidate, baseline, served,
                    scores.get(best), best,
                    tuple(f"version {version}: {problem}" for version, problem in problems.items()))
