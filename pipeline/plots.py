"""The pictures a run leaves in its directory, drawn with matplotlib's Agg canvas.

Figures are built directly (`matplotlib.figure.Figure`), not through pyplot, so
no GUI backend is ever needed and nothing global is left open.
"""

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from sklearn import metrics as sklearn_metrics

# Beyond these class counts the confusion matrix would be unreadable with
# numbers in its cells, or with names on its axes.
_MAX_CLASSES_WITH_VALUES = 20
_MAX_CLASSES_WITH_NAMES = 100
# The most classes a confusion matrix picture shows: with more (ImageNet's
# 1000), the evaluation draws the classes most often confused.
MAX_CLASSES_DRAWN = 50


def _save(figure, path, dpi):
    """Writes `figure` as a PNG to `path`, on any file system TensorFlow has."""
    with tf.io.gfile.GFile(path, "wb") as file:
        figure.savefig(file, format="png", dpi=dpi)


def training_curves(rows, path):
    """Loss and accuracy per epoch, training against validation (`history.csv` rows)."""
    epochs = [row["epoch"] for row in rows]
    figure = Figure(figsize=(10, 4), layout="constrained")
    for index, metric in enumerate(("loss", "accuracy")):
        axes = figure.add_subplot(1, 2, index + 1)
        axes.plot(epochs, [row[metric] for row in rows], "o-", label="training")
        axes.plot(epochs, [row[f"val_{metric}"] for row in rows], "o-", label="validation")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(metric.capitalize())
        axes.grid(alpha=0.3)
        axes.legend()
    _save(figure, path, dpi=100)


def learning_rate_range(test, path):
    """The loss against the learning rate of a range test
    (`pipeline.training.lr_finder.RangeTest`), the suggestion marked."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(test.learning_rates, test.losses, alpha=0.3, label="loss of each step")
    axes.plot(test.learning_rates, test.smoothed, label="smoothed")
    if test.suggestion is not None:
        axes.axvline(test.suggestion, color="tab:red", linestyle="--",
                     label=f"suggested: {test.suggestion:.2g}")
    axes.set_xscale("log")
    # The last steps' loss explodes: the picture shows the fall before it.
    low, start = min(test.smoothed), test.smoothed[0]
    axes.set_ylim(low - 0.1 * (start - low) - 1e-3, max(test.smoothed[:len(test.smoothed) // 2 + 1])
                  + 0.5 * (start - low) + 1e-3)
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.set_title("Learning-rate range test")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    _save(figure, path, dpi=100)


def search_scores(trial_ids, scores, objective, path):
    """Each trial's score in the order trials ran, and the best so far."""
    figure = Figure(figsize=(8, 4), layout="constrained")
    axes = figure.add_subplot()
    positions = range(len(scores))
    axes.bar(positions, scores, color="tab:blue")
    axes.plot(positions, np.maximum.accumulate(scores), "o-", color="tab:orange",
              label="best so far")
    axes.set_xticks(positions, trial_ids, rotation=90 if len(scores) > 20 else 0)
    axes.set_xlabel("trial")
    axes.set_ylabel(objective)
    axes.set_ylim(0, max(1.0, *scores))
    axes.legend()
    axes.set_title("Hyperparameter search")
    _save(figure, path, dpi=100)


def confusion_matrix(matrix, class_names, path, title="Confusion matrix"):
    """The confusion matrix with class names on the axes (true rows, predicted
    columns); the caller bounds it (`MAX_CLASSES_DRAWN`)."""
    count = len(class_names)
    side = min(4 + 0.4 * count, 40)
    figure = Figure(figsize=(side, side), layout="constrained")
    axes = figure.add_subplot()
    display = sklearn_metrics.ConfusionMatrixDisplay(
        np.asarray(matrix),
        display_labels=class_names if count <= _MAX_CLASSES_WITH_NAMES else None,
    )
    display.plot(
        ax=axes,
        include_values=count <= _MAX_CLASSES_WITH_VALUES,
        xticks_rotation="vertical",
        colorbar=False,
    )
    axes.set_title(title)
    _save(figure, path, dpi=100)


def _displayable(image):
    # Per-image min-max, so any normalisation shows as the full grey or colour range.
    image = np.asarray(image, dtype=np.float32)
    low, high = image.min(), image.max()
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return image[..., 0] if image.shape[-1] == 1 else image


def conv1_kernels(kernel, path):
    """The learned conv1 kernels `[height, width, channels, filters]` as a grid,
    like Figure 3 of the paper (grey for one-channel models)."""
    filters = kernel.shape[-1]
    columns = 12
    rows = -(-filters // columns)
    figure = Figure(figsize=(columns, rows))
    for index in range(filters):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(
            _displayable(kernel[..., index]), cmap="gray", interpolation="nearest"
        )
        axes.axis("off")
    figure.suptitle(
        f"conv1 kernels ({kernel.shape[0]}x{kernel.shape[1]}x{kernel.shape[2]})"
    )
    _save(figure, path, dpi=80)


def misclassified(images, true_names, predicted_names, path):
    """A few misclassified images titled with their true and predicted class."""
    shown = len(images)
    columns = 4
    rows = max(1, -(-shown // columns))
    figure = Figure(figsize=(2.5 * columns, 3 * rows), layout="constrained")
    if not shown:
        figure.text(0.5, 0.5, "No misclassified images", ha="center", va="center")
    for index, image in enumerate(images):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(_displayable(image), cmap="gray")
        axes.set_title(
            f"true: {true_names[index]}\npredicted: {predicted_names[index]}", fontsize=9
        )
        axes.axis("off")
    _save(figure, path, dpi=80)
