"""Values read from JSON checked against a config field's type annotation.

JSON has no tuples and does not tell 3 from 3.0 from true as Python's
dataclasses would need: `checked` accepts exactly what a flag of that type
would, so a config file is held to the same rules as the command line.
"""

import dataclasses
import json
import os
import types
import typing

import tensorflow as tf

from pipeline.errors import ConfigError
from pipeline.errors import first_line
from pipeline.storage import atomic

# A settings file larger than this is not one.
MAX_BYTES = 1 << 20


def read_text(path, what, fix):
    """The text of a small settings file (`what` names its flag), through
    TensorFlow's file systems (a run directory may be on gs:// or hdfs://);
    anything that is not a readable regular file of at most `MAX_BYTES` of
    UTF-8 is one `ConfigError` ending in `fix`."""
    if atomic.is_local(path) and os.path.exists(path) and not os.path.isfile(path):
        raise ConfigError(f"`{what}` {path} is not a regular file; {fix}")
    try:
        if tf.io.gfile.stat(path).length > MAX_BYTES:
            raise ConfigError(f"`{what}` {path} is over {MAX_BYTES:,} bytes; {fix}")
        with tf.io.gfile.GFile(path, "rb") as file:
            return file.read().decode("utf-8")
    except tf.errors.OpError as error:
        raise ConfigError(f"cannot read `{what}` {path} ({first_line(error)}); {fix}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"`{what}` {path} is not UTF-8 text; {fix}") from None


def parse_object(text, source, fix):
    """The JSON object `text` holds; `ConfigError` naming `source` for text that
    is not JSON, is nested beyond any real settings file, or is not an object."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source} is over {MAX_BYTES:,} bytes; {fix}")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise ConfigError(f"{source} is not JSON ({reason}); {fix}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{source} must hold a JSON object. Received: "
                          f"{json.dumps(value)[:80]}; {fix}")
    return value


def checked(value, annotation, where):
    """`value` as JSON gave it, checked against a field's annotation: raises
    `ConfigError` naming `where` and the type expected; tuples come back from lists."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (
        annotation,)
    if value is None:
        if type(None) in options:
            return None
    else:
        for option in options:
            if option is bool and isinstance(value, bool):
                return value
            if option is int and isinstance(value, int) and not isinstance(value, bool):
                return value
            if option is float and isinstance(value, (int, float)) and not isinstance(
                    value, bool):
                return float(value)
            if option is str and isinstance(value, str):
                return value
            if typing.get_origin(option) is tuple and isinstance(value, list):
                items = typing.get_args(option)
                item_type = items[0]
                if (items[-1] is Ellipsis or len(value) == len(items)) and all(
                        _is_json_type(item, item_type) for item in value):
                    return tuple(value)
    expected = " or ".join(_type_name(option) for option in options)
    raise ConfigError(f"{where} must be {expected}. Received: {json.dumps(value)[:80]}")


def _is_json_type(value, expected):
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(annotation):
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is tuple:
        items = typing.get_args(annotation)
        if items[-1] is Ellipsis:
            return f"a list of {items[0].__name__}"
        return f"a list of {len(items)} {items[0].__name__}"
    return {"int": "an integer", "float": "a number", "str": "a string",
            "bool": "true or false"}[annotation.__name__]


def sections(recorded, section_classes, source, not_sections=()):
    """`{name: section_class(**settings)}` for each of `section_classes` (a
    dict of frozen dataclasses) from a parsed JSON object: a section it
    leaves out, or a setting a section leaves out, keeps its default. An
    entry that is neither a section nor in `not_sections`, a section that is
    not an object, a setting the section does not have and a value of the
    wrong type are each one `ConfigError` naming `source`."""
    unknown = sorted(set(recorded) - set(section_classes) - set(not_sections))
    if unknown:
        raise ConfigError(
            f"{source} has entries this version does not know: {', '.join(unknown)}; "
            f"remove them (the sections are {', '.join(section_classes)})"
        )
    parts = {}
    for name, section_class in section_classes.items():
        settings = recorded.get(name, {})
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
                key: checked(value, fields[key].type, f"{source}: `{key}`")
                for key, value in settings.items()
            })
        except ConfigError as error:
            raise ConfigError(str(error) if str(error).startswith(source)
                              else f"{source}: {error}") from None
    return parts
