"""Warm starts (`--init-from`, `--freeze`): every kind of source, the new fc8,
the error for another architecture, and a fine-tuning run end to end."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import crafted_models
import testlib
from alexnet_keras import AlexNet
from pipeline import config as config_lib
from pipeline.cli import main as cli
from pipeline.serving import builder
from pipeline.training import warm_start
from pipeline.errors import PipelineError

FEATURE_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def small_model(num_classes, seed, **kwargs):
    keras.utils.set_random_seed(seed)
    kwargs.setdefault("input_shape", (67, 67, 1))
    return AlexNet(num_classes=num_classes, **kwargs)


def weights_of(model, names):
    return {name: [w.copy() for w in model.get_layer(name).get_weights()] for name in names}


def assert_same(first, second):
    assert first.keys() == second.keys()
    for name in first:
        for a, b in zip(first[name], second[name], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_keras_file_loads_up_to_fc7_when_the_classes_differ(tmp_path):
    source = small_model(6, seed=1)
    source.save(tmp_path / "source.keras")
    target = small_model(4, seed=2)
    head = target.get_layer("fc8").get_weights()

    started = warm_start.load(target, str(tmp_path / "source.keras"))

    assert started.loaded == FEATURE_LAYERS and started.new == ("fc8",)
    assert_same(weights_of(target, FEATURE_LAYERS), weights_of(source, FEATURE_LAYERS))
    for before, after in zip(head, target.get_layer("fc8").get_weights()):
        np.testing.assert_array_equal(before, after)


def test_an_export_loads_whole_when_the_classes_match(tmp_path):
    source = small_model(3, seed=1)
    builder.export_saved_model(source, ["a", "b", "c"], str(tmp_path / "models"))
    target = small_model(3, seed=2)

    # The base directory stands for its newest version.
    started = warm_start.load(target, str(tmp_path / "models"))

    assert started.loaded == (*FEATURE_LAYERS, "fc8") and started.new == ()
    images = np.random.default_rng(0).uniform(-100, 100, (2, 67, 67, 1)).astype("float32")
    np.testing.assert_array_equal(target.predict(images, verbose=0),
                                  source.predict(images, verbose=0))


def test_an_export_records_its_variant(tmp_path):
    builder.export_saved_model(small_model(3, seed=1), ["a", "b", "c"], str(tmp_path / "models"))
    with pytest.raises(PipelineError, match="is a 'paper' AlexNet and this run trains a 'd2l'"):
        warm_start.load(small_model(3, seed=2, variant="d2l"), str(tmp_path / "models"))


def test_a_source_of_another_pixel_scale_is_refused(tmp_path):
    """Weights learnt on 0-255 pixels (the paper's initialisation) do not fit
    a model fed [-1, 1] ones (He's): every kind of source says which
    initializer to use; the same scale loads."""
    source = small_model(3, seed=1, initializer="paper")
    source.save(tmp_path / "source.keras")
    builder.export_saved_model(source, ["a", "b", "c"], str(tmp_path / "models"))
    run_dir = tmp_path / "run"
    tf.train.Checkpoint(model=source).write(str(run_dir / "checkpoints" / "ckpt-1"))
    (run_dir / "checkpoints" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
    (run_dir / "config.json").write_text(json.dumps({"model": {
        "initializer": "paper", "image_size": [67, 67], "channels": 1}}))
    for path in ("source.keras", "models", "run"):
        with pytest.raises(PipelineError) as raised:
            warm_start.load(small_model(3, seed=2, initializer="he"), str(tmp_path / path))
        assert str(raised.value) == (
            f"`init_from` {tmp_path / path} takes pixels scaled by 1.0 (initializer='paper') "
            "and this run's model by 0.007843 (initializer='he'); use initializer='paper', "
            "as the source did")
        assert warm_start.load(small_model(3, seed=2), str(tmp_path / path)).new == ()


@pytest.mark.parametrize("kind", ["tf2", "tf1"])
def test_a_savedmodel_that_runs_code_when_loaded_is_refused_unrun(tmp_path, kind):
    path, marker = crafted_models.dangerous(kind, str(tmp_path / kind))
    with pytest.raises(PipelineError) as error:
        warm_start.source_weights(path)
    message = str(error.value)
    assert message.startswith(f"`init_from` {path} is not a SavedModel this package exported")
    assert message.endswith("; pass a .keras file, a run directory or a SavedModel this "
                            "package exported")
    assert "\n" not in message and not os.path.exists(marker)


@pytest.mark.parametrize("kind", ["tf2", "tf1"])
def test_init_from_a_savedmodel_that_runs_code_when_loaded_fails_in_one_line(
        tmp_path, digits_dir, capsys, kind):
    path, marker = crafted_models.dangerous(kind, str(tmp_path / kind))
    argv = ["--ingest-dir", digits_dir, "--output-dir", str(tmp_path / "run"),
            "--export-dir", str(tmp_path / "models"), "--image-size", "67",
            "--batch-size", "16", "--steps-per-epoch", "1", "--epochs", "1",
            "--init-from", path]
    assert cli.main("run", argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"python -m pipeline.run: error: --init-from {path} is not a "
                            "SavedModel this package exported")
    assert error.count("\n") == 1 and not os.path.exists(marker)
    assert not (tmp_path / "models").exists()


def test_a_run_directory_loads_its_newest_checkpoint(tmp_path):
    source = small_model(5, seed=1, normalization="batchnorm")
    run_dir = tmp_path / "run"
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=source), str(run_dir / "checkpoints"), max_to_keep=2
    )
    manager.save(checkpoint_number=1)
    source.get_layer("conv3").kernel.assign(source.get_layer("conv3").kernel * 2)
    manager.save(checkpoint_number=2)
    # The source is AlexNet's own default, the paper's initialisation.
    model_config = config_lib.ModelConfig(normalization="batchnorm", image_size=(67, 67),
                                          channels=1, initializer="paper")
    (run_dir / "config.json").write_text(json.dumps(
        {"model": dataclasses.asdict(config_lib.RunConfig(model=model_config).model)}
    ))
    target = small_model(5, seed=2, normalization="batchnorm")

    started = warm_start.load(target, str(run_dir))

    batchnorms = tuple(f"bn{index}" for index in range(1, 6))
    assert set(started.loaded) == {*FEATURE_LAYERS, *batchnorms, "fc8"}
    assert_same(weights_of(target, started.loaded), weights_of(source, started.loaded))


@pytest.mark.parametrize("kwargs, mismatch", [
    ({"input_shape": (67, 67, 3)}, "conv1/kernel has shape (11, 11, 1, 96) there and "
                                   "shape (11, 11, 3, 96) here"),
    ({"input_shape": (100, 100, 1)}, "fc6/kernel has shape (256, 4096) there and "
                                     "shape (1024, 4096) here"),
    ({"variant": "d2l"}, "is a 'paper' AlexNet and this run trains a 'd2l' one"),
    ({"normalization": "batchnorm"}, "bn1/gamma has no such weight there"),
])
def test_another_architecture_is_one_line_naming_the_first_mismatch(tmp_path, kwargs,
                                                                    mismatch):
    small_model(6, seed=1).save(tmp_path / "source.keras")
    target = small_model(6, seed=2, **kwargs)
    with pytest.raises(PipelineError) as error:
        warm_start.load(target, str(tmp_path / "source.keras"))
    assert mismatch in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("path, message", [
    ("missing.keras", "does not exist"),
    ("missing", "neither a .keras file, a .pth state dict nor a directory"),
    (".", "without a run's checkpoints"),
])
def test_a_bad_source_is_named(tmp_path, monkeypatch, path, message):
    monkeypatch.chdir(tmp_path)
    os.makedirs("checkpoints")
    with pytest.raises(PipelineError, match=message):
        warm_start.load(small_model(2, seed=1), path)


def test_freeze_keeps_the_layers_up_to_the_one_named():
    model = small_model(2, seed=1)
    warm_start.freeze(model, "conv5")
    trainable = {variable.path.split("/")[0] for variable in model.trainable_variables}
    assert trainable == {"fc6", "fc7", "fc8"}


@pytest.mark.parametrize("settings, message", [
    ({"freeze": "conv5"}, "give `init_from` too"),
    ({"freeze": "fc8", "init_from": "x.keras"}, "`freeze` must be one of conv1, conv2"),
])
def test_freeze_settings_are_checked(settings, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.TrainConfig(**settings)


def write_digit_folder(root, digits):
    """The embedded digits of the classes `digits` as PNG files in class folders."""
    data = load_digits()
    for index, (image, label) in enumerate(zip(data.images, data.target)):
        if label in digits:
            os.makedirs(root / str(label), exist_ok=True)
            pixels = (image * 255 / 16).astype(np.uint8)[..., np.newaxis]
            (root / str(label) / f"{index}.png").write_bytes(testlib.encode(pixels, "png"))


@pytest.mark.slow
def test_fine_tuning_on_other_classes_moves_only_the_unfrozen_layers(tmp_path):
    """Trains on digits 0-5, fine-tunes on 6-9 from that run with conv1-fc6
    frozen: those equal the source's, fc7 moved and fc8 is new."""
    write_digit_folder(tmp_path / "first", range(0, 6))
    write_digit_folder(tmp_path / "second", range(6, 10))
    common = ["--image-size", "67", "--batch-size", "16", "--steps-per-epoch", "3",
              "--epochs", "1", "--export-dir", str(tmp_path / "models")]

    def run(*flags):
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.run", *common, *flags], capture_output=True,
            text=True, env=testlib.child_env(), timeout=900, cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    run("--dataset", f"folder:{tmp_path / 'first'}", "--output-dir", "first")
    run("--dataset", f"folder:{tmp_path / 'second'}", "--output-dir", "second",
        "--init-from", "first", "--freeze", "fc6", "--export-format", "keras")

    source = warm_start.source_weights(str(tmp_path / "first"))[0]
    tuned = keras.saving.load_model(tmp_path / "second" / "model.keras")
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6"):
        for weight in tuned.get_layer(name).weights:
            np.testing.assert_array_equal(weight.numpy(), source[weight.path], weight.path)
    assert not np.array_equal(tuned.get_layer("fc7").kernel.numpy(), source["fc7/kernel"])
    assert tuned.get_layer("fc8").kernel.shape == (4096, 4)
    assert source["fc8/kernel"].shape == (4096, 6)
    metrics = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert metrics["warm_start"] == {"source": "first", "loaded": list(FEATURE_LAYERS),
                                     "new": ["fc8"]}


@pytest.fixture(scope="module")
def imagenet_pth(tmp_path_factory):
    """A torchvision AlexNet with random weights saved as its published
    ImageNet file is (the same keys and shapes as alexnet-owt-7be5be79.pth),
    and the state dict itself."""
    torch = pytest.importorskip("torch")
    from torch_reference import torchvision_alexnet

    path = tmp_path_factory.mktemp("pth") / "alexnet-owt-random.pth"
    state = torchvision_alexnet(seed=3).state_dict()
    torch.save(state, path)
    return path, {key: value.numpy() for key, value in state.items()}


def test_a_torchvision_pth_loads_up_to_fc7_in_keras_layouts(imagenet_pth):
    path, state = imagenet_pth
    # Another input size and class count than ImageNet's: the adaptive pool
    # keeps fc6's input at 6x6x256, so every feature layer fits.
    target = small_model(4, seed=2, variant="torchvision", input_shape=(67, 67, 3))
    started = warm_start.load(target, str(path))
    assert started.loaded == FEATURE_LAYERS and started.new == ("fc8",)
    np.testing.assert_array_equal(target.get_layer("conv2").kernel.numpy(),
                                  state["features.3.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(target.get_layer("fc7").kernel.numpy(),
                                  state["classifier.4.weight"].T)
    # fc6's rows from PyTorch's (c, h, w) flatten to Keras' (h, w, c) one.
    fc6 = state["classifier.1.weight"].reshape(4096, 256, 6, 6)
    np.testing.assert_array_equal(target.get_layer("fc6").kernel.numpy()[(2 * 6 + 5) * 256 + 7],
                                  fc6[:, 7, 2, 5])


def test_a_pth_for_another_variant_or_not_alexnet_is_one_line(imagenet_pth, tmp_path):
    torch = pytest.importorskip("torch")
    path, _ = imagenet_pth
    with pytest.raises(PipelineError) as error:
        warm_start.load(small_model(4, seed=2, input_shape=(67, 67, 3)), str(path))
    assert str(error.value) == (
        f"`init_from` {path} is a 'torchvision' AlexNet and this run trains a 'paper' one; "
        "use variant='torchvision' or another source")
    torch.save({"fc.weight": torch.zeros(3, 4)}, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip or a pickle")
    for name, message in (
        ("other.pth", "is not torchvision's AlexNet: it has no features.0.weight "
                      "(its first key is 'fc.weight')"),
        ("junk.pth", "is not a PyTorch state dict"),
        ("missing.pth", "is not a file; pass torchvision's alexnet-owt-*.pth"),
    ):
        target = small_model(4, seed=2, variant="torchvision", input_shape=(67, 67, 3))
        with pytest.raises(PipelineError) as error:
            warm_start.load(target, str(tmp_path / name))
        assert str(error.value).startswith(f"`init_from` {tmp_path / name} ")
        assert message in str(error.value) and "\n" not in str(error.value)


def test_freeze_names_a_layer_the_model_lacks():
    with pytest.raises(PipelineError, match=r"`freeze` bn1 is not a layer of this 'paper' "
                                            r"AlexNet; use one of conv1, conv2, .*, fc7$"):
        warm_start.freeze(small_model(2, seed=1), "bn1")


@pytest.mark.slow
def test_fine_tuning_imagenet_features_from_the_pth(imagenet_pth, tmp_path):
    """The issue's command: --init-from the .pth --variant torchvision --freeze
    conv5 on a folder of photos (here digits as colour PNGs, 67x67)."""
    path, state = imagenet_pth
    write_digit_folder(tmp_path / "photos", range(0, 3))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--init-from", str(path),
         "--variant", "torchvision", "--freeze", "conv5", "--dataset",
         f"folder:{tmp_path / 'photos'}", "--channels", "3", "--image-size", "67",
         "--batch-size", "8", "--steps-per-epoch", "2", "--epochs", "1", "--no-ten-crop",
         "--export-format", "keras", "--export-dir", str(tmp_path / "models"),
         "--output-dir", "tuned"],
        capture_output=True, text=True, env=testlib.child_env(), timeout=900, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tuned = keras.saving.load_model(tmp_path / "tuned" / "model.keras")
    np.testing.assert_array_equal(tuned.get_layer("conv5").kernel.numpy(),
                                  state["features.10.weight"].transpose(2, 3, 1, 0))
    assert not np.array_equal(tuned.get_layer("fc7").kernel.numpy(),
                              state["classifier.4.weight"].T)
    assert tuned.get_layer("fc8").kernel.shape == (4096, 3)
    metrics = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    assert metrics["warm_start"] == {"source": str(path), "loaded": list(FEATURE_LAYERS),
                                     "new": ["fc8"]}
    assert metrics["export_path"] and "test_ten_crop_accuracy" not in metrics


def test_sources_that_are_not_what_they_claim_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import zipfile

    with zipfile.ZipFile("junk.keras", "w") as archive:
        archive.writestr("a.txt", "not a model")
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save("lambda.keras")
    os.makedirs("no_model/checkpoints")
    (tmp_path / "no_model" / "checkpoints" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-1"')
    (tmp_path / "no_model" / "checkpoints" / "ckpt-1.index").write_bytes(b"xx")
    (tmp_path / "no_model" / "config.json").write_text(json.dumps({"train": {}}))
    shutil.copytree("no_model", "truncated")
    (tmp_path / "truncated" / "config.json").write_text(json.dumps(
        {"model": {"variant": "paper", "image_size": [99999, 99999], "channels": 1}}))
    for path, message in (
        ("junk.keras", "cannot be read as a Keras model (\"There is no item named "
                       "'config.json' in the archive\")"),
        ("lambda.keras", "cannot be read as a Keras model"),
        ("no_model", "no_model/config.json has no `model` settings"),
        # Its config names a 99999x99999 image: nothing that size is built.
        ("truncated", "truncated/checkpoints/ckpt-1 cannot be read as a run's checkpoint"),
    ):
        with pytest.raises(PipelineError) as error:
            warm_start.load(small_model(2, seed=1), path)
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
