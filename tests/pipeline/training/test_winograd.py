"""Winograd F(4x4, 3x3) convolutions: the direct convolution's values and
gradients, only where they pay, and only inside the train step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_keras import AlexNet
from pipeline.training import train_steps
from pipeline.training import winograd

# d2l at 145 pixels has 8x8 maps at conv3-conv5 (two tiles a side); at 67, 3x3.
TILED_SIZE = 145


def _direct(images, kernel):
    return tf.nn.conv2d(images, kernel, 1, "SAME")


@pytest.mark.parametrize("shape", [(2, 8, 8, 5), (2, 12, 16, 7), (1, 13, 13, 3), (3, 5, 7, 4)])
def test_conv2d_3x3_gives_the_direct_convolution_and_its_gradients(shape):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=shape).astype("float32"))
    kernel = tf.constant(rng.normal(size=(3, 3, shape[-1], 6)).astype("float32"))
    # A loss whose gradient differs at every output.
    weights = tf.constant(rng.normal(size=(*shape[:3], 6)).astype("float32"))
    results = {}
    for name, convolve in (("direct", _direct), ("winograd", winograd.conv2d_3x3)):
        with tf.GradientTape() as tape:
            tape.watch([images, kernel])
            outputs = convolve(images, kernel)
            loss = tf.reduce_sum(outputs * weights)
        results[name] = [outputs, *tape.gradient(loss, [images, kernel])]
    for direct, fast in zip(results["direct"], results["winograd"]):
        assert fast.shape == direct.shape
        scale = np.abs(direct.numpy()).max()
        assert scale > 1
        np.testing.assert_allclose(fast.numpy(), direct.numpy(), atol=2e-5 * scale)


def _graph_ops(model, size):
    images = tf.zeros((2, size, size, 1))
    traced = tf.function(lambda x: model(x, training=True)).get_concrete_function(images)
    return {op.type for op in traced.graph.get_operations()}


def test_the_block_sets_the_3x3_layers_and_restores_them():
    model = AlexNet(variant="d2l", num_classes=3, input_shape=(TILED_SIZE, TILED_SIZE, 1))
    configs = [layer.get_config() for layer in model.layers]
    with winograd.convolutions(model) as layers:
        assert [layer.name for layer in layers] == ["conv3", "conv4", "conv5"]
        assert "BatchMatMulV2" in _graph_ops(model, TILED_SIZE)
    assert all("convolution_op" not in vars(layer) for layer in model.layers)
    assert "BatchMatMulV2" not in _graph_ops(model, TILED_SIZE)
    assert [layer.get_config() for layer in model.layers] == configs


@pytest.mark.parametrize("size", [67, 161])
def test_maps_that_are_not_whole_tiles_keep_the_direct_convolution(size):
    # 3x3 maps at 67 pixels, 9x9 at 161.
    model = AlexNet(variant="d2l", num_classes=3, input_shape=(size, size, 1))
    with winograd.convolutions(model) as layers:
        assert len(layers) == 3
        assert "BatchMatMulV2" not in _graph_ops(model, size)


def test_bfloat16_layers_keep_the_direct_convolution():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = AlexNet(variant="d2l", num_classes=3, input_shape=(TILED_SIZE, TILED_SIZE, 1))
    with winograd.convolutions(model) as layers:
        assert layers == []


def _train(strategy, use_winograd, steps=2, batch=8):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(steps * batch, TILED_SIZE, TILED_SIZE, 1)).astype("float32")
    labels = np.arange(steps * batch, dtype="int32") % 3
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = AlexNet(variant="d2l", num_classes=3,
                        input_shape=(TILED_SIZE, TILED_SIZE, 1), dropout_rate=0.0)
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        optimizer.build(model.trainable_variables)
    before = [variable.numpy().copy() for variable in model.trainable_variables]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)
    step = train_steps.make_train_step(model, optimizer, strategy, batch,
                                       winograd=use_winograd)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    losses = [float(step(iterator)[0]) for _ in range(steps)]
    deltas = [variable.numpy() - start
              for variable, start in zip(model.trainable_variables, before)]
    return losses, deltas, model


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_winograd_train_step_trains_as_the_direct_one(replicas):
    # Reduced on one device, not by collectives: a collective's instance keys
    # restart with every MirroredStrategy over the same devices, and in a
    # process where another test's strategy all-reduced another model's
    # gradients, TensorFlow rejects this model's as a shape mismatch.
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{index}" for index in range(replicas)],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
    direct_losses, direct_deltas, _ = _train(strategy, use_winograd=False)
    losses, deltas, model = _train(strategy, use_winograd=True)
    np.testing.assert_allclose(losses, direct_losses, rtol=1e-4)
    for direct, fast in zip(direct_deltas, deltas):
        assert np.abs(direct).max() > 0
        np.testing.assert_allclose(fast, direct, atol=1e-3 * np.abs(direct).max())
    # The trained model computes directly outside the step.
    assert all("convolution_op" not in vars(layer) for layer in model.layers)
