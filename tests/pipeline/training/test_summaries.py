"""TensorBoard logs: the layout and tags of Keras' own callback from the custom
loop, and the evaluation beside the training curves."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import testlib
from pipeline.training import optimizers
from pipeline import plots
from pipeline.training import summaries
from pipeline.training import loop
from pipeline.config import DataConfig
from pipeline.config import TrainConfig


def epoch_steps(log_dir):
    """{split: {tag: steps}} of the epoch scalars of a Keras log directory."""
    return {
        split: {tag: sorted(steps)
                for tag, steps in testlib.tensorboard_scalars(log_dir / split).items()
                if tag.startswith("epoch_")}
        for split in ("train", "validation")
    }


def test_the_loop_logs_what_model_fit_logs_with_keras_own_callback(tmp_path, digits):
    # Any model fitted by Keras with `keras.callbacks.TensorBoard`.
    reference = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    reference.compile(
        optimizer="adam", metrics=["accuracy"],
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    features, labels = np.random.default_rng(0).random((8, 4)), np.arange(8) % 3
    reference.fit(features, labels, validation_data=(features, labels), epochs=2, verbose=0,
                  callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "keras"))])

    config = TrainConfig(epochs=2, steps_per_epoch=1, batch_size=16)
    model = testlib.digits_model()
    optimizer = optimizers.make_optimizer(config, 1, model.trainable_variables)
    logs = loop.fit(model, optimizer, tf.distribute.get_strategy(), config, DataConfig(),
                    digits, callbacks=[summaries.TensorBoard(str(tmp_path / "ours"))])

    expected = epoch_steps(tmp_path / "keras")
    assert expected == {
        "train": {"epoch_loss": [0, 1], "epoch_accuracy": [0, 1], "epoch_learning_rate": [0, 1]},
        "validation": {"epoch_loss": [0, 1], "epoch_accuracy": [0, 1]},
    }
    expected["train"]["epoch_images_per_second"] = [0, 1]
    assert epoch_steps(tmp_path / "ours") == expected
    trained = testlib.tensorboard_scalars(tmp_path / "ours" / "train")
    validated = testlib.tensorboard_scalars(tmp_path / "ours" / "validation")
    for epoch, epoch_logs in enumerate(logs):
        for name in ("loss", "accuracy", "learning_rate", "images_per_second"):
            assert trained[f"epoch_{name}"][epoch] == pytest.approx(epoch_logs[name], rel=1e-6)
        for name in ("loss", "accuracy"):
            assert validated[f"epoch_{name}"][epoch] == pytest.approx(
                epoch_logs[f"val_{name}"], rel=1e-6
            )


def test_the_test_accuracy_and_pictures_go_beside_the_curves(tmp_path):
    plots.confusion_matrix([[3, 1], [0, 4]], ["cat", "dog"], str(tmp_path / "confusion_matrix.png"))
    kernel = np.random.default_rng(0).normal(size=(11, 11, 1, 96))
    plots.conv1_kernels(kernel, str(tmp_path / "conv1_kernels.png"))

    summaries.write_evaluation(str(tmp_path), 4, 0.875, 0.75)

    logs = tmp_path / "logs"
    assert testlib.tensorboard_scalars(logs / "test") == {"epoch_accuracy": {4: 0.875},
                                                          "epoch_ten_crop_accuracy": {4: 0.75}}
    shown = {split: testlib.tensorboard_images(logs / split) for split in ("train", "test")}
    assert {split: {tag: list(steps) for tag, steps in images.items()}
            for split, images in shown.items()} == {
        "train": {"conv1_kernels": [4]}, "test": {"confusion_matrix": [4]},
    }
    # The pictures of the run directory, pixel for pixel.
    for split, name in (("train", "conv1_kernels"), ("test", "confusion_matrix")):
        drawn = tf.io.decode_png((tmp_path / f"{name}.png").read_bytes()).numpy()
        np.testing.assert_array_equal(shown[split][name][4], drawn)
