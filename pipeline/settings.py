"""How a setting is declared: one dataclass field carries its default, its
flag and help, and what is true of it (`pipeline.config` declares them all).

    batch_size: int = setting(32, shapes_run=True, tunable=True, help="global batch size")
"""

import dataclasses

from pipeline.errors import ConfigError


def setting(default=None, *, shapes_run, tunable=False, logged=False, ingest=False,
            flag=None, choices=None, help=None, default_factory=None):
    """A config field and what is true of it.

    Args:
        shapes_run: a run resumed under another value would not be the run its
            `config.json` describes, so resuming refuses the change.
        tunable: the tuner may search it (`tune_space`, `best_hparams.json`).
        logged: TensorBoard's HParams dashboard shows it (tunable ones always).
        ingest: ingest reads it; `python -m pipeline.ingest` and `evaluate`
            take its flag too.
        flag: its flag where that is not `--<name-with-dashes>`.
        choices: the values it takes, shown in `--help` (the dataclass checks).
        help: the flag's help.
    """
    metadata = {"shapes_run": shapes_run, "tunable": tunable, "logged": logged or tunable,
                "ingest": ingest, "flag": flag, "choices": choices, "help": help}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field):
    return field.metadata["flag"] or "--" + field.name.replace("_", "-")


def check_choice(name, value, choices):
    if value not in choices:
        shown = ", ".join(str(choice) for choice in choices if choice is not None)
        raise ConfigError(f"`{name}` must be one of {shown}. Received: {name}={value!r}")
