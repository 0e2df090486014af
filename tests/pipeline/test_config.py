"""The settings: each fact about one declared once, on its field, and config
files held to the same checks as flags."""

import dataclasses
import json
import os

import pytest

from pipeline import config as config_lib
from pipeline import settings as settings_lib
from pipeline.cli import main as cli
from pipeline.cli import parsers
from pipeline.config import RunConfig
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.storage import run_dir

_DECLARED = {"shapes_run", "tunable", "logged", "ingest", "flag", "choices", "help"}


def test_every_field_declares_what_is_true_of_it():
    for section, config_class in config_lib.SECTIONS.items():
        for field in dataclasses.fields(config_class):
            assert set(field.metadata) == _DECLARED, f"{section}.{field.name}"
            assert isinstance(field.metadata["shapes_run"], bool), field.name
            # What the tuner may search, TensorBoard's HParams dashboard shows.
            assert not field.metadata["tunable"] or field.metadata["logged"], field.name


def test_the_lists_each_reader_uses_come_from_the_fields():
    assert config_lib.tunable_settings() == {
        "data": (), "model": ("dropout_rate", "normalization"),
        "train": ("batch_size", "optimizer", "learning_rate", "weight_decay"),
        "export": (), "tune": (),
    }
    assert config_lib.logged_settings()["model"] == (
        "variant", "dropout_rate", "normalization", "initializer")
    assert "lr_schedule" in config_lib.logged_settings()["train"]
    shaping = config_lib.shaping_settings()
    assert "epochs" not in shaping["train"]  # a larger one extends a run
    assert {"batch_size", "init_from", "freeze", "seed", "momentum", "warmup_epochs"} <= set(
        shaping["train"])
    assert "initializer" in shaping["model"]
    assert shaping["export"] == shaping["tune"] == ()


def test_a_new_setting_is_one_field(monkeypatch):
    """One field added to TrainConfig: its flag, the resume check, the tuner
    and the HParams list all know it, with nothing else edited."""
    extended = dataclasses.make_dataclass(
        "ExtendedTrainConfig",
        [("label_smoothing", float, settings_lib.setting(
            0.0, shapes_run=True, tunable=True, help="soften the one-hot targets"))],
        bases=(TrainConfig,), frozen=True,
    )
    monkeypatch.setitem(config_lib.SECTIONS, "train", extended)

    args = parsers.run_parser().parse_args(["--label-smoothing", "0.1", "--epochs", "2"])
    config = cli.run_config(args)
    assert config.train.label_smoothing == 0.1 and config.train.epochs == 2
    assert "label_smoothing" in config_lib.shaping_settings()["train"]
    assert "label_smoothing" in config_lib.tunable_settings()["train"]
    assert "label_smoothing" in config_lib.logged_settings()["train"]
    assert "soften the one-hot targets" in parsers.run_parser().format_help()

    class Ingested:
        fingerprint = "a" * 64
        source = "digits"

    recorded = run_dir.record(config, Ingested())
    assert json.loads(recorded)["train"]["label_smoothing"] == 0.1
    other = dataclasses.replace(config, train=dataclasses.replace(
        config.train, label_smoothing=0.2))
    assert run_dir.changed_settings(recorded, other, Ingested()) == [
        "`label_smoothing` 0.1 -> 0.2"]


def test_output_dir_has_one_default():
    first = TrainConfig().output_dir
    assert first.startswith("runs" + os.sep) and len(os.path.basename(first)) == 15
    args = parsers.run_parser().parse_args([])
    assert cli.run_config(args).train.output_dir.startswith("runs" + os.sep)


def test_a_config_round_trips_and_a_partial_one_keeps_the_defaults():
    config = RunConfig(train=TrainConfig(epochs=3, output_dir="runs/x"))
    assert RunConfig.from_json(config.to_json()) == config
    partial = RunConfig.from_json('{"train": {"epochs": 7}, "model": {"image_size": [99, 99]}}')
    assert partial.train.epochs == 7 and partial.train.batch_size == 32
    assert partial.model.image_size == (99, 99)


def test_a_run_recorded_before_initializer_existed_keeps_its_variants_own():
    """A run's config.json without `initializer` and `warmup_epochs` trained
    with the variant's own initialisation (the paper's N(0, 0.01) on 0-255
    pixels) and no warm-up: resuming it, or starting from it, must not take
    today's defaults; a recipe without them does."""
    old = {"model": {"variant": "paper"}, "train": {"epochs": 3},
           "ingested": {"source": "digits", "fingerprint": "f"}}
    recorded = RunConfig.from_json(json.dumps(old))
    assert recorded.model.initializer == "paper" and recorded.train.warmup_epochs == 0.0
    old["model"]["variant"] = "d2l"
    assert RunConfig.from_json(json.dumps(old)).model.initializer == "glorot"
    del old["ingested"]
    recipe = RunConfig.from_json(json.dumps(old))
    assert recipe.model.initializer == "he" and recipe.train.warmup_epochs == 0.5


@pytest.mark.parametrize("text, message", [
    ('{"train": {"epochs": "3"}}', '`epochs` must be an integer. Received: "3"'),
    ('{"train": {"epochs": 2.5}}', "`epochs` must be an integer. Received: 2.5"),
    ('{"train": {"epochs": true}}', "`epochs` must be an integer. Received: true"),
    ('{"train": {"learning_rate": "fast"}}', '`learning_rate` must be a number.'),
    ('{"model": {"image_size": 67}}',
     "`image_size` must be a list of 2 int or null. Received: 67"),
    ('{"export": {"export_formats": "keras"}}',
     "`export_formats` must be a list of str. Received: \"keras\""),
    ('{"train": null}', "the section `train` must be an object of settings"),
    ('{"train": [1, 2]}', "the section `train` must be an object of settings"),
    ('{"train": {"epochs": 0}}', "`epochs` must be at least 1. Received: epochs=0"),
    ('{"train": {"warmup": 3}}', "settings this version does not know: train.warmup"),
    ('{"trian": {"epochs": 3}, "model": {}}',
     "entries this version does not know: trian; remove them (the sections are data, "),
    ('{"train": {"warmup_epochs": 2, "epochs": 2}}',
     "`warmup_epochs` must be >= 0 and less than epochs=2. Received: warmup_epochs=2"),
    ('{"train": {"momentum": 1.0, "optimizer": "sgd"}}', "`momentum` must be in [0, 1)"),
    ('{"model": {"initializer": "xavier"}}', "`initializer` must be one of paper, he, glorot"),
    ("[" * 100_000 + "]" * 100_000, "is not JSON (nested too deeply)"),
    ("[]", "must hold a JSON object. Received: []"),
    ("{}", "holds no settings"),
])
def test_config_values_are_checked_like_flags(text, message):
    with pytest.raises(ConfigError) as raised:
        RunConfig.from_json(text, source="recipe.json")
    assert str(raised.value).startswith("recipe.json")
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_unreadable_config_files_are_one_line_each(tmp_path, capsys):
    not_utf8 = tmp_path / "latin1.json"
    not_utf8.write_bytes('{"train": {"optimizer": "s\xe9d"}}'.encode("latin-1"))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.json"
    huge.write_text(" " * (config_lib.MAX_CONFIG_BYTES + 1))
    cases = {
        not_utf8: "is not UTF-8 text",
        fifo: "is not a regular file",
        tmp_path: "is not a regular file",
        huge: "bytes; pass a run's config.json",
        tmp_path / "missing.json": "cannot read --config",
    }
    for path, message in cases.items():
        with pytest.raises(SystemExit) as exited:
            cli.main("run", ["--config", str(path)])
        assert exited.value.code == 2
        # argparse's usage, then the one line that says what is wrong.
        error = capsys.readouterr().err.splitlines()[-1]
        assert error.startswith("python -m pipeline.run: error: "), error
        assert message in error and str(path) in error, error
