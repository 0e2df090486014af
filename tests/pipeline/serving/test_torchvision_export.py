"""torchvision's ImageNet AlexNet, converted and exported for TF Serving in one
command each, answers as torchvision's network does."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from sklearn import datasets as sklearn_datasets

import testlib
from alexnet_keras import torchvision_weights
from pipeline.cli import main as cli
from pipeline.data import preprocess_ops

torch = pytest.importorskip("torch")
from torch_reference import torchvision_alexnet  # noqa: E402


@pytest.fixture(scope="module")
def converted_file(tmp_path_factory):
    """A .keras file converted from a randomly initialised torchvision AlexNet
    saved as its published .pth is, and the torch network itself."""
    directory = tmp_path_factory.mktemp("torchvision")
    reference = torchvision_alexnet(seed=1)
    torch.save(reference.state_dict(), directory / "alexnet-owt-random.pth")
    command = [sys.executable, "-m", "alexnet_keras.torchvision_weights",
               str(directory / "alexnet-owt-random.pth"), "--output",
               str(directory / "alexnet_imagenet.keras")]
    subprocess.run(command, check=True, capture_output=True, cwd=testlib.REPO)
    return reference, str(directory / "alexnet_imagenet.keras")


@pytest.mark.slow
def test_the_exported_imagenet_model_answers_as_torchvision(converted_file, tmp_path):
    reference, keras_file = converted_file
    export_dir = str(tmp_path / "alexnet")
    assert cli.main("export", [keras_file, "--export-dir", export_dir]) == 0
    served = testlib.ServingSession(f"{export_dir}/1")
    try:
        photos = sklearn_datasets.load_sample_images().images
        encoded = [tf.io.encode_jpeg(photo, quality=95).numpy() for photo in photos]
        answers = served.run({"image_bytes": encoded})
        spec = torchvision_weights.from_state_dict(
            {key: value.numpy() for key, value in reference.state_dict().items()}
        ).image_spec
        names = np.array(torchvision_weights.imagenet_class_names())
        for index, image_bytes in enumerate(encoded):
            # The same decoded and cropped pixels into torchvision's network.
            pixels = preprocess_ops.preprocess_for_eval(
                preprocess_ops.decode_image(image_bytes, 3), spec).numpy()
            logits = reference(torch.tensor(pixels[None]).permute(0, 3, 1, 2))
            top5 = names[np.argsort(-logits.detach().numpy()[0])[:5]]
            assert answers["valid"][index]
            assert [name.decode() for name in answers["top_k_class_name"][index]] == list(top5)
            probabilities = torch.softmax(logits, -1).detach().numpy()[0]
            np.testing.assert_allclose(answers["probabilities"][index], probabilities,
                                       atol=1e-6)
        assert answers["probabilities"].shape == (2, 1000)
    finally:
        served.close()


def test_export_refuses_what_is_not_a_keras_alexnet(tmp_path, capsys):
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    cases = {
        str(text): "cannot be read as a Keras model",
        str(tmp_path / "missing.keras"): "is not a file",
        str(tmp_path / "model.h5"): "is not a .keras file",
    }
    for path, message in cases.items():
        assert cli.main("export", [path, "--export-dir", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err
        assert error.startswith("python -m pipeline.export: error: ")
        assert message in error and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()
