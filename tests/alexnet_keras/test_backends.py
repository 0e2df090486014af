"""The model on the JAX and PyTorch backends, against the TensorFlow backend.

Keras fixes its backend when it is imported, so JAX and PyTorch run in child
processes with KERAS_BACKEND set, and this process is the TensorFlow side. One
seeded paper AlexNet (67x67x3, with LRN), saved here as a `.keras` file, is
loaded, run, trained and saved again by each backend with the same code
(`backend_child.run`), and each backend loads the files of the others.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import backend_child
from alexnet_keras import AlexNet

BACKENDS = ("jax", "torch")
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "backend_child.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(CHILD)))

pytestmark = pytest.mark.slow


def run_child(backend, *arguments):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed; pip install -e '.[dev]' brings it")
    # This checkout first: the child must import the code under test.
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, CHILD, *arguments],
        env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    """seeded.keras, a seeded model saved by this (TensorFlow) process, and
    inputs.npz: images for the model, digits to train on, raw images to
    preprocess and an LRN input."""
    directory = tmp_path_factory.mktemp("backends")
    keras.utils.set_random_seed(0)
    # No dropout: its random draws differ between backends, and without it every
    # backend trains the same computation.
    model = AlexNet(variant="paper", num_classes=10, input_shape=(67, 67, 3), dropout_rate=0.0)
    model.save(directory / "seeded.keras")
    # scikit-learn's real 8x8 digits (0-16), as 0-255 RGB enlarged to the input.
    digits = load_digits()
    pixels = np.repeat(digits.images[:64, :, :, np.newaxis] * (255 / 16), 3, axis=-1)
    train_images = keras.ops.convert_to_numpy(model.image_spec.preprocess(pixels))
    rng = np.random.default_rng(0)
    raw = {
        f"raw{index}": rng.integers(0, 256, (*size, 3), np.uint8)
        for index, size in enumerate([(8, 8), (30, 41), (67, 67), (300, 120)])
    }
    np.savez(
        directory / "inputs.npz",
        images=train_images[:4],
        train_images=train_images,
        train_labels=digits.target[:64],
        lrn_input=rng.normal(0.0, 40.0, (2, 5, 5, 12)).astype("float32"),
        **raw,
    )
    return directory


@pytest.fixture(scope="module")
def results(work_dir):
    """What `backend_child.run` wrote on each backend, and the other backends'
    trained models as each one loaded them (`loads_<backend>`)."""
    run_child("torch", "run", str(work_dir))
    run_child("jax", "run", str(work_dir), "torch")
    run_child("torch", "load", str(work_dir), "jax")
    backend_child.run(str(work_dir), "jax", "torch")
    results = {
        backend: dict(np.load(work_dir / f"{backend}.npz"))
        for backend in ("tensorflow", *BACKENDS)
    }
    results["torch"]["loads_jax"] = np.load(work_dir / "torch-loads-jax.npz")["logits"]
    return results


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_pass_equals_tensorflow(results, backend):
    # Logits of about +-1; measured apart by at most 2e-6 (2026-11-23).
    np.testing.assert_allclose(
        results[backend]["logits"], results["tensorflow"]["logits"], rtol=1e-5, atol=1e-5
    )
    # The keras.ops LRN there, TensorFlow's LRN kernel here (outputs up to 47).
    np.testing.assert_allclose(
        results[backend]["lrn"], results["tensorflow"]["lrn"], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensorflow_is_never_imported(results, backend):
    # Not by loading, running, preprocessing or training the model.
    assert not results[backend]["tensorflow_imported"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_lowers_the_loss_as_on_tensorflow(results, backend):
    ours, tensorflow = results[backend], results["tensorflow"]
    # Eight Adam steps took TensorFlow's loss from 2.518 to 2.294, and the
    # others' to within 1e-6 of that: the gradients (of the LRN too) agree.
    assert ours["loss_after"] < 0.95 * ours["loss_before"]
    np.testing.assert_allclose(ours["loss_before"], tensorflow["loss_before"], rtol=1e-5)
    np.testing.assert_allclose(ours["loss_after"], tensorflow["loss_after"], rtol=1e-4)
    np.testing.assert_allclose(
        ours["trained_logits"], tensorflow["trained_logits"], rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_preprocess_equals_tensorflow(results, backend):
    for name in (name for name in results["tensorflow"] if name.startswith("raw")):
        # 0-255 scale; measured apart by at most 3e-5.
        np.testing.assert_allclose(
            results[backend][name], results["tensorflow"][name], atol=1e-4, err_msg=name
        )


@pytest.mark.parametrize("saver", BACKENDS)
def test_keras_files_load_under_every_backend(results, saver):
    for loader in ("tensorflow", *BACKENDS):
        if loader != saver:
            np.testing.assert_allclose(
                results[loader][f"loads_{saver}"], results[saver]["trained_logits"],
                rtol=1e-5, atol=1e-5, err_msg=loader,
            )
