import numpy as np
import pytest
import tensorflow as tf
import keras

from alexnet_keras import LocalResponseNormalization
from alexnet_keras.local_response_normalization import windowed_lrn


def numpy_lrn(a, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75):
    """The paper's formula, written out channel by channel."""
    a = a.astype(np.float64)
    channels = a.shape[-1]
    out = np.empty_like(a)
    for c in range(channels):
        low, high = max(0, c - depth_radius), min(channels, c + depth_radius + 1)
        total = np.sum(a[..., low:high] ** 2, axis=-1)
        out[..., c] = a[..., c] / (bias + alpha * total) ** beta
    return out


def test_matches_numpy_formula_including_edge_channels():
    rng = np.random.default_rng(0)
    # Large activations, so that the normaliser departs far from bias**beta and
    # an error in the window (or dividing by its size) shows.
    x = rng.normal(0.0, 60.0, size=(2, 4, 5, 7)).astype("float32")
    layer = LocalResponseNormalization()
    y = keras.ops.convert_to_numpy(layer(x))
    expected = numpy_lrn(x)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    # The first and last channels see a truncated window: check them explicitly.
    edge = x[..., 0] / (2.0 + 1e-4 * np.sum(x[..., :3] ** 2, axis=-1)) ** 0.75
    np.testing.assert_allclose(y[..., 0], edge, rtol=1e-5)
    # Not the PyTorch convention (alpha divided by the window size).
    pytorch_style = numpy_lrn(x, alpha=1e-4 / 5)
    assert not np.allclose(y, pytorch_style, rtol=1e-3)


@pytest.mark.parametrize(
    "depth_radius,bias,alpha,beta", [(2, 2.0, 1e-4, 0.75), (0, 1.0, 1e-3, 0.5), (3, 1.5, 2e-4, 1.0)]
)
def test_layer_and_portable_formula_match_numpy(depth_radius, bias, alpha, beta):
    # The layer runs TensorFlow's LRN kernel here (TF backend, 4-D float32);
    # `windowed_lrn` is what other backends, ranks and float64 run.
    x = tf.random.stateless_normal((3, 6, 6, 16), seed=(1, 2)) * 30.0
    expected = numpy_lrn(x.numpy(), depth_radius, bias, alpha, beta)
    layer = LocalResponseNormalization(depth_radius, bias, alpha, beta)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    portable = windowed_lrn(x, depth_radius, bias, alpha, beta)
    np.testing.assert_allclose(portable.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_other_ranks_use_the_portable_formula():
    x = tf.random.stateless_normal((2, 7, 9), seed=(9, 9)) * 30.0
    y = LocalResponseNormalization()(x)
    np.testing.assert_allclose(y.numpy(), numpy_lrn(x.numpy()), rtol=1e-5, atol=1e-6)


def test_gradients_of_layer_and_portable_formula_agree():
    # Two independent gradients: TensorFlow's LRNGrad kernel (the layer) and
    # automatic differentiation of the slices (`windowed_lrn`).
    x = tf.random.stateless_normal((2, 5, 5, 12), seed=(3, 4)) * 40.0
    upstream = tf.random.stateless_normal((2, 5, 5, 12), seed=(5, 6))
    layer = LocalResponseNormalization()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = tf.reduce_sum(layer(x) * upstream)
        portable = tf.reduce_sum(windowed_lrn(x, 2, 2.0, 1e-4, 0.75) * upstream)
    np.testing.assert_allclose(
        tape.gradient(ours, x).numpy(), tape.gradient(portable, x).numpy(), rtol=1e-4, atol=1e-6
    )


def test_gradient_matches_finite_differences():
    # float64 takes the portable formula, whose gradient is checked here numerically.
    x = tf.random.stateless_normal((1, 2, 2, 6), seed=(7, 8), dtype=tf.float64) * 50.0
    layer = LocalResponseNormalization(dtype="float64")
    theoretical, numerical = tf.test.compute_gradient(lambda t: layer(t), [x])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-5, atol=1e-7)


def test_compiles_with_xla():
    x = tf.random.stateless_normal((2, 5, 5, 12), seed=(3, 4)) * 40.0
    layer = LocalResponseNormalization()
    compiled = tf.function(lambda t: layer(t), jit_compile=True)
    np.testing.assert_allclose(compiled(x).numpy(), numpy_lrn(x.numpy()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_do_not_overflow(dtype):
    # 300**2 * 5 channels = 450,000 overflows float16 (max 65,504) if summed in it.
    x = tf.fill((1, 2, 2, 8), 300.0)
    layer = LocalResponseNormalization(dtype=f"mixed_{dtype}")
    y = layer(tf.cast(x, dtype))
    assert y.dtype == dtype
    assert np.all(np.isfinite(tf.cast(y, "float32").numpy()))
    np.testing.assert_allclose(
        tf.cast(y, "float32").numpy(), numpy_lrn(x.numpy()), rtol=1e-2
    )


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"depth_radius": -1}, "depth_radius=-1"),
        ({"depth_radius": 2.5}, "depth_radius=2.5"),
        ({"bias": 0.0}, "bias=0.0"),
        ({"alpha": -1e-4}, "alpha=-0.0001"),
        ({"beta": -0.75}, "beta=-0.75"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LocalResponseNormalization(**kwargs)


def test_config_round_trip_and_output_shape():
    layer = LocalResponseNormalization(depth_radius=3, bias=1.0, alpha=2e-4, beta=0.5, name="lrn")
    clone = LocalResponseNormalization.from_config(layer.get_config())
    settings = (clone.depth_radius, clone.bias, clone.alpha, clone.beta, clone.name)
    assert settings == (3, 1.0, 2e-4, 0.5, "lrn")
    assert layer.compute_output_shape((None, 13, 13, 256)) == (None, 13, 13, 256)
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "alexnet_keras>LocalResponseNormalization"
