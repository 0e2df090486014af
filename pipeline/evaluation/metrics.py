"""The evaluator: a split's accuracy, top-5, per-class precision and recall,
confusion matrix, and the pictures of them; with `ten_crop`, also the
accuracy and top-5 of the paper's ten-crop test (`preprocess_ops.ten_crops`).

`evaluate` measures a trained Keras model (`python -m pipeline.run`) and
`accuracy` only its accuracy (blessing scores the kept versions with it);
`evaluate_encoded` measures an export through its `serving_default`, encoded
images in, so the export's own preprocessing is measured too (`python -m
pipeline.evaluate`).
"""

import logging
import os

import keras
import numpy as np
import tensorflow as tf
from sklearn import metrics as sklearn_metrics

from pipeline import plots
from pipeline.data import input_pipeline
from pipeline.data import preprocess_ops
from pipeline.errors import PipelineError

BATCH_SIZE = 64
# metrics.json keeps the whole confusion matrix up to ImageNet's 1000 classes
# (about 3 MB of JSON); beyond, only its nonzero cells, at most one per image.
MAX_DENSE_CLASSES = 1000
# The per-class table logged: every class up to this many, else the classes
# of lowest recall (all are in metrics.json).
MAX_CLASSES_LOGGED = 50
LOWEST_RECALLS_LOGGED = 10
# Images per ten-crop batch: as many patches as a central-crop batch has images.
TEN_CROP_BATCH_SIZE = BATCH_SIZE // preprocess_ops.TEN_CROPS
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


def _predict_keras(model, ingested, split, misclassified, ten_crop=False):
    """(probabilities [images, classes], labels) of the model on a split: each
    image's central crop, or with `ten_crop` its ten patches' average."""
    @tf.function(reduce_retracing=True)
    def probabilities_of(images):
        return tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))

    @tf.function(reduce_retracing=True)
    def ten_crop_probabilities_of(patches):
        return preprocess_ops.ten_crop_average(probabilities_of, patches, model.image_spec)

    dataset = input_pipeline.make_dataset(
        ingested, split, model.image_spec, TEN_CROP_BATCH_SIZE if ten_crop else BATCH_SIZE,
        training=False, ten_crop=ten_crop,
    )
    predict = ten_crop_probabilities_of if ten_crop else probabilities_of
    all_probabilities, all_labels = [], []
    for images, labels in dataset:
        probabilities = predict(images).numpy()
        labels = labels.numpy()
        if not ten_crop:
            misclassified.add(images.numpy(), labels, probabilities.argmax(axis=1))
        all_probabilities.append(probabilities)
        all_labels.append(labels)
    return np.concatenate(all_probabilities), np.concatenate(all_labels)


def _predict_encoded(predict_fn, ingested, split, misclassified, batch_size=BATCH_SIZE):
    all_probabilities, all_labels = [], []
    for encoded, labels in ingested.encoded_batches(split, batch_size):
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


def _accuracies(prefix, labels, probabilities, classes):
    """`{prefix}_accuracy`, and `{prefix}_top5_accuracy` with more than 5 classes."""
    result = {f"{prefix}_accuracy": float(
        sklearn_metrics.accuracy_score(labels, probabilities.argmax(axis=1)))}
    if len(classes) > 5:
        result[f"{prefix}_top5_accuracy"] = float(
            sklearn_metrics.top_k_accuracy_score(labels, probabilities, k=5, labels=classes)
        )
    return result


def _metrics(split, labels, probabilities, class_names, ten_crop=None):
    classes = list(range(len(class_names)))
    if probabilities.shape[1] != len(class_names):
        raise PipelineError(
            f"the model gives {probabilities.shape[1]} class probabilities but the "
            f"dataset has {len(class_names)} classes; evaluate it on the dataset it "
            "was trained for"
        )
    not_finite = int(np.sum(~np.isfinite(probabilities).all(axis=1)))
    if not_finite:
        raise PipelineError(
            f"the model's class probabilities are NaN or infinite on {not_finite} of the "
            f"{len(labels)} {split} images: its weights are not finite (a diverged "
            "training); train it again with a lower `learning_rate`"
        )
    predictions = probabilities.argmax(axis=1)
    precision, recall, _, support = sklearn_metrics.precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    result = _accuracies(split, labels, probabilities, classes)
    if ten_crop is not None:
        ten_crop_labels, ten_crop_probabilities = ten_crop
        result.update(_accuracies(f"{split}_ten_crop", ten_crop_labels,
                                  ten_crop_probabilities, classes))
    result["num_examples"] = int(len(labels))
    result["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "support": int(s)}
        for name, p, r, s in zip(class_names, precision, recall, support)
    }
    if len(classes) <= MAX_DENSE_CLASSES:
        result["confusion_matrix"] = sklearn_metrics.confusion_matrix(
            labels, predictions, labels=classes
        ).tolist()
    else:
        result["confusion_matrix_cells"] = _cells(labels, predictions).tolist()
    return result


def _cells(labels, predictions):
    """The confusion matrix's nonzero cells, [[true, predicted, count], ...]."""
    pairs, counts = np.unique(np.stack([labels, predictions], axis=1), axis=0,
                              return_counts=True)
    return np.concatenate([pairs, counts[:, np.newaxis]], axis=1).astype(np.int64)


def _drawn_matrix(labels, predictions, class_names):
    """(matrix, names, title) of the confusion matrix picture: every class up to
    `plots.MAX_CLASSES_DRAWN`, else the classes of the most frequent confusions
    (both the true and the predicted class of each), in class order."""
    cells = _cells(labels, predictions)
    count = len(class_names)
    if count <= plots.MAX_CLASSES_DRAWN:
        shown = np.arange(count)
        title = "Confusion matrix"
    else:
        # Both classes of the most frequent confusions, most frequent first.
        wrong = cells[cells[:, 0] != cells[:, 1]]
        chosen = {}
        for true, predicted, _ in wrong[np.argsort(-wrong[:, 2], kind="stable")]:
            for index in (true, predicted):
                if len(chosen) < plots.MAX_CLASSES_DRAWN:
                    chosen[int(index)] = None
            if len(chosen) == plots.MAX_CLASSES_DRAWN:
                break
        shown = np.array(sorted(chosen), np.int64)
        title = (f"Confusion matrix of the {plots.MAX_CLASSES_DRAWN} classes most often "
                 f"confused, of {count}")
    position = np.full(count, -1)
    position[shown] = np.arange(len(shown))
    matrix = np.zeros((len(shown), len(shown)), np.int64)
    kept = (position[cells[:, 0]] >= 0) & (position[cells[:, 1]] >= 0)
    matrix[position[cells[kept, 0]], position[cells[kept, 1]]] = cells[kept, 2]
    return matrix, [class_names[index] for index in shown], title


def _table(split, metrics):
    line = f"{split} accuracy {metrics[f'{split}_accuracy']:.4f}"
    if f"{split}_top5_accuracy" in metrics:
        line += f", top-5 {metrics[f'{split}_top5_accuracy']:.4f}"
    if f"{split}_ten_crop_accuracy" in metrics:
        line += f"; ten-crop {metrics[f'{split}_ten_crop_accuracy']:.4f}"
        if f"{split}_ten_crop_top5_accuracy" in metrics:
            line += f", top-5 {metrics[f'{split}_ten_crop_top5_accuracy']:.4f}"
    rows = list(metrics["per_class"].items())
    heading = f"{'class':<20} {'precision':>9} {'recall':>7} {'support':>8}"
    if len(rows) > MAX_CLASSES_LOGGED:
        rows = sorted(rows, key=lambda row: row[1]["recall"])[:LOWEST_RECALLS_LOGGED]
        heading = (f"the {LOWEST_RECALLS_LOGGED} classes of lowest recall, of "
                   f"{len(metrics['per_class'])} (all in metrics.json)\n{heading}")
    lines = [f"{line} on {metrics['num_examples']} examples", heading]
    for name, row in rows:
        lines.append(
            f"{name[:20]:<20} {row['precision']:>9.3f} {row['recall']:>7.3f} "
            f"{row['support']:>8d}"
        )
    return "\n".join(lines)


def _check_split(ingested, split):
    if not ingested.num_examples(split):
        raise PipelineError(
            f"{ingested.directory} has no {split} examples; use another `split`"
        )


def _report(split, labels, probabilities, ingested, misclassified, output_dir,
            ten_crop=None):
    """The metrics of `probabilities` against `labels` (and of the ten-crop
    test's, `ten_crop` = (labels, probabilities)), with the confusion matrix
    and the misclassified images of the central crop drawn into `output_dir`."""
    class_names = list(ingested.class_names)
    metrics = _metrics(split, labels, probabilities, class_names, ten_crop)
    tf.io.gfile.makedirs(output_dir)
    matrix, names, title = _drawn_matrix(labels, probabilities.argmax(axis=1), class_names)
    plots.confusion_matrix(matrix, names, os.path.join(output_dir, "confusion_matrix.png"),
                           title)
    plots.misclassified(
        misclassified.images,
        [class_names[label] for label in misclassified.true],
        [class_names[label] for label in misclassified.predicted],
        os.path.join(output_dir, "misclassified.png"),
    )
    logger.info("%s", _table(split, metrics))
    return metrics


def evaluate(model, ingested, run_dir, split="test", ten_crop=False):
    """Metrics of a Keras AlexNet on an ingested split, with pictures written to `run_dir`.

    Args:
        model: an AlexNet; its images are preprocessed for its own
            `image_spec`, as for evaluation.
        ingested: the `IngestedDataset` to evaluate on.
        run_dir: where `confusion_matrix.png`, `misclassified.png` and
            `conv1_kernels.png` go.
        split: "train", "validation" or "test"; it prefixes the accuracy keys.
        ten_crop: also run the paper's ten-crop test, at ten forward passes
            per image.

    Returns:
        `{split}_accuracy`, `{split}_top5_accuracy` (more than 5 classes only),
        with `ten_crop` `{split}_ten_crop_accuracy` and
        `{split}_ten_crop_top5_accuracy` (more than 5 classes only) too,
        `num_examples`, `per_class` ({name: {precision, recall, support}}) and
        `confusion_matrix` (rows are true classes, columns predicted ones; with
        more than `MAX_DENSE_CLASSES` classes `confusion_matrix_cells`, its
        nonzero cells as [true, predicted, count]).
    """
    _check_split(ingested, split)
    misclassified = _Misclassified()
    probabilities, labels = _predict_keras(model, ingested, split, misclassified)
    ten_crop_result = None
    if ten_crop:
        ten_crop_probabilities, ten_crop_labels = _predict_keras(
            model, ingested, split, None, ten_crop=True)
        ten_crop_result = ten_crop_labels, ten_crop_probabilities
    metrics = _report(split, labels, probabilities, ingested, misclassified, run_dir,
                      ten_crop_result)
    if any(layer.name == "conv1" for layer in model.layers):
        plots.conv1_kernels(
            keras.ops.convert_to_numpy(model.get_layer("conv1").kernel),
            os.path.join(run_dir, "conv1_kernels.png"),
        )
    return metrics


def accuracy(model, ingested, split="test"):
    """The accuracy `evaluate` reports for a Keras AlexNet on a split, with no
    pictures drawn; `PipelineError` if the model has another number of classes."""
    _check_split(ingested, split)
    probabilities, labels = _predict_keras(model, ingested, split, _Misclassified())
    if probabilities.shape[1] != ingested.num_classes:
        raise PipelineError(
            f"the model gives {probabilities.shape[1]} class probabilities but the "
            f"dataset has {ingested.num_classes} classes"
        )
    return float(sklearn_metrics.accuracy_score(labels, probabilities.argmax(axis=1)))


def evaluate_encoded(predict_fn, ingested, output_dir, split="test", ten_crop_fn=None):
    """`evaluate`'s metrics and pictures for `predict_fn`, which takes a string
    tensor [batch] of encoded images and returns class probabilities [batch,
    classes] (an export's `serving_default`): what is measured includes the
    preprocessing inside it. `ten_crop_fn`, the same for the ten-crop test (an
    export's `serving_ten_crop`), adds the ten-crop keys."""
    _check_split(ingested, split)
    misclassified = _Misclassified()
    probabilities, labels = _predict_encoded(predict_fn, ingested, split, misclassified)
    ten_crop_result = None
    if ten_crop_fn is not None:
        ten_crop_probabilities, ten_crop_labels = _predict_encoded(
            ten_crop_fn, ingested, split, _Misclassified(), TEN_CROP_BATCH_SIZE)
        ten_crop_result = ten_crop_labels, ten_crop_probabilities
    return _report(split, labels, probabilities, ingested, misclassified, output_dir,
                   ten_crop_result)
