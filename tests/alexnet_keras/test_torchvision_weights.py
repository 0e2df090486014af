"""torchvision's AlexNet state dict converted to `AlexNet(variant="torchvision")`:
the same logits as torchvision's own network, and one-line errors for other files.

The reference is torchvision's own `AlexNet` class (`torch_reference`).
"""

import numpy as np
import pytest
from sklearn import datasets as sklearn_datasets

from alexnet_keras import AlexNet
from alexnet_keras import alexnet
from alexnet_keras import torchvision_weights
from torch_reference import torchvision_alexnet

torch = pytest.importorskip("torch")

# float32 through eight layers: measured 1.3e-8 on random weights' logits of
# about 0.03 (docs/model.md).
TOLERANCE = 1e-6


def torchvision_preprocess(image):
    """What torchvision's ImageClassification(crop_size=224) does: resize the
    short side to 256 (bilinear, antialiased), central 224 crop, ImageNet's
    mean and standard deviation."""
    pixels = torch.tensor(image).permute(2, 0, 1)[None].float() / 255
    height, width = pixels.shape[2:]
    scale = 256 / min(height, width)
    size = (int(height * scale), int(width * scale))
    pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bilinear",
                                             antialias=True, align_corners=False)
    top, left = (size[0] - 224) // 2, (size[1] - 224) // 2
    pixels = pixels[:, :, top:top + 224, left:left + 224]
    mean = torch.tensor(alexnet.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(alexnet.IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    reference = torchvision_alexnet()
    path = tmp_path_factory.mktemp("weights") / "alexnet-owt-random.pth"
    torch.save(reference.state_dict(), path)
    state = torchvision_weights.read_state_dict(str(path))
    return reference, torchvision_weights.from_state_dict(state), path


def test_the_architecture_is_torchvisions():
    reference = torchvision_alexnet()
    model = AlexNet(variant="torchvision", num_classes=1000)
    assert sum(p.numel() for p in reference.parameters()) == model.count_params() == 61_100_840
    assert torchvision_weights.check_state_dict(
        {key: value.numpy() for key, value in reference.state_dict().items()}) == 1000


def test_converted_logits_equal_torchvisions_on_the_same_input(converted):
    reference, model, _ = converted
    images = np.random.default_rng(0).uniform(-2, 2, (2, 224, 224, 3)).astype("float32")
    expected = reference(torch.tensor(images).permute(0, 3, 1, 2)).detach().numpy()
    logits = np.asarray(model(images, training=False))
    np.testing.assert_allclose(logits, expected, atol=TOLERANCE)
    assert (np.argsort(-logits, axis=1)[:, :5] == np.argsort(-expected, axis=1)[:, :5]).all()


@pytest.mark.parametrize("size", [67, 150])
def test_the_weights_give_torchvisions_logits_at_smaller_inputs(converted, size):
    """Below 223 pixels the map before the adaptive pool is under 6x6 (1x1 at
    67, 3x3 at 150), which PyTorch repeats: fine-tuning ImageNet weights on
    small images computes what torchvision would."""
    reference, _, path = converted
    model = AlexNet(variant="torchvision", num_classes=1000, input_shape=(size, size, 3))
    state = torchvision_weights.read_state_dict(str(path))
    for name, values in torchvision_weights.keras_weights(state).items():
        model.get_layer(name).set_weights(values)
    images = np.random.default_rng(size).uniform(-2, 2, (2, size, size, 3)).astype("float32")
    expected = reference(torch.tensor(images).permute(0, 3, 1, 2)).detach().numpy()
    np.testing.assert_allclose(np.asarray(model(images, training=False)), expected,
                               atol=TOLERANCE)


def test_real_photos_preprocessed_both_ways_agree(converted):
    """scikit-learn's two sample photos (427x640), each framework's own
    preprocessing: the resizes differ (TensorFlow's bilinear has no
    antialiasing), so the logits agree less closely than on one input:
    measured 3.7% and 5.6% of the largest logit, correlation 0.9997 and
    0.9992, the same top-1."""
    reference, model, _ = converted
    for image in sklearn_datasets.load_sample_images().images:
        expected = reference(torchvision_preprocess(image)).detach().numpy()[0]
        logits = np.asarray(model(model.image_spec.preprocess(image)[None], training=False))[0]
        assert np.abs(logits - expected).max() < 0.1 * np.abs(expected).max()
        assert np.corrcoef(logits, expected)[0, 1] > 0.998
        assert logits.argmax() == expected.argmax()


def test_the_file_keeps_imagenets_class_names(converted, tmp_path):
    _, model, _ = converted
    assert model.class_names[:2] == ("tench", "goldfish") and len(model.class_names) == 1000
    path = tmp_path / "alexnet_imagenet.keras"
    assert torchvision_weights.main([str(converted[2]), "--output", str(path)]) == 0
    import keras

    loaded = keras.saving.load_model(path)
    assert loaded.class_names == model.class_names and loaded.variant == "torchvision"
    assert loaded.image_spec == model.image_spec


def test_another_class_count_converts_with_numbered_names(tmp_path):
    path = tmp_path / "ten.pth"
    torch.save(torchvision_alexnet(num_classes=10).state_dict(), path)
    model = torchvision_weights.from_state_dict(torchvision_weights.read_state_dict(str(path)))
    assert model.num_classes == 10 and model.class_names[9] == "class_9"


def test_files_that_are_not_torchvisions_alexnet_are_one_line(tmp_path):
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    wrong_shape = tmp_path / "wrong.pth"
    state = torchvision_alexnet().state_dict()
    state["features.3.weight"] = torch.zeros(256, 64, 5, 5)
    torch.save(state, wrong_shape)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickled)  # a module, not tensors
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    cases = {
        other: "it has no features.0.weight (its first key is 'conv1.weight')",
        wrong_shape: "features.3.weight has shape (256, 64, 5, 5), not (192, 64, 5, 5)",
        pickled: "is not a PyTorch state dict",
        text: "is not a PyTorch state dict",
        tmp_path: "is not a file",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError) as raised:
            torchvision_weights.from_state_dict(
                torchvision_weights.read_state_dict(str(path)), source=str(path))
        assert message in str(raised.value) and "\n" not in str(raised.value), str(raised.value)
