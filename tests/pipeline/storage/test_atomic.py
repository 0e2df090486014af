"""Paths on file systems other than the local one, through `tf.io.gfile`: the
pipeline end to end on TensorFlow's in-memory `ram://`, and how a finished
output is published on each kind of file system."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import testlib
from pipeline.cli import main as cli
from pipeline.storage import atomic
from pipeline.training import models
from pipeline.config import ModelConfig


def _write(path, text):
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as file:
        file.write(text)


def _read(path):
    with tf.io.gfile.GFile(path) as file:
        return file.read()


def test_a_local_publish_is_one_rename_and_never_replaces(tmp_path):
    source, destination = str(tmp_path / ".tmp-a"), str(tmp_path / "1")
    _write(os.path.join(source, "variables", "x"), "new")
    inode = os.stat(os.path.join(source, "variables", "x")).st_ino
    assert atomic.publish(source, destination) is True
    assert not os.path.exists(source)
    # Renamed, not copied: the same file.
    assert os.stat(os.path.join(destination, "variables", "x")).st_ino == inode

    _write(os.path.join(source, "y"), "other")
    assert atomic.publish(source, destination) is False
    assert os.listdir(destination) == ["variables"]


def test_elsewhere_a_publish_copies_with_the_loading_files_last(monkeypatch):
    # ram:// names siblings that share a prefix ("assets", "assets.extra") as
    # each other's children; the copy must not be misled by it.
    source, destination = "ram://publish/.tmp-a", "ram://publish/1"
    files = {"saved_model.pb": "graph", "fingerprint.pb": "f", "variables/variables.index": "i",
             "assets/vocabulary": "v", "assets.extra/tf_serving_warmup_requests": "w"}
    for name, text in files.items():
        _write(os.path.join(source, name), text)
    copied = []
    copy = tf.io.gfile.copy
    monkeypatch.setattr(tf.io.gfile, "copy", lambda *args: copied.append(args[1]) or copy(*args))
    assert atomic.publish(source, destination, last=["saved_model.pb"]) is True
    assert {name: _read(os.path.join(destination, name)) for name in files} == files
    assert len(copied) == len(files) and copied[-1] == os.path.join(destination, "saved_model.pb")
    assert not tf.io.gfile.exists(os.path.join(source, "saved_model.pb"))
    assert atomic.publish(destination, destination, last=["saved_model.pb"]) is False


@pytest.mark.slow
def test_the_pipeline_runs_on_another_file_system(tmp_path, monkeypatch, capsys):
    # The working directory catches any path that was taken for a local one
    # ("ram:/runs/..." after an os.path.normpath).
    monkeypatch.chdir(tmp_path)
    argv = [
        "--ingest-dir", "ram://data/digits", "--output-dir", "ram://runs/one",
        "--export-dir", "ram://models/alexnet", "--cache", "ram://cache/digits",
        "--tune", "random", "--max-trials", "1", "--tune-epochs", "1",
        "--tune-dir", "ram://tuning/search", "--export-format", "keras",
        "--export-format", "litert", "--export-format", "litert_int8",
        "--epochs", "2", "--image-size", "67", "--batch-size", "16", "--steps-per-epoch", "3",
    ]
    assert cli.main("run", argv) == 0
    assert os.listdir(tmp_path) == []
    run_dir = "ram://runs/one"
    assert {os.path.basename(path) for path in tf.io.gfile.glob(f"{run_dir}/*")} >= {
        "config.json", "history.csv", "metrics.json", "training_curves.png",
        "confusion_matrix.png", "best_hparams.json", "model.keras", "model.tflite",
        "model_int8.tflite", "checkpoints", "logs",
    }
    metrics = json.loads(_read(f"{run_dir}/metrics.json"))
    assert metrics["export_path"] == "ram://models/alexnet/1"
    assert metrics["litert_path"] == f"{run_dir}/model.tflite"
    # Scored in its runtime from a local copy of the file.
    assert 0 <= metrics["int8_test_accuracy"]["litert_int8"] <= 1
    assert [row.split(",")[0] for row in _read(f"{run_dir}/history.csv").split()] == [
        "epoch", "1", "2"]
    assert tf.io.gfile.glob("ram://cache/digits-train-*.index")
    assert tf.io.gfile.exists("ram://tuning/search/oracle.json")
    assert tf.io.gfile.exists("ram://data/digits/manifest.json")

    # The export loads the way TF Serving loads it, from where it was pushed.
    export = testlib.ServingSession(metrics["export_path"])
    image = tf.io.encode_png(np.full((8, 8, 1), 200, np.uint8)).numpy()
    outputs = export.run({"image_bytes": np.array([image])})
    export.close()
    assert outputs["probabilities"].shape == (1, 10)
    assert outputs["probabilities"].sum() == pytest.approx(1.0, abs=1e-4)
    # So does the LiteRT file, brought back from where it was written.
    tflite = str(tmp_path / "model.tflite")
    tf.io.gfile.copy(metrics["litert_path"], tflite)
    # The run's own input, as pipeline.run built its model.
    image_spec = models.build_model(ModelConfig(image_size=(67, 67), channels=1), 10).image_spec
    logits = testlib.RUNTIMES["litert"](tflite, testlib.preprocessed([image], image_spec))
    np.testing.assert_allclose(tf.nn.softmax(logits), outputs["probabilities"],
                               atol=testlib.RUNTIME_TOLERANCE)

    # Run again with the hyperparameters found: the run on ram:// is complete.
    # (Not with --tune again: keras-tuner rewrites its oracle.json in place,
    # and ram://'s write mode appends to a file instead of replacing it.)
    capsys.readouterr()
    tuning = argv.index("--tune")
    again = argv[:tuning] + ["--hparams", f"{run_dir}/best_hparams.json"] + argv[tuning + 8:]
    assert cli.main("run", again) == 0
    assert "Epoch" not in capsys.readouterr().out
    assert tf.io.gfile.listdir("ram://models/alexnet") == ["1"]
