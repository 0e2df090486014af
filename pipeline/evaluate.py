"""Evaluate: test-split metrics and pictures, and blessing against the served model.

    python -m pipeline.evaluate --saved-model saved_models/alexnet --dataset digits

evaluates any export on any dataset through the export's own `serving_default`
signature (encoded images in, so the export's in-graph preprocessing is what is
measured), after ingesting the dataset (an earlier ingest is reused). It writes
`evaluation.json` and the pictures to `--output-dir`.

`python -m pipeline.run` calls `evaluate` on the trained Keras model and then
`bless`, TFX's model validation: the new model is pushed only if its test
accuracy is at least that of the newest version already exported, measured now
on the same test split, minus a tolerance.
"""

if __name__ == "__main__":
    # A command, not an import: set the process up before TensorFlow loads.
    from pipeline import environment

    environment.prepare()

import dataclasses
import logging
import os
import sys

import keras
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from sklearn import metrics as sklearn_metrics
from tensorflow_serving.config import model_server_config_pb2

from pipeline import export
from pipeline import ingest
from pipeline import plots
from pipeline import preprocess_ops
from pipeline import transform
from pipeline.config import PipelineError
from pipeline.config import first_line

BATCH_SIZE = 64
MISCLASSIFIED_SHOWN = 8

logger = logging.getLogger(__name__)


class _Misclassified:
    """Keeps the first few misclassified images for a picture."""

    def __init__(self):
        self.images, self.true, self.predicted = [], [], []

    def add(self, images, labels, predictions):
        for index in np.flatnonzero(labels != predictions):
            if len(self.images) == MISCLASSIFIED_SHOWN:
                return
            self.images.append(np.asarray(images[index]))
            self.true.append(int(labels[index]))
            self.predicted.append(int(predictions[index]))


def _predict_keras(model, ingested, split, misclassified):
    @tf.function(reduce_retracing=True)
    def probabilities_of(images):
        return tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))

    dataset = transform.make_dataset(
        ingested, split, model.image_spec, BATCH_SIZE, training=False
    )
    all_probabilities, all_labels = [], []
    for images, labels in dataset:
        probabilities = probabilities_of(images).numpy()
        labels = labels.numpy()
        misclassified.add(images.numpy(), labels, probabilities.argmax(axis=1))
        all_probabilities.append(probabilities)
        all_labels.append(labels)
    return np.concatenate(all_probabilities), np.concatenate(all_labels)


def _predict_encoded(predict_fn, ingested, split, misclassified):
    all_probabilities, all_labels = [], []
    for encoded, labels in ingested.encoded_batches(split, BATCH_SIZE):
        probabilities = np.asarray(predict_fn(tf.constant(encoded)))
        predictions = probabilities.argmax(axis=1)
        needed = MISCLASSIFIED_SHOWN - len(misclassified.images)
        # Only the images shown are decoded, for display, at the dataset's channels.
        shown = {
            i: preprocess_ops.decode_image(encoded[i], ingested.channels).numpy()
            for i in np.flatnonzero(labels != predictions)[:needed]
        }
        misclassified.add(
            [shown.get(i) for i in range(len(labels))], labels, predictions
        )
        all_probabilities.append(probabilities)
        all_labels.append(labels)
    return np.concatenate(all_probabilities), np.concatenate(all_labels)


def _metrics(split, labels, probabilities, class_names):
    classes = list(range(len(class_names)))
    if probabilities.shape[1] != len(class_names):
        raise PipelineError(
            f"the model gives {probabilities.shape[1]} class probabilities but the "
            f"dataset has {len(class_names)} classes; evaluate it on the dataset it "
            "was trained for"
        )
    predictions = probabilities.argmax(axis=1)
    precision, recall, _, support = sklearn_metrics.precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    result = {
        f"{split}_accuracy": float(sklearn_metrics.accuracy_score(labels, predictions)),
    }
    if len(classes) > 5:
        result[f"{split}_top5_accuracy"] = float(
            sklearn_metrics.top_k_accuracy_score(
                labels, probabilities, k=5, labels=classes
            )
        )
    result["num_examples"] = int(len(labels))
    result["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "support": int(s)}
        for name, p, r, s in zip(class_names, precision, recall, support)
    }
    result["confusion_matrix"] = sklearn_metrics.confusion_matrix(
        labels, predictions, labels=classes
    ).tolist()
    return result


def _table(split, metrics):
    line = f"{split} accuracy {metrics[f'{split}_accuracy']:.4f}"
    if f"{split}_top5_accuracy" in metrics:
        line += f", top-5 {metrics[f'{split}_top5_accuracy']:.4f}"
    lines = [
        f"{line} on {metrics['num_examples']} examples",
        f"{'class':<20} {'precision':>9} {'recall':>7} {'support':>8}",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"{name[:20]:<20} {row['precision']:>9.3f} {row['recall']:>7.3f} "
            f"{row['support']:>8d}"
        )
    return "\n".join(lines)


def evaluate(model, ingested, run_dir, split="test"):
    """Metrics of `model` on an ingested split, with pictures written to `run_dir`.

    Args:
        model: an AlexNet (its images are preprocessed for its own
            `image_spec`, as for evaluation), or a
            `predict_fn` taking a string tensor [batch] of encoded images and
            returning class probabilities [batch, classes] (an export's
            `serving_default`).
        ingested: the `IngestedDataset` to evaluate on.
        run_dir: where `confusion_matrix.png`, `misclassified.png` and, for a
            Keras model, `conv1_kernels.png` go.
        split: "train", "validation" or "test"; it prefixes the accuracy keys.

    Returns:
        `{split}_accuracy`, `{split}_top5_accuracy` (more than 5 classes only),
        `num_examples`, `per_class` ({name: {precision, recall, support}}) and
        `confusion_matrix` (rows are true classes, columns predicted ones).
    """
    if not ingested.num_examples(split):
        raise PipelineError(
            f"{ingested.directory} has no {split} examples; use another `split`"
        )
    class_names = list(ingested.class_names)
    misclassified = _Misclassified()
    is_keras = isinstance(model, keras.Model)
    if is_keras:
        probabilities, labels = _predict_keras(
            model, ingested, split, misclassified
        )
    else:
        probabilities, labels = _predict_encoded(
            model, ingested, split, misclassified
        )
    metrics = _metrics(split, labels, probabilities, class_names)

    tf.io.gfile.makedirs(run_dir)
    plots.confusion_matrix(
        metrics["confusion_matrix"],
        class_names,
        os.path.join(run_dir, "confusion_matrix.png"),
    )
    plots.misclassified(
        misclassified.images,
        [class_names[label] for label in misclassified.true],
        [class_names[label] for label in misclassified.predicted],
        os.path.join(run_dir, "misclassified.png"),
    )
    if is_keras and any(layer.name == "conv1" for layer in model.layers):
        plots.conv1_kernels(
            keras.ops.convert_to_numpy(model.get_layer("conv1").kernel),
            os.path.join(run_dir, "conv1_kernels.png"),
        )
    logger.info("%s", _table(split, metrics))
    return metrics


def _baseline_accuracy(version_dir, ingested):
    """Test accuracy of an exported version, or None and the reason it cannot be
    scored: whatever the directory holds, this never raises."""
    class_names = np.array(
        [name.encode() for name in ingested.class_names], dtype=object
    )
    correct = total = 0
    try:
        loaded, signature = export.load_serving_signature(version_dir)
        for encoded, labels in ingested.encoded_batches("test", BATCH_SIZE):
            outputs = signature(**{export.BYTES_INPUT: tf.constant(encoded)})
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
    found = export.versions(export_dir)
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


def evaluate_export(saved_model, data_config, split, output_dir):
    """Metrics of an export on a split of `data_config`'s dataset (ingested first,
    or an earlier ingest reused), measured through its `serving_default`, with
    the pictures written to `output_dir`."""
    version_dir = export.resolve_saved_model(saved_model)
    ingest_dir = data_config.ingest_dir or ingest.default_ingest_dir(data_config.dataset)
    ingested = ingest.ingest(data_config, ingest_dir)
    loaded, signature = export.load_serving_signature(version_dir)
    num_outputs = signature.structured_outputs["probabilities"].shape[-1]
    if num_outputs != ingested.num_classes:
        raise PipelineError(
            f"{version_dir} has {num_outputs} classes but {data_config.dataset} has "
            f"{ingested.num_classes}; evaluate it on the dataset it was trained for"
        )

    def predict_fn(image_bytes):
        return signature(**{export.BYTES_INPUT: image_bytes})["probabilities"]

    logger.info("Evaluating %s on the %s split of %s", version_dir, split, data_config.dataset)
    metrics = evaluate(predict_fn, ingested, output_dir, split)
    metrics.update(saved_model=version_dir, dataset=data_config.dataset, split=split)
    return metrics


if __name__ == "__main__":
    from pipeline import cli

    sys.exit(cli.main("evaluate"))
