"""The shipped recipes (`recipes/*.json`): each is a valid partial config that
says what it reproduces, and each runs end to end from its file, on TFDS's mock
data for the TFDS sets it names and on the embedded digits otherwise."""

import dataclasses
import glob
import json
import os

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import testlib
from pipeline import config as config_lib
from pipeline.cli import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.json")))
# A few steps of each, at its own model, image size and optimizer.
FEW_STEPS = ["--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--no-ten-crop"]


def recipe_config(path):
    with open(path) as file:
        return config_lib.RunConfig.from_json(file.read(), source=path)


def test_the_recipes_are_the_ones_the_docs_list():
    names = [os.path.basename(path) for path in RECIPES]
    assert names == ["cifar10_notebook.json", "d2l_fashion_mnist.json", "default.json",
                     "paper_imagenet.json", "paper_imagenet_cluster.json",
                     "previous_default.json"]
    with open(os.path.join(ROOT, "docs", "training.md")) as file:
        docs = file.read()
    for name in names:
        assert f"recipes/{name}" in docs, name


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_each_recipe_is_a_partial_config_that_says_what_it_is(path):
    config = recipe_config(path)
    with open(path) as file:
        about = json.load(file)["about"]
    assert isinstance(about, str) and len(about) > 40
    assert config.train.epochs >= 2
    # What it reproduces does not move when the command's defaults do.
    with open(path) as file:
        pinned = json.load(file)
    assert {"optimizer", "learning_rate", "batch_size", "epochs", "lr_schedule",
            "warmup_epochs"} <= set(pinned["train"]) and "initializer" in pinned["model"]


def test_the_default_recipe_is_the_commands_default():
    """`recipes/default.json` spells out what the bare command trains with."""
    default = config_lib.RunConfig()
    recipe = recipe_config(os.path.join(ROOT, "recipes", "default.json"))
    assert recipe.model == default.model
    assert dataclasses.replace(recipe.train, output_dir=default.train.output_dir) == default.train


def test_a_recipe_with_a_field_the_config_does_not_know_is_refused(tmp_path, capsys):
    for text, field in (('{"train": {"epochs": 3, "warmup": 1}}', "train.warmup"),
                        ('{"trian": {"epochs": 3}, "model": {}}', "trian")):
        recipe = tmp_path / "recipe.json"
        recipe.write_text(text)
        with pytest.raises(SystemExit) as exited:
            cli.main("run", ["--config", str(recipe)])
        assert exited.value.code == 2
        error = capsys.readouterr().err.splitlines()[-1]
        assert error.startswith(f"python -m pipeline.run: error: {recipe} has ")
        assert f"does not know: {field}; remove them" in error


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_each_recipe_runs_end_to_end(path, tmp_path, digits_dir, monkeypatch, capsys):
    """A few steps of the recipe's own model, optimizer, schedule and image
    size, then evaluation and export, as `--config recipes/<name>.json`."""
    monkeypatch.chdir(tmp_path)
    config = recipe_config(path)
    argv = ["--config", path, *FEW_STEPS, "--output-dir", "run", "--export-dir", "models"]
    if config.data.data_service:
        # The recipe's dispatcher, here in this process, with one worker.
        service = tf.data.experimental.service
        dispatcher = service.DispatchServer()
        worker = service.WorkerServer(service.WorkerConfig(  # noqa: F841 (serves while alive)
            dispatcher_address=dispatcher.target.split("://")[1]))
        argv += ["--data-service", dispatcher.target]
    dataset = config.data.dataset
    if dataset.startswith("tfds:"):
        name = dataset.split(":", 1)[1]
        info = testlib.tfds_metadata(tmp_path / "tfds", name, {"train": 24, "test": 8})
        with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path / "tfds"),
                                    policy=tfds.testing.MockPolicy.USE_FILES):
            status = cli.main("run", [*argv, "--data-dir", str(tmp_path / "tfds")])
        num_classes = info.features["label"].num_classes
    else:
        status = cli.main("run", [*argv, "--ingest-dir", digits_dir])
        num_classes = 10
    assert status == 0, capsys.readouterr().err[-3000:]
    with open(tmp_path / "run" / "config.json") as file:
        recorded = json.load(file)
    # The run is the recipe's, but for the flags given beside it.
    with open(path) as file:
        pinned = json.load(file)
    for section in ("model", "train"):
        for key, value in pinned.get(section, {}).items():
            if f"--{key.replace('_', '-')}" not in argv:
                assert recorded[section][key] == value, (section, key)
    assert recorded["model"]["image_size"] == list(config.model.image_size or (67, 67))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["export_path"]
    assert len(metrics["confusion_matrix"]) == num_classes
