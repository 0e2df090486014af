"""Blessing, TFX's model validation: may the new model replace the served one?

The candidate is compared with every version already exported, each scored
now on the same test split.
"""

import dataclasses
import inspect
import logging
import os

import keras
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from alexnet_keras import AlexNet
from pipeline.errors import PipelineError
from pipeline.errors import first_line
from pipeline.evaluation import metrics
from pipeline.storage import saved_models

logger = logging.getLogger(__name__)

# The settings an AlexNet's config holds; any other key (a `dtype` that Keras
# would deserialize, say) is not from this package.
_CONFIG_KEYS = {"name", "trainable", *inspect.signature(AlexNet).parameters} - {"kwargs"}


def _float32_alexnet(config):
    # Scored as it is served, in float32, whatever policy this run trains in.
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        return AlexNet.from_config(config)
    finally:
        keras.config.set_dtype_policy(policy)


def _exported_model(version_dir, config):
    """The AlexNet `config` describes, with the weights of `version_dir`, read
    from its checkpoint: nothing in the SavedModel is run. `PipelineError`
    unless every weight of that model is there, by name, of its shape."""
    if not set(config) <= _CONFIG_KEYS:
        raise PipelineError(f"{version_dir}'s config is not an AlexNet's")
    weights = saved_models.read_weights(version_dir)
    try:
        # Built first in a throwaway graph, where variables are only ops: a
        # config cannot make this allocate weights the checkpoint does not hold.
        with tf.Graph().as_default():
            specs = {weight.path: (tuple(weight.shape), weight.dtype)
                     for weight in _float32_alexnet(config).weights}
    except Exception as error:  # whatever a foreign config makes Keras raise
        raise PipelineError(f"{version_dir}'s config does not build an AlexNet "
                            f"({first_line(error)})") from None
    for name, (shape, dtype) in specs.items():
        value = weights.get(name)
        if value is None or (value.shape, value.dtype) != (shape, dtype):
            found = "no such weight" if value is None else f"{value.dtype} {value.shape}"
            raise PipelineError(f"{version_dir}'s weights are not its config's: {name} is "
                                f"{found} there and {dtype} {shape} in the config's model")
    model = _float32_alexnet(config)
    for weight in model.weights:
        weight.assign(weights[weight.path])
    return model


def _baseline_accuracy(version_dir, ingested):
    """Test accuracy of an exported version, or None and the reason it cannot be
    scored: whatever the directory holds, this never raises.

    Only an export of this package is scored: its model is rebuilt from its
    `alexnet_keras.json` and its checkpoint, never loaded (which would run
    code a SavedModel holds), and measured as `evaluate` measures a model.
    """
    try:
        info = saved_models.read_export_info(version_dir)
        if info is None:
            raise PipelineError(f"{version_dir} has no {saved_models.EXPORT_INFO_FILE}")
        # Otherwise the accuracies would measure different tasks.
        if info["class_names"] != list(ingested.class_names):
            return None, "its classes differ from the dataset's"
        model = _exported_model(version_dir, info["config"])
    except PipelineError as error:
        return None, f"not an alexnet-keras export: {error}"
    try:
        return metrics.accuracy(model, ingested), None
    except (PipelineError, ValueError, tf.errors.OpError) as error:
        return None, f"it cannot be run on the test images ({first_line(error)})"


# A models.config larger than this is not one (a real one is a few hundred bytes).
_MAX_MODELS_CONFIG_BYTES = 1 << 20


def served_version(export_dir, versions):
    """The version TF Serving serves from `export_dir`: the highest, or the
    highest that the `models.config` beside `export_dir` pins for it with a
    `specific` `model_version_policy`; None if no pinned version is there."""
    path = os.path.join(os.path.dirname(os.path.abspath(export_dir)), "models.config")
    if not os.path.lexists(path):
        return versions[-1]
    try:
        # Only a regular file of a sane size is read: a FIFO would block.
        if not os.path.isfile(path) or os.path.getsize(path) > _MAX_MODELS_CONFIG_BYTES:
            raise OSError(f"not a regular file of at most {_MAX_MODELS_CONFIG_BYTES:,} bytes")
        with open(path, encoding="utf-8") as file:
            server_config = text_format.Parse(
                file.read(), model_server_config_pb2.ModelServerConfig()
            )
    except (OSError, UnicodeDecodeError, text_format.ParseError) as error:
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

    Every version kept in `export_dir` that is an export of this package is
    rebuilt as a Keras model, without running anything the SavedModel holds,
    and scored on the test split of `ingested` now, so all are measured on the
    same data; other versions are reported as unscored. The candidate is blessed when its
    accuracy is at least `min_accuracy`, at least the served version's (see
    `served_version`) minus `tolerance`, and at least the best kept version's
    minus `tolerance`, so that a chain of slightly worse pushes cannot drift
    far below the best. A served version that cannot be scored blocks the push;
    other unscorable versions are only reported. `force_push` pushes anyway.
    """
    candidate = float(candidate_accuracy)
    directories = saved_models.version_dirs(export_dir)
    found = list(directories)
    on_data = f"on the {ingested.source} test split"
    failures = []
    if candidate < min_accuracy:
        failures.append(f"test accuracy {candidate:.4f} is below `min_accuracy` {min_accuracy}")
    scores, problems = {}, {}
    for version in found:
        accuracy, problem = _baseline_accuracy(directories[version], ingested)
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
