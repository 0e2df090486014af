"""`GroupedConv2D` against Keras' own `Conv2D(groups=2)`: the same weights,
outputs and gradients, computed group by group."""

import keras
import numpy as np
import tensorflow as tf

from alexnet_keras import AlexNet
from alexnet_keras.grouped_conv2d import GroupedConv2D


def test_values_and_gradients_are_keras_grouped_convolutions():
    x = tf.constant(np.random.default_rng(0).standard_normal((3, 13, 13, 96)), tf.float32)
    reference = keras.layers.Conv2D(64, 3, padding="same", groups=2)
    ours = GroupedConv2D(64, 3, padding="same", groups=2)
    reference.build(x.shape)
    ours.build(x.shape)
    assert ours.kernel.shape == reference.kernel.shape == (3, 3, 48, 64)
    ours.set_weights(reference.get_weights())
    results = []
    for layer in (reference, ours):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        results.append((y, *tape.gradient(loss, [x, layer.kernel])))
    for expected, got in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-4,
                                   atol=1e-4 * float(tf.reduce_max(tf.abs(expected))))
    # Each output group sees only its input group: the paper's two GPUs.
    only_first = tf.concat([x[..., :48], tf.zeros_like(x[..., 48:])], axis=-1)
    np.testing.assert_array_equal(ours(only_first)[..., 32:], ours(tf.zeros_like(x))[..., 32:])


def test_the_two_gpu_network_uses_it_and_saves(tmp_path):
    model = AlexNet(variant="paper_2gpu", num_classes=3, input_shape=(67, 67, 3))
    kinds = {layer.name: type(layer).__name__ for layer in model.layers
             if layer.name.startswith("conv")}
    assert kinds == {"conv1": "Conv2D", "conv2": "GroupedConv2D", "conv3": "Conv2D",
                     "conv4": "GroupedConv2D", "conv5": "GroupedConv2D"}
    model.save(tmp_path / "two_gpu.keras")
    loaded = keras.saving.load_model(tmp_path / "two_gpu.keras")
    images = np.random.default_rng(1).uniform(0, 255, (2, 67, 67, 3)).astype("float32")
    np.testing.assert_array_equal(loaded(images), model(images))
