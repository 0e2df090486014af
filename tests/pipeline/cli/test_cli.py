"""Tests of pipeline.cli: flags map to settings and back, and help reads cleanly."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline.cli import main as cli
from pipeline.cli import parsers
from pipeline import config as config_lib
from tests.pipeline import testlib


def test_each_flag_sets_the_setting_of_its_name():
    args = parsers.run_parser().parse_args([
        "--batch-size", "64", "--image-size", "100,120", "--tune", "random",
        "--tune-epochs", "2", "--export-format", "keras", "--output-dir", "runs/x",
        "--cache", "memory", "--no-winograd",
    ])
    config = cli.run_config(args)
    assert config.train.winograd is False
    assert cli.run_config(parsers.run_parser().parse_args([])).train.winograd is True
    assert config.train.batch_size == 64 and config.train.output_dir == "runs/x"
    assert config.model.image_size == (100, 120)
    assert config.tune.tuner == "random" and config.tune.tune_epochs == 2
    assert config.export.export_formats == ("saved_model", "keras")
    assert config.data.cache == "memory"


def test_library_messages_name_this_commands_flags():
    message = "batch_size=30 does not divide over 4 replicas; lower `batch_size` or `tuner`"
    assert cli._as_flags(message, "run") == (
        "--batch-size 30 does not divide over 4 replicas; lower --batch-size or --tune"
    )
    # The same setting has another flag in another command; unknown names stay.
    assert cli._as_flags("choose another `ingest_dir`", "ingest") == (
        "choose another --output-dir"
    )
    assert cli._as_flags("see `foo` at http://x/?a=b", "run") == "see `foo` at http://x/?a=b"


@pytest.mark.parametrize("command", ["run", "ingest", "evaluate", "predict"])
def test_help_names_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        cli.main(command, ["--help"])
    text = capsys.readouterr().out
    assert text.count("(default: digits)") <= 1
    assert "(default: None)" not in text
    assert "(default: True)" not in text and "(default: False)" not in text
    if command == "run":
        assert "--winograd, --no-winograd" in text


def test_a_choice_is_checked_once_by_the_config(capsys):
    assert cli.main("run", ["--variant", "vgg"]) == 2
    error = capsys.readouterr().err
    assert error == (
        "python -m pipeline.run: error: --variant must be one of paper, paper_2gpu, d2l, "
        "torchvision. "
        "Received: --variant 'vgg'\n"
    )


def test_config_json_round_trips_exactly():
    config = config_lib.RunConfig(
        data=config_lib.DataConfig(dataset="folder:/images", max_pixels=1000, cache="memory"),
        model=config_lib.ModelConfig(variant="d2l", image_size=(100, 120), channels=3),
        train=config_lib.TrainConfig(epochs=3, learning_rate=0.01, seed=7),
        export=config_lib.ExportConfig(export_formats=("saved_model", "keras")),
        tune=config_lib.TuneConfig(tuner="random", max_trials=2),
    )
    # config.json adds the data's fingerprint beside the settings.
    written = json.loads(config.to_json())
    written["ingested"] = {"source": "folder", "fingerprint": "abc"}
    assert config_lib.RunConfig.from_json(json.dumps(written)) == config


def test_config_flag_reruns_a_run_with_the_flags_beside_it_overriding(tmp_path):
    recorded = cli.run_config(parsers.run_parser().parse_args([
        "--variant", "d2l", "--image-size", "100", "--epochs", "4", "--seed", "3",
        "--export-format", "keras", "--output-dir", str(tmp_path / "first"),
    ]))
    # Read through TensorFlow's file systems, as a run directory on gs:// is.
    path = "ram://test_cli/runs/first/config.json"
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as file:
        file.write(recorded.to_json())

    args = cli._parse_run_args(parsers.run_parser(), [
        "--config", path, "--epochs", "6", "--export-format", "keras",
    ])
    rerun = cli.run_config(args)
    assert rerun.train.epochs == 6
    # A new run directory, not the recorded one: the old run is not resumed.
    assert rerun.train.output_dir.startswith("runs" + os.sep)
    assert dataclasses.replace(rerun, train=dataclasses.replace(
        rerun.train, epochs=4, output_dir=recorded.train.output_dir)) == recorded


def test_config_switches_turn_back_either_way_from_the_command_line():
    recorded = cli.run_config(parsers.run_parser().parse_args([
        "--mixed-precision", "--no-winograd", "--force-push", "--pca-noise", "--channels", "3",
    ]))
    assert (recorded.train.mixed_precision, recorded.train.winograd) == (True, False)
    assert recorded.export.force_push and recorded.data.pca_noise
    path = "ram://test_cli/switches/config.json"
    with tf.io.gfile.GFile(path, "w") as file:
        file.write(recorded.to_json())

    kept = cli.run_config(cli._parse_run_args(parsers.run_parser(), ["--config", path]))
    assert (kept.train.mixed_precision, kept.train.winograd) == (True, False)
    turned = cli.run_config(cli._parse_run_args(parsers.run_parser(), [
        "--config", path, "--no-mixed-precision", "--winograd", "--no-force-push",
        "--no-pca-noise",
    ]))
    assert (turned.train.mixed_precision, turned.train.winograd) == (False, True)
    assert not turned.export.force_push and not turned.data.pca_noise


@pytest.mark.parametrize("content, message", [
    (None, "cannot read --config"),
    ("{not json", "is not JSON"),
    ('{"train": {"epochs": 3, "warmup": 1}}', "does not know: train.warmup"),
])
def test_a_bad_config_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        cli.main("run", ["--config", str(path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_commands_print_only_their_own_output(tmp_path):
    """TensorFlow's C++ start-up lines (oneDNN, the CUDA stubs, cuInit) stay out
    of a command's output unless --verbose asks for them."""
    env = testlib.child_env()
    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS"):
        env.pop(name, None)

    def stderr_of(*flags):
        return subprocess.run(
            [sys.executable, "-m", "pipeline.run", "--epochs", "0", *flags],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
        ).stderr

    assert stderr_of() == (
        "python -m pipeline.run: error: --epochs must be at least 1. Received: --epochs 0\n"
    )
    assert "oneDNN custom operations are on" in stderr_of("--verbose")


def test_console_commands_are_installed_and_name_themselves():
    bin_dir = os.path.dirname(sys.executable)
    for command in ("run", "ingest", "evaluate", "predict", "summary", "data-service"):
        assert os.access(os.path.join(bin_dir, f"alexnet-{command}"), os.X_OK), command
    result = subprocess.run(
        [os.path.join(bin_dir, "alexnet-predict"), "photo.jpg"],
        capture_output=True, text=True, env=testlib.child_env(), timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "alexnet-predict: error: one of the arguments --server --grpc --saved-model is "
        "required"
    )
    result = subprocess.run(
        [os.path.join(bin_dir, "alexnet-data-service"), "worker"],
        capture_output=True, text=True, env=testlib.child_env(), timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "alexnet-data-service worker: error: the following arguments are required: "
        "--dispatcher"
    )
