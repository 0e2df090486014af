"""The run's per-epoch record, `history.csv`, kept with each epoch exactly once."""

import csv
import io

import tensorflow as tf

from pipeline.storage import atomic

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
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as file:
        return [
            {key: int(value) if key == "epoch" else float(value) for key, value in row.items()}
            for row in csv.DictReader(file)
        ]


def write(path, rows):
    """Writes `rows` (dicts with `COLUMNS`) as the whole history, atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row[key] for key in COLUMNS})
    atomic.replace_file(path, text.getvalue())


def epochs_up_to(path, last_epoch):
    """The rows up to `last_epoch`: without epochs that ran but were never
    checkpointed, which a resumed run repeats.

    The file itself is left as it is until the resumed run writes its next
    epoch: a run that fails before then has destroyed nothing.
    """
    return [row for row in read(path) if row["epoch"] <= last_epoch]
