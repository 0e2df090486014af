"""The run's per-epoch record: `history.csv` and the training-curves PNG."""

import csv
import os

COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "images_per_second",
)


def read(path):
    """The rows of a history file as dicts of numbers (epoch as int)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as file:
        return [
            {key: int(value) if key == "epoch" else float(value) for key, value in row.items()}
            for row in csv.DictReader(file)
        ]


def write(path, rows):
    """Writes `rows` (dicts with `COLUMNS`) as the whole history, atomically."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row[key] for key in COLUMNS})
    os.replace(temporary, path)


def keep_epochs_up_to(path, last_epoch):
    """Drops rows after `last_epoch`: epochs that ran but were never checkpointed.

    A run killed after writing an epoch's row but before saving its checkpoint
    repeats that epoch when resumed; this keeps each epoch in the file once.
    """
    rows = read(path)
    write(path, [row for row in rows if row["epoch"] <= last_epoch])
    return [row for row in rows if row["epoch"] <= last_epoch]


def plot(rows, path):
    """Saves loss and accuracy per epoch, training against validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    epochs = [row["epoch"] for row in rows]
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        axis.plot(epochs, [row[metric] for row in rows], "o-", label="training")
        axis.plot(epochs, [row[f"val_{metric}"] for row in rows], "o-", label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    axes[0].set_title("Loss")
    axes[1].set_title("Accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
