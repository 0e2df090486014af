"""What a run shows in TensorBoard, laid out as `keras.callbacks.TensorBoard` lays out `fit`.

    tensorboard --logdir runs

A run's `logs/` holds `train/` and `validation/` with Keras' epoch scalars
(`epoch_loss`, `epoch_accuracy`, `epoch_learning_rate`, step = the epoch from
0) and the loop's `epoch_images_per_second`; `test/` with the test accuracy
and the confusion matrix; the conv1 kernels in `train/`; and the run's
hyperparameters for the HParams dashboard, where the trials of a search
(`<tune_dir>/logs/<trial>/execution0/`, laid out alike) sit beside it.
"""

import os

import keras
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from pipeline import config as config_lib

LOGS = "logs"


def log_dir(run_dir):
    """The TensorBoard directory of a run."""
    return os.path.join(run_dir, LOGS)


class TensorBoard(keras.callbacks.Callback):
    """The epoch scalars `keras.callbacks.TensorBoard` writes in `fit`, for the
    custom loop.

    Keras' own callback reads the learning rate from `model.optimizer`, which
    only a compiled model has, and a compiled model puts its optimizer's slots
    into its `.keras` export (three times the weights with Adam). This writes
    what Keras writes: each log as `epoch_<name>` under `<log_dir>/train`, each
    `val_<name>` as `epoch_<name>` under `<log_dir>/validation`, at step
    `epoch`. Each epoch is flushed before the checkpoint a resumed run starts
    after, which then writes the later epochs again; TensorBoard keeps the
    newest value of a step written twice (a step preempts those at or after
    it), so a resumed run shows each epoch once.

    keras-tuner knows this callback by its class name: it gives each trial a
    copy with its own `log_dir` and adds TensorBoard's HParams callback.
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self.writers = {}

    def on_train_begin(self, logs=None):
        # Opened here, not in __init__: keras-tuner sets a trial's `log_dir`
        # on a copy of the callback.
        self.writers = {
            split: tf.summary.create_file_writer(os.path.join(self.log_dir, split))
            for split in ("train", "validation")
        }

    def on_epoch_end(self, epoch, logs=None):
        for name, value in logs.items():
            split = "validation" if name.startswith("val_") else "train"
            with self.writers[split].as_default(step=epoch):
                tf.summary.scalar(f"epoch_{name.removeprefix('val_')}", value)
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()


def hparams_callback(run_dir, model, train_config):
    """TensorBoard's HParams callback for a run, the one keras-tuner adds to
    each trial: the run's logged settings (`pipeline.config.logged_settings`),
    under the names the search gives them, so that the run is a row of the
    trials' table. The model's settings are its own (`normalization` as the
    variant resolved it), not the config's."""
    logged = config_lib.logged_settings()
    values = {name: getattr(train_config, name) for name in logged["train"]}
    values.update({name: getattr(model, name) for name in logged["model"]})
    return hparams_api.KerasCallback(log_dir(run_dir), values)


def _image(run_dir, name, description):
    """Writes `name`.png of `run_dir` as an image summary, if the evaluation drew it."""
    path = os.path.join(run_dir, f"{name}.png")
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path, "rb") as file:
            image = tf.io.decode_png(file.read())
        tf.summary.image(name, image[tf.newaxis], description=description)


def write_evaluation(run_dir, epoch, test_accuracy, ten_crop_accuracy=None):
    """The test accuracy and pictures of the model trained to `epoch` (from 0).

    The accuracy is `epoch_accuracy` of the run `test`: a third line in the
    chart of the training and validation accuracy, and a column of the
    HParams dashboard; the ten-crop test's, when given, is
    `epoch_ten_crop_accuracy` beside it. The confusion matrix goes to `test/` and the conv1
    kernels to `train/`, as the evaluation drew them into `run_dir`.
    """
    test = tf.summary.create_file_writer(os.path.join(log_dir(run_dir), "test"))
    with test.as_default(step=epoch):
        tf.summary.scalar("epoch_accuracy", test_accuracy)
        if ten_crop_accuracy is not None:
            tf.summary.scalar("epoch_ten_crop_accuracy", ten_crop_accuracy)
        _image(run_dir, "confusion_matrix",
               "Rows are the true classes of the test images, columns the predicted ones.")
    test.close()
    train = tf.summary.create_file_writer(os.path.join(log_dir(run_dir), "train"))
    with train.as_default(step=epoch):
        _image(run_dir, "conv1_kernels", "The learned conv1 kernels (the paper's Figure 3).")
    train.close()
