"""Hyperparameter search with keras-tuner through `python -m pipeline.run --tune`."""

import glob
import json
import os
import socket
import subprocess
import sys
import time

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

import testlib
from alexnet_keras import AlexNet
from pipeline.cli import main as cli
from pipeline.data import ingested_dataset
from pipeline.data import input_pipeline
from pipeline.tuning import tuner
from pipeline.training import warm_start
from pipeline.errors import ConfigError
from pipeline.config import ModelConfig
from pipeline.config import RunConfig
from pipeline.config import TrainConfig
from pipeline.config import TuneConfig

# A small space, so trials take seconds: batch 16 keeps 3 steps cheap.
SMALL_SPACE = {
    "batch_size": [16],
    "learning_rate": {"min": 1e-5, "max": 1e-3, "sampling": "log"},
    "optimizer": ["adam"],
}
TINY = ["--image-size", "67", "--steps-per-epoch", "3", "--epochs", "1",
        "--batch-size", "16"]


@pytest.fixture()
def space_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SMALL_SPACE))
    return str(path)


def read_trials(tune_dir):
    """The `trial.json` of every trial of a search."""
    trials = []
    for path in glob.glob(os.path.join(tune_dir, "trial_*", "trial.json")):
        with open(path) as file:
            trials.append(json.load(file))
    return trials


def trial_states(tune_dir):
    return {trial["trial_id"]: trial["status"] for trial in read_trials(tune_dir)}


@pytest.mark.parametrize("hyperband_epochs", [None, 1])
def test_a_trials_cosine_schedule_decays_over_the_epochs_the_trial_trains(
    digits_dir, hyperband_epochs
):
    ingested = ingested_dataset.IngestedDataset.load(digits_dir)
    config = RunConfig(
        model=ModelConfig(image_size=(67, 67), channels=1),
        train=TrainConfig(epochs=10, lr_schedule="cosine", batch_size=32),
        tune=TuneConfig(tune_epochs=2),
    )
    strategy = tf.distribute.get_strategy()
    hypermodel = tuner.AlexNetHyperModel(config, SMALL_SPACE, strategy, ingested)
    hp = keras_tuner.HyperParameters()
    if hyperband_epochs:
        hp.Fixed("tuner/epochs", hyperband_epochs)
    optimizer = hypermodel.build(hp).optimizer
    # SMALL_SPACE's batch.
    steps = input_pipeline.steps_per_epoch(TrainConfig(batch_size=16), ingested, 1)
    trial_epochs = hyperband_epochs or 2
    # After the run's warm-up (half an epoch), the cosine spans the rest.
    warmup = round(config.train.warmup_epochs * steps)
    assert optimizer._learning_rate.warmup_steps == warmup
    assert optimizer._learning_rate.decay_steps == trial_epochs * steps - warmup


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "bayesian", "hyperband"])
def test_each_tuner_completes_and_the_final_model_uses_the_winner(
    tmp_path, digits_dir, space_file, kind
):
    run_dir = tmp_path / "run"
    argv = ["--tune", kind, "--max-trials", "2", "--tune-epochs", "2",
            "--tune-space", space_file, "--ingest-dir", digits_dir,
            "--output-dir", str(run_dir), "--export-dir", str(tmp_path / "models"), *TINY]
    assert cli.main("run", argv) == 0
    best = json.loads((run_dir / "best_hparams.json").read_text())
    assert best["objective"] == "val_accuracy"
    assert 0.0 <= best["score"] <= 1.0
    hparams = best["hyperparameters"]
    assert hparams["batch_size"] == 16 and hparams["optimizer"] == "adam"
    assert 1e-5 <= hparams["learning_rate"] <= 1e-3
    assert round(hparams["dropout_rate"], 6) in (0.3, 0.4, 0.5, 0.6, 0.7)
    assert hparams["normalization"] in ("lrn", "batchnorm", "none")
    states = trial_states(run_dir / "tuning")
    assert states and set(states.values()) == {"COMPLETED"}
    if kind != "hyperband":
        assert len(states) == 2
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["learning_rate"] == hparams["learning_rate"]
    assert config["model"]["normalization"] == hparams["normalization"]
    assert (run_dir / "tuning_trials.png").stat().st_size > 5_000
    assert (tmp_path / "models" / "1" / "saved_model.pb").exists()
    # Every trial and the final run are sessions of TensorBoard's HParams
    # dashboard: their hyperparameters (a trial's, without Hyperband's own
    # `tuner/` values), and Keras' scalars beneath them.
    for trial in read_trials(run_dir / "tuning"):
        trial_logs = run_dir / "tuning" / "logs" / trial["trial_id"] / "execution0"
        assert testlib.tensorboard_hparams(trial_logs) == {
            name: value for name, value in trial["hyperparameters"]["values"].items()
            if not name.startswith("tuner/")
        }
        validation = testlib.tensorboard_scalars(trial_logs / "validation")["epoch_accuracy"]
        assert max(validation.values()) == pytest.approx(trial["score"], rel=1e-6)
        assert testlib.tensorboard_scalars(trial_logs / "train").keys() == {
            "epoch_loss", "epoch_accuracy", "epoch_learning_rate", "epoch_images_per_second"
        }
    assert testlib.tensorboard_hparams(run_dir / "logs") == {
        **hparams, "lr_schedule": "cosine", "variant": "paper", "initializer": "he"
    }
    assert testlib.tensorboard_scalars(run_dir / "logs" / "validation")["epoch_accuracy"]


def test_hparams_file_trains_without_a_search(tmp_path, digits_dir):
    hparams = {"learning_rate": 3e-4, "optimizer": "sgd", "dropout_rate": 0.3,
               "batch_size": 16, "normalization": "batchnorm", "weight_decay": 5e-4}
    path = tmp_path / "best_hparams.json"
    path.write_text(json.dumps({"hyperparameters": hparams}))
    run_dir = tmp_path / "run"
    argv = ["--hparams", str(path), "--ingest-dir", digits_dir, "--output-dir", str(run_dir),
            "--export-dir", str(tmp_path / "models"), *TINY]
    assert cli.main("run", argv) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["optimizer"] == "sgd"
    assert config["train"]["weight_decay"] == 5e-4
    assert config["model"]["normalization"] == "batchnorm"
    assert config["model"]["dropout_rate"] == 0.3
    assert not (run_dir / "tuning").exists()
    # TensorBoard: the run's hyperparameters for the HParams dashboard, its one
    # epoch at step 0, the test accuracy beside it, and the pictures.
    logs = run_dir / "logs"
    assert testlib.tensorboard_hparams(logs) == {
        **hparams, "lr_schedule": "cosine", "variant": "paper", "initializer": "he"
    }
    for split in ("train", "validation"):
        assert testlib.tensorboard_scalars(logs / split)["epoch_accuracy"].keys() == {0}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert testlib.tensorboard_scalars(logs / "test") == {
        "epoch_accuracy": {0: pytest.approx(metrics["test_accuracy"], rel=1e-6)},
        "epoch_ten_crop_accuracy": {0: pytest.approx(metrics["test_ten_crop_accuracy"],
                                                     rel=1e-6)},
    }
    assert testlib.tensorboard_images(logs / "test").keys() == {"confusion_matrix"}
    assert testlib.tensorboard_images(logs / "train").keys() == {"conv1_kernels"}


def test_bad_tuning_input_is_a_clear_error(tmp_path):
    (tmp_path / "space.json").write_text(json.dumps({"momentum": [0.9]}))
    with pytest.raises(ConfigError, match="unknown hyperparameters \\['momentum'\\]"):
        tuner.load_space(str(tmp_path / "space.json"))
    with pytest.raises(ConfigError, match="cannot read `hparams` .*missing.json"):
        tuner.load_hparams(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="unknown hyperparameters"):
        tuner.apply_hparams(RunConfig(), {"epochs": 3})
    config = tuner.apply_hparams(RunConfig(), {"learning_rate": 0.01, "normalization": "none"})
    assert config.train.learning_rate == 0.01 and config.model.normalization == "none"


@pytest.mark.parametrize("space, message", [
    ({"batch_size": ["64"]}, "`batch_size`'s choice must be an integer. Received: \"64\""),
    ({"batch_size": {"min": 16, "max": 32.5}}, "`batch_size`'s max must be an integer"),
    ({"learning_rate": [True]}, "`learning_rate`'s choice must be a number. Received: true"),
    ({"learning_rate": [-1.0]}, "`learning_rate` must be positive"),
    ({"dropout_rate": {"min": 0.3, "max": 1.5}}, "`dropout_rate` must be in [0, 1)"),
    ({"optimizer": None}, "`optimizer` must be a list of choices or a"),
    ({"optimizer": []}, "`optimizer` lists no choices"),
    ({"optimizer": ["lamb"]}, "`optimizer` must be one of sgd, adam"),
    ({"learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "cubic"}},
     "sampling must be one of linear, log, reverse_log"),
    ([1, 2], "must hold a JSON object. Received: [1, 2]"),
])
def test_a_tune_space_is_checked_like_the_flags(tmp_path, space, message):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    with pytest.raises(ConfigError) as error:
        tuner.load_space(str(path))
    assert str(error.value).startswith(f"tune_space={path}")
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("content, message", [
    ({"hyperparameters": {"batch_size": "3"}}, "`batch_size` must be an integer. Received: \"3\""),
    ({"hyperparameters": {"batch_size": 2.5}}, "`batch_size` must be an integer. Received: 2.5"),
    ({"hyperparameters": {"dropout_rate": 1.5}}, "`dropout_rate` must be in [0, 1)"),
    ({"hyperparameters": None}, "has no \"hyperparameters\" object"),
    ([1], "must hold a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "is not JSON (nested too deeply)"),
    (b'{"hyperparameters": {"optimizer": "\xe9"}}', "is not UTF-8 text"),
])
def test_an_hparams_file_is_checked_like_the_flags(tmp_path, content, message):
    path = tmp_path / "best_hparams.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError) as error:
        tuner.tuned_config(RunConfig(tune=TuneConfig(hparams=str(path))), None, None, None)
    assert str(path) in str(error.value)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bad_hparams_file_is_one_line_and_exit_2_from_the_command(tmp_path, digits_dir):
    path = tmp_path / "best_hparams.json"
    path.write_text(json.dumps({"hyperparameters": {"epochs": 3}}))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--ingest-dir", digits_dir, "--hparams",
         str(path), "--output-dir", str(tmp_path / "run"), *TINY],
        capture_output=True, text=True, env=testlib.child_env(), timeout=600)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"python -m pipeline.run: error: --hparams {path}: unknown hyperparameters ['epochs']; "
        "known: dropout_rate, normalization, batch_size, optimizer, learning_rate, weight_decay")


def test_trials_start_from_init_from_with_the_frozen_layers_fixed(
    tmp_path, digits_dir, monkeypatch
):
    """A fine-tuning run's trials start where its final training will."""
    ingested = ingested_dataset.IngestedDataset.load(digits_dir)
    keras.utils.set_random_seed(1)
    source = AlexNet(num_classes=6, input_shape=(67, 67, 1), initializer="he")
    source.save(tmp_path / "source.keras")
    config = RunConfig(
        model=ModelConfig(image_size=(67, 67), channels=1),
        train=TrainConfig(init_from=str(tmp_path / "source.keras"), freeze="conv5"),
    )
    reads = []
    read = warm_start.source_weights
    monkeypatch.setattr(warm_start, "source_weights",
                        lambda path: reads.append(path) or read(path))
    hypermodel = tuner.AlexNetHyperModel(config, SMALL_SPACE, tf.distribute.get_strategy(),
                                         ingested)
    models = [hypermodel.build(keras_tuner.HyperParameters()) for _ in range(2)]

    assert reads == [str(tmp_path / "source.keras")]
    convolutions = ["conv1", "conv2", "conv3", "conv4", "conv5"]
    for model in models:
        for name in (*convolutions, "fc6", "fc7"):
            for mine, theirs in zip(model.get_layer(name).weights,
                                    source.get_layer(name).weights, strict=True):
                np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), name)
        assert [layer.name for layer in model.layers
                if layer.weights and not layer.trainable] == convolutions
        # The optimizer moves only what is not frozen: fc6-fc8's kernels and biases.
        assert len(model.optimizer._trainable_variables) == 6


def test_a_search_from_init_from_keeps_the_sources_normalization(tmp_path):
    config = RunConfig(train=TrainConfig(init_from="runs/first"))
    without = {name: spec for name, spec in tuner.DEFAULT_SPACE.items()
               if name != "normalization"}
    assert tuner._space_from(tuner.load_space(), config, None) == without
    (tmp_path / "space.json").write_text(json.dumps({"normalization": ["lrn", "none"]}))
    searched = tuner.load_space(str(tmp_path / "space.json"))
    with pytest.raises(ConfigError, match="searches `normalization`, which `init_from` "
                                          "fixes to runs/first's; remove it"):
        tuner._space_from(searched, config, str(tmp_path / "space.json"))


def _flags(tmp_path, digits_dir, space_file, *flags):
    return ["--ingest-dir", digits_dir, "--tune-space", space_file,
            "--export-dir", str(tmp_path / "models"), "--tune-dir", str(tmp_path / "search"),
            *TINY, *flags]


def _command(tmp_path, digits_dir, space_file, *flags):
    return [sys.executable, "-m", "pipeline.run",
            *_flags(tmp_path, digits_dir, space_file, *flags)]


@pytest.mark.slow
def test_an_interrupted_search_resumes_instead_of_starting_over(
    tmp_path, tmp_path_factory, digits_dir, space_file
):
    flags = _flags(tmp_path, digits_dir, space_file, "--tune", "random",
                   "--max-trials", "3", "--tune-epochs", "2")
    # Killed once the second trial has begun: the first is finished, the second
    # is running.
    logs = tmp_path_factory.mktemp("logs")
    marker = str(logs / "paused")
    with testlib.Children(logs) as children:
        children.start("first", testlib.paused_command(
            "run", "keras_tuner.src.engine.base_tuner:BaseTuner.on_trial_begin", 2,
            marker, *flags, "--output-dir", str(tmp_path / "first"),
        ), cwd=tmp_path, env=testlib.child_env())
        children.wait_for_file(marker, timeout=600)
    finished = {trial_id for trial_id, state in trial_states(tmp_path / "search").items()
                if state == "COMPLETED"}
    assert len(finished) == 1
    first_trial = tmp_path / "search" / f"trial_{sorted(finished)[0]}" / "trial.json"
    before = first_trial.read_text()

    command = [sys.executable, "-m", "pipeline.run", *flags]
    result = subprocess.run(command + ["--output-dir", str(tmp_path / "second")],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path,
                            env=testlib.child_env())
    assert result.returncode == 0, result.stderr[-3000:]
    states = trial_states(tmp_path / "search")
    assert len(states) == 3 and set(states.values()) == {"COMPLETED"}
    # The finished trial was kept as it was, not run again.
    assert first_trial.read_text() == before
    assert json.loads((tmp_path / "second" / "best_hparams.json").read_text())["trials"] == 3


def _wait_until_listening(port, process, timeout):
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert process.poll() is None, "the chief ended before its oracle listened"
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.2)


@pytest.mark.slow
def test_a_chief_and_two_workers_run_each_trial_once(
    tmp_path, tmp_path_factory, digits_dir, space_file, free_port
):
    port = free_port()
    logs = tmp_path_factory.mktemp("logs")
    with testlib.Children(logs) as children:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            env = testlib.child_env(KERASTUNER_TUNER_ID=tuner_id,
                                    KERASTUNER_ORACLE_IP="127.0.0.1",
                                    KERASTUNER_ORACLE_PORT=str(port))
            command = _command(tmp_path, digits_dir, space_file, "--tune", "random",
                               "--max-trials", "3", "--tune-epochs", "1",
                               "--output-dir", str(tmp_path / tuner_id))
            process = children.start(tuner_id, command, env=env, cwd=tmp_path)
            if tuner_id == "chief":
                _wait_until_listening(port, process, timeout=300)
        children.wait(timeout=900)
        outputs = {name: children.output(name) for name in ("chief", "tuner0", "tuner1")}
    states = trial_states(tmp_path / "search")
    assert len(states) == 3 and set(states.values()) == {"COMPLETED"}
    # The workers trained the trials, one epoch each, each trial once ...
    assert outputs["tuner0"].count("Epoch 1/1") + outputs["tuner1"].count("Epoch 1/1") == 3
    # ... and the chief only the final model, which only it exported.
    assert outputs["chief"].count("Epoch 1/1") == 1
    assert (tmp_path / "chief" / "best_hparams.json").exists()
    assert not (tmp_path / "tuner0" / "metrics.json").exists()
    assert sorted(os.listdir(tmp_path / "models")) == ["1"]


@pytest.mark.slow
def test_trials_train_under_a_two_replica_mirrored_strategy(tmp_path, digits_dir, space_file):
    # In its own process: TensorFlow's collective ops are process-wide, and the
    # other tests' MirroredStrategy instances would share their keys.
    run_dir = tmp_path / "run"
    command = _command(tmp_path, digits_dir, space_file, "--strategy", "mirrored",
                       "--cpu-replicas", "2", "--tune", "random", "--max-trials", "1",
                       "--tune-epochs", "1", "--output-dir", str(run_dir))
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            cwd=tmp_path, env=testlib.child_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert set(trial_states(tmp_path / "search").values()) == {"COMPLETED"}
    assert json.loads((run_dir / "best_hparams.json").read_text())["trials"] == 1


def test_a_diverging_trial_scores_nothing_and_the_search_goes_on(digits_dir):
    ingested = ingested_dataset.IngestedDataset.load(digits_dir)
    config = RunConfig(
        model=ModelConfig(image_size=(67, 67), channels=1),
        train=TrainConfig(epochs=1, steps_per_epoch=3, batch_size=16, seed=0),
    )
    space = {"batch_size": [16], "optimizer": ["sgd"], "learning_rate": [1e4]}
    strategy = tf.distribute.get_strategy()
    hypermodel = tuner.AlexNetHyperModel(config, space, strategy, ingested)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    # SGD at 1e4 diverges in its first epoch (test_divergence.py): the trial's
    # score is 0 rather than an error that would count towards keras-tuner's
    # limit of consecutive failed trials.
    assert hypermodel.fit(hp, model, epochs=1) == {tuner.OBJECTIVE: 0.0}
