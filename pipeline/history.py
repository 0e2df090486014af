"""The run's per-epoch record, `history.csv`, kept with each epoch exactly once."""

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


def epochs_up_to(path, last_epoch):
    """The rows up to `last_epoch`: without epochs that ran but were never
    checkpointed, which a resumed run repeats.

    The file itself is left as it is until the resumed run writes its next
    epoch: a run that fails before then has destroyed nothing.
    """
    return [row for row in read(path) if row["epoch"] <= last_epoch]
