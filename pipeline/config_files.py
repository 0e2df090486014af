"""Config files: a run's `config.json` and the recipes (`recipes/*.json`),
read into the settings of `pipeline.config`.

    config = run_config(text, "recipes/default.json")    # a RunConfig

A file may set any sections, each partially; what it leaves out keeps its
default. Every value is checked as its flag is, and anything the settings do
not know (a section, a setting) is refused in one line naming it.
"""

import dataclasses
import json

from alexnet_keras import alexnet
from pipeline import json_values
from pipeline.config import SECTIONS
from pipeline.config import ModelConfig
from pipeline.config import RunConfig
from pipeline.errors import ConfigError

# Top-level entries of a config file that are not settings: what a run's
# config.json records of its data, and a recipe's description.
NOT_SETTINGS = ("ingested", "about")


def _as_recorded_then(recorded):
    """A run's `config.json` (it records "ingested") written before the
    `initializer` setting existed: that run used its variant's own."""
    model = recorded.get("model")
    if "ingested" in recorded and isinstance(model, dict) and "initializer" not in model:
        variant = model.get("variant", ModelConfig.variant)
        if variant in alexnet.VARIANTS:
            recorded["model"] = {**model, "initializer": alexnet.default_initializer(variant)}
    return recorded


def run_config(text, source="the config"):
    """The `RunConfig` that `RunConfig.to_json` (or a run's `config.json`)
    wrote: `run_config(config.to_json()) == config`. A partial config keeps
    the defaults of what it leaves out; top-level entries that are not
    sections are refused, but for `config.json`'s "ingested" and a recipe's
    "about" (a description, ignored). Each value is checked for its type and
    range by the same code that checks a flag."""
    return RunConfig(**sections_from_json(text, source))


def sections_from_json(text, source):
    """`{section name: config}` for the sections a `config.json` (or a partial
    one) sets, each value checked; raises `ConfigError` naming `source`."""
    recorded = _as_recorded_then(
        json_values.parse_object(text, source, "pass a run's config.json"))
    if not set(SECTIONS) & set(recorded):
        raise ConfigError(f"{source} holds no settings; pass a run's config.json")
    unknown = sorted(set(recorded) - set(SECTIONS) - set(NOT_SETTINGS))
    if unknown:
        raise ConfigError(
            f"{source} has entries this version does not know: {', '.join(unknown)}; "
            f"remove them (the sections are {', '.join(SECTIONS)})"
        )
    parts = {}
    for name, section_class in SECTIONS.items():
        if name not in recorded:
            parts[name] = section_class()
            continue
        settings = recorded[name]
        if not isinstance(settings, dict):
            raise ConfigError(f"{source}: the section `{name}` must be an object of "
                              f"settings. Received: {json.dumps(settings)[:80]}")
        fields = {field.name: field for field in dataclasses.fields(section_class)}
        unknown = sorted(set(settings) - set(fields))
        if unknown:
            raise ConfigError(
                f"{source} has settings this version does not know: "
                f"{', '.join(f'{name}.{key}' for key in unknown)}; remove them"
            )
        try:
            parts[name] = section_class(**{
                key: json_values.checked(value, fields[key].type, f"{source}: `{key}`")
                for key, value in settings.items()
            })
        except ConfigError as error:
            raise ConfigError(str(error) if str(error).startswith(source)
                              else f"{source}: {error}") from None
    return parts
