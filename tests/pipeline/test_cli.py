"""Tests of pipeline.cli: flags map to settings and back, and help reads cleanly."""

import pytest

from pipeline import cli


def test_each_flag_sets_the_setting_of_its_name():
    args = cli._run_parser().parse_args([
        "--batch-size", "64", "--image-size", "100,120", "--tune", "random",
        "--tune-epochs", "2", "--export-format", "keras", "--output-dir", "runs/x",
        "--cache", "memory",
    ])
    config = cli.run_config(args)
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


def test_a_choice_is_checked_once_by_the_config(capsys):
    assert cli.main("run", ["--variant", "vgg"]) == 2
    error = capsys.readouterr().err
    assert error == (
        "python -m pipeline.run: error: --variant must be one of paper, d2l. "
        "Received: --variant 'vgg'\n"
    )
