import json
import zipfile

import numpy as np
import keras
import pytest
import tensorflow as tf

from alexnet_keras import AlexNet
from alexnet_keras import ImageSpec
from alexnet_keras import LocalResponseNormalization
from alexnet_keras import minimum_input_size


def output_shapes(model):
    return {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}


def test_paper_variant_matches_the_paper():
    model = AlexNet(variant="paper", num_classes=1000)
    assert model.count_params() == 62_378_344
    shapes = output_shapes(model)
    assert shapes["image"] == (227, 227, 3)
    assert shapes["conv1"] == (55, 55, 96)
    assert shapes["lrn1"] == (55, 55, 96)
    assert shapes["pool1"] == (27, 27, 96)
    assert shapes["conv2"] == (27, 27, 256)
    assert shapes["pool2"] == (13, 13, 256)
    assert shapes["conv3"] == (13, 13, 384)
    assert shapes["conv4"] == (13, 13, 384)
    assert shapes["conv5"] == (13, 13, 256)
    assert shapes["pool5"] == (6, 6, 256)
    assert shapes["flatten"] == (9216,)
    assert shapes["fc8"] == (1000,)
    order = [layer.name for layer in model.layers]
    assert order[:6] == ["image", "conv1", "lrn1", "pool1", "conv2", "lrn2"]
    lrn = model.get_layer("lrn1")
    assert isinstance(lrn, LocalResponseNormalization)
    assert (lrn.depth_radius, lrn.bias, lrn.alpha, lrn.beta) == (2, 2.0, 1e-4, 0.75)
    assert model.get_layer("dropout6").rate == 0.5
    assert model.get_layer("pool1").pool_size == (3, 3)
    assert model.get_layer("pool1").strides == (2, 2)


def test_paper_2gpu_variant_is_the_two_gpu_network():
    """conv2, conv4 and conv5 see only their own GPU's half of the maps: Caffe's
    bvlc_alexnet, 60,965,224 parameters at 227x227x3 with 1000 classes."""
    model = AlexNet(variant="paper_2gpu", num_classes=1000)
    assert model.count_params() == 60_965_224
    groups = {name: model.get_layer(name).groups for name in ("conv1", "conv2", "conv3",
                                                              "conv4", "conv5")}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    assert tuple(model.get_layer("conv2").kernel.shape) == (5, 5, 48, 256)
    assert tuple(model.get_layer("conv4").kernel.shape) == (3, 3, 192, 384)
    assert output_shapes(model) == output_shapes(AlexNet(variant="paper", num_classes=1000))
    # It trains: gradients reach every grouped kernel.
    images = keras.random.normal((2, 67, 67, 3))
    small = AlexNet(variant="paper_2gpu", num_classes=3, input_shape=(67, 67, 3))
    with tf.GradientTape() as tape:
        loss = keras.ops.mean(small(images, training=True) ** 2)
    gradients = tape.gradient(loss, small.get_layer("conv4").trainable_variables)
    assert all(gradient is not None and float(tf.reduce_sum(tf.abs(gradient))) > 0
               for gradient in gradients)


def test_torchvision_variant_is_torchvisions_layout():
    model = AlexNet(variant="torchvision", num_classes=1000)
    assert model.count_params() == 61_100_840
    shapes = output_shapes(model)
    assert shapes["image"] == (224, 224, 3)
    assert shapes["conv1"] == (55, 55, 64) and shapes["conv2"] == (27, 27, 192)
    assert shapes["pool5"] == (6, 6, 256) and shapes["avgpool"] == (6, 6, 256)
    order = [layer.name for layer in model.layers]
    # Dropout before fc6 and fc7, as torchvision's classifier has it.
    assert order.index("dropout6") < order.index("fc6") < order.index("dropout7") < order.index(
        "fc7")
    spec = model.image_spec
    np.testing.assert_allclose(spec.normalize(np.full(3, 255 * 0.485, "float32")),
                               [0.0, (0.485 - 0.456) / 0.224, (0.485 - 0.406) / 0.225],
                               rtol=1e-5)
    # At small inputs the adaptive pool still gives 6x6.
    small = AlexNet(variant="torchvision", num_classes=2, input_shape=(67, 67, 3))
    assert output_shapes(small)["avgpool"] == (6, 6, 256)
    with pytest.raises(ValueError, match="one number per channel"):
        AlexNet(variant="torchvision", num_classes=2, input_shape=(67, 67, 1))


def test_paper_initialisation():
    model = AlexNet(variant="paper", num_classes=1000)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        kernel, bias = (w.numpy() for w in model.get_layer(name).weights)
        # N(0, 0.01): with >34k samples per layer the sample std is within 3%.
        assert abs(kernel.std() - 0.01) < 3e-4, name
        assert abs(kernel.mean()) < 3e-4, name
        expected_bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        np.testing.assert_array_equal(bias, np.full_like(bias, expected_bias), err_msg=name)


def test_he_initialisation_and_the_pixel_scale_it_is_sized_for():
    """He normal (std sqrt(2 / fan-in)), zero biases, and pixels in [-1, 1]
    by default; the paper's initialisation keeps the 0-255 scale."""
    model = AlexNet(variant="paper", num_classes=10, input_shape=(67, 67, 1), initializer="he")
    assert model.initializer == "he" and model.pixel_scale == pytest.approx(1 / 127.5)
    for name, fan_in in (("conv1", 11 * 11 * 1), ("conv2", 5 * 5 * 96), ("fc7", 4096)):
        kernel, bias = (w.numpy() for w in model.get_layer(name).weights)
        # HeNormal truncates at two standard deviations (std 0.88 of untruncated).
        expected = np.sqrt(2 / fan_in)
        assert kernel.std() == pytest.approx(expected, rel=0.05), name
        assert not bias.any(), name
    assert AlexNet(variant="paper", input_shape=(67, 67, 3)).pixel_scale == 1.0
    assert AlexNet(variant="d2l", initializer="paper").pixel_scale == 1.0
    # A given scale wins; torchvision keeps ImageNet's statistics.
    assert AlexNet(initializer="he", pixel_scale=0.5, input_shape=(67, 67, 3)).pixel_scale == 0.5
    torchvision = AlexNet(variant="torchvision", initializer="he")
    assert torchvision.pixel_scale == AlexNet(variant="torchvision").pixel_scale
    # Saved and loaded with its initializer and scale.
    config = AlexNet.from_config(model.get_config()).get_config()
    assert config["initializer"] == "he" and config["pixel_scale"] == model.pixel_scale


def test_d2l_variant_matches_the_tutorial():
    model = AlexNet(variant="d2l", num_classes=10)
    assert model.count_params() == 46_764_746
    shapes = output_shapes(model)
    assert shapes["image"] == (224, 224, 1)
    assert shapes["conv1"] == (54, 54, 96)
    assert shapes["pool5"] == (5, 5, 256)
    assert shapes["flatten"] == (6400,)
    assert not any(isinstance(layer, LocalResponseNormalization) for layer in model.layers)
    # Glorot-uniform: limit sqrt(6 / (fan_in + fan_out)), zero biases.
    kernel, bias = (w.numpy() for w in model.get_layer("fc7").weights)
    limit = np.sqrt(6.0 / (4096 + 4096))
    assert kernel.max() <= limit and kernel.min() >= -limit and kernel.std() > limit / 2
    assert not bias.any()
    non_square = AlexNet(variant="d2l", num_classes=10, input_shape=(224, 244, 1))
    assert output_shapes(non_square)["pool5"] == (5, 6, 256)
    assert output_shapes(non_square)["flatten"] == (7680,)


def test_options_for_the_tuner():
    model = AlexNet(
        variant="paper", num_classes=7, input_shape=(67, 80, 5), dropout_rate=0.3,
        normalization="batchnorm",
    )
    names = [layer.name for layer in model.layers]
    assert "lrn1" not in names
    assert names[1:4] == ["conv1", "bn1", "relu1"]
    assert model.get_layer("dropout7").rate == 0.3
    assert model.output.shape[1:] == (7,)
    assert AlexNet(variant="d2l", normalization="lrn", input_shape=(65, 65, 1)).get_layer("lrn2")
    none = AlexNet(variant="paper", normalization="none", input_shape=(67, 67, 3))
    assert not any(isinstance(layer, LocalResponseNormalization) for layer in none.layers)


def test_minimum_input_size():
    assert minimum_input_size("paper") == 67
    assert minimum_input_size("d2l") == 65
    AlexNet(variant="paper", num_classes=2, input_shape=(67, 67, 3))
    with pytest.raises(ValueError, match="at least 67x67"):
        AlexNet(variant="paper", num_classes=2, input_shape=(66, 67, 3))
    with pytest.raises(ValueError, match="at least 65x65"):
        AlexNet(variant="d2l", num_classes=2, input_shape=(64, 64, 1))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"variant": "vgg"}, "variant='vgg'"),
        ({"normalization": "layernorm"}, "normalization='layernorm'"),
        ({"num_classes": 0}, "num_classes=0"),
        ({"dropout_rate": 1.0}, "dropout_rate=1.0"),
        ({"initializer": "xavier"}, "initializer='xavier'"),
        ({"input_shape": (227, 227)}, "input_shape=\\(227, 227\\)"),
        ({"crop_fraction": 0.0}, "crop_fraction=0.0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlexNet(**kwargs)


def test_save_and_load_round_trip(tmp_path):
    model = AlexNet(variant="paper", num_classes=5, input_shape=(67, 67, 3), dropout_rate=0.4)
    images = np.random.default_rng(0).normal(size=(3, 67, 67, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    path = tmp_path / "alexnet.keras"
    model.save(path)
    restored = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(restored, AlexNet)
    assert restored.get_config() == model.get_config()
    np.testing.assert_allclose(restored.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in restored.layers)


def test_the_model_carries_its_image_spec_through_saving(tmp_path):
    # The paper keeps the 0-255 scale (mean subtraction), d2l takes [-1, 1].
    assert AlexNet(variant="paper").image_spec == ImageSpec(227, 227, 3, 127.5, 1.0)
    d2l = AlexNet(variant="d2l", num_classes=4, input_shape=(70, 80, 3))
    assert d2l.image_spec == ImageSpec(70, 80, 3, 127.5, 1 / 127.5)
    custom = AlexNet(num_classes=2, input_shape=(67, 67, 1), pixel_offset=100.0,
                     pixel_scale=0.5, crop_fraction=0.9)
    custom.save(tmp_path / "custom.keras")
    restored = keras.saving.load_model(tmp_path / "custom.keras")
    assert restored.image_spec == ImageSpec(67, 67, 1, 100.0, 0.5, 0.9)
    np.testing.assert_allclose(restored.image_spec.normalize(np.array([0.0, 255.0])),
                               [-50.0, 77.5])


def test_a_model_saved_before_crop_fraction_existed_loads_with_the_default(tmp_path):
    model = AlexNet(num_classes=2, input_shape=(67, 67, 3))
    model.save(tmp_path / "new.keras")
    # The same file as an earlier version wrote it: no crop_fraction in the config.
    with zipfile.ZipFile(tmp_path / "new.keras") as new, \
            zipfile.ZipFile(tmp_path / "old.keras", "w") as old:
        for item in new.infolist():
            data = new.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                del config["config"]["crop_fraction"]
                data = json.dumps(config)
            old.writestr(item, data)
    restored = keras.saving.load_model(tmp_path / "old.keras")
    assert restored.image_spec == ImageSpec(67, 67, 3, 127.5, 1.0, 0.875)
    assert restored.get_config() == model.get_config()


def test_mixed_precision_keeps_logits_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = AlexNet(variant="paper", num_classes=3, input_shape=(67, 67, 3))
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    logits = model(np.ones((2, 67, 67, 3), "float32"))
    assert logits.dtype == "float32"
    assert np.all(np.isfinite(logits.numpy()))
