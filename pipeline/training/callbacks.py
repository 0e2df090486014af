"""The run's own training callbacks, checkpointed with it: the paper's plateau
schedule, early stopping, `history.csv` and the epoch-end checkpoint."""

import logging
import math
import os

import keras
import tensorflow as tf

from pipeline.training import history
from pipeline.training import optimizers

log = logging.getLogger(__name__)


def current_learning_rate(optimizer):
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class Plateau:
    """The paper's schedule: divide the learning rate by 10 when the validation
    loss stops improving for `patience` epochs, at most three times. It counts
    the divisions in `reductions`, which a warmed-up rate follows.

    Its state is held in variables so that it is checkpointed with the run.
    """

    def __init__(self, patience=2, max_reductions=3):
        self.patience = patience
        self.max_reductions = max_reductions
        self.best = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.reductions = tf.Variable(0, dtype=tf.int64, trainable=False)

    def trackables(self):
        return {"best": self.best, "wait": self.wait, "reductions": self.reductions}

    def update(self, val_loss, optimizer):
        if val_loss < self.best.numpy() - 1e-4:
            self.best.assign(val_loss)
            self.wait.assign(0)
            return
        self.wait.assign_add(1)
        if self.wait.numpy() >= self.patience and self.reductions.numpy() < self.max_reductions:
            self.reductions.assign_add(1)
            # After a warm-up the optimizer's schedule follows the count
            # (`optimizers.DividedOnPlateau`); a plain rate is divided here.
            if not optimizers.follows_plateau(optimizer):
                optimizer.learning_rate = current_learning_rate(optimizer) / 10
            self.wait.assign(0)
            log.info("Validation loss stopped improving: learning rate divided by 10, now %g",
                     current_learning_rate(optimizer))


class EarlyStopping(keras.callbacks.Callback):
    """Stops the run when the validation loss has not improved by 1e-4 for
    `patience` epochs, as `keras.callbacks.EarlyStopping(patience=...)` does.

    Its state is held in variables checkpointed with the run, so a resumed run
    counts on where it was, and a run that stopped stays stopped. It goes
    before the checkpointer, so the epoch it stops after saves that it did.
    """

    def __init__(self, patience):
        super().__init__()
        self.patience = patience
        self.best = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False)
        # The epoch (from 1) after which the run stopped; 0 while it runs.
        self.stopped_after = tf.Variable(0, dtype=tf.int64, trainable=False)

    def trackables(self):
        return {"early_stopping_best": self.best, "early_stopping_wait": self.wait,
                "early_stopping_stopped_after": self.stopped_after}

    def on_epoch_end(self, epoch, logs=None):
        if logs["val_loss"] < self.best.numpy() - 1e-4:
            self.best.assign(logs["val_loss"])
            self.wait.assign(0)
            return
        self.wait.assign_add(1)
        if self.wait.numpy() >= self.patience:
            self.stopped_after.assign(epoch + 1)
            self.model.stop_training = True
            log.info("Validation loss has not improved for %d epochs: training stops after "
                     "epoch %d", self.patience, epoch + 1)


class HistoryRecorder(keras.callbacks.Callback):
    """Writes each epoch to `history.csv`."""

    def __init__(self, run_dir, rows):
        super().__init__()
        self.history_path = os.path.join(run_dir, "history.csv")
        self.rows = rows

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **logs})
        history.write(self.history_path, self.rows)


class PlateauSchedule(keras.callbacks.Callback):
    """Applies `Plateau` to the optimizer after every epoch."""

    def __init__(self, plateau, optimizer):
        super().__init__()
        self.plateau = plateau
        self.optimizer = optimizer

    def on_epoch_end(self, epoch, logs=None):
        self.plateau.update(logs["val_loss"], self.optimizer)


class Checkpointer(keras.callbacks.Callback):
    """Saves the run's state as checkpoint `epoch + 1` after every epoch, last,
    so a checkpoint holds everything the epoch changed; its number is the
    epoch a resumed run starts after."""

    def __init__(self, checkpoints):
        super().__init__()
        self.checkpoints = checkpoints

    def on_epoch_end(self, epoch, logs=None):
        self.checkpoints.save_epoch(epoch + 1)
