"""The commands' argument parsers.

`python -m pipeline.run`'s flags are made from the config fields themselves
(`pipeline.settings.setting`): each field is a flag of the same name with dashes
(`batch_size` is `--batch-size`), its type, choices, default and help read
from the field. A new setting is a new field, and its flag follows.
"""

import argparse
import dataclasses
import os
import sys
import types
import typing

from pipeline import config as config_lib
from pipeline import settings as settings_lib
from pipeline import environment
from pipeline.data import image_formats

# Each section's group in --help, in the order the pipeline runs them.
_GROUPS = {"data": "data", "model": "model", "train": "training",
           "tune": "tuning (keras-tuner)", "export": "evaluation and export"}
# Settings whose flag is not their own, per command other than run.
FLAG_OF = {
    "run": {field.name: settings_lib.flag_of(field)
            for section in config_lib.SECTIONS.values()
            for field in dataclasses.fields(section)},
    "ingest": {"ingest_dir": "--output-dir"},
    "evaluate": {},
    "export": {},
    "predict": {"grpc_target": "--grpc"},
}


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default once, after its help, and none where there is none."""

    def _get_help_string(self, action):
        # A switch (nargs 0) says in words whether it is on by default, which
        # "--winograd, --no-winograd (default: True)" would not; Python 3.11's
        # BooleanOptionalAction adds that to the help itself.
        text = (action.help or "").removesuffix(" (default: %(default)s)")
        if (action.default in (None, False, argparse.SUPPRESS) or not action.option_strings
                or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)".strip()


def _image_size(text):
    try:
        parts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH, got {text!r}")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH, got {text!r}")
    return tuple(parts * 2 if len(parts) == 1 else parts)


def _add_setting(group, field, flag=None):
    """The flag of one config field, as its type, choices and default say."""
    kind = field.type
    if isinstance(kind, types.UnionType):
        kind = next(option for option in typing.get_args(kind) if option is not type(None))
    default = None if field.default is dataclasses.MISSING else field.default
    options = {"dest": field.name, "help": field.metadata["help"]}
    choices = field.metadata["choices"]
    if choices:
        options["metavar"] = "{" + ",".join(choices) + "}"
    if kind is bool:
        options.update(action=argparse.BooleanOptionalAction, default=default)
    elif typing.get_origin(kind) is tuple and typing.get_args(kind)[-1] is Ellipsis:
        # Repeatable; what it lists is added to the default.
        options.update(action="append", default=None)
    elif typing.get_origin(kind) is tuple:
        options.update(type=_image_size, default=default)
    else:
        options.update(type=kind, default=default)
    group.add_argument(flag or settings_lib.flag_of(field), **options)


def _prog(command):
    """How the user calls `command`: `alexnet-run` or `python -m pipeline.run`."""
    called = os.path.basename(sys.argv[0])
    return called if called == f"alexnet-{command}" else f"python -m pipeline.{command}"


def _new_parser(command, description):
    parser = argparse.ArgumentParser(prog=_prog(command), description=description,
                                     formatter_class=_HelpFormatter)
    parser.add_argument(environment.VERBOSE_FLAG, action="store_true",
                        help="also show TensorFlow's own log lines (its C++ start-up "
                             "messages, Python warnings) and the pipeline's debug lines")
    return parser


def _add_ingest_flags(parser, ingest_dir_flag="--ingest-dir"):
    """The settings ingest reads, shared by run, ingest and evaluate."""
    for field in dataclasses.fields(config_lib.DataConfig):
        if field.metadata["ingest"]:
            _add_setting(parser, field, ingest_dir_flag if field.name == "ingest_dir" else None)


def run_parser():
    parser = _new_parser("run", "Train AlexNet and export it for TensorFlow Serving.")
    parser.add_argument("--config", default=None,
                        help="a run's config.json, or a partial one such as a recipe: train "
                             "with its settings, the flags given beside it overriding them; "
                             "a new run (in runs/<timestamp> unless --output-dir is given)")
    parser.add_argument("--find-lr", action="store_true",
                        help="instead of training, run the learning-rate range test with "
                             "these settings (100 steps, rates 1e-7 to 10): lr_find.png and "
                             "lr_find.csv in the run directory, and a suggested "
                             "--learning-rate")
    for section, title in _GROUPS.items():
        group = parser.add_argument_group(title)
        for field in dataclasses.fields(config_lib.SECTIONS[section]):
            _add_setting(group, field)
    return parser


def ingest_parser():
    parser = _new_parser(
        "ingest", "Turn a dataset into sharded TFRecords with train/validation/test splits."
    )
    _add_ingest_flags(parser, ingest_dir_flag="--output-dir")
    return parser


def evaluate_parser():
    parser = _new_parser("evaluate",
                         "Evaluate an export on a dataset through its serving signature.")
    parser.add_argument("--saved-model", required=True,
                        help="a version directory, or a base directory (its newest version)")
    _add_ingest_flags(parser)
    parser.add_argument("--split", default="test", metavar="{train,validation,test}")
    _add_setting(parser, next(field for field in dataclasses.fields(config_lib.ExportConfig)
                              if field.name == "ten_crop"))
    parser.add_argument("--output-dir", default="runs/evaluation",
                        help="where evaluation.json and the pictures go")
    return parser


def export_parser():
    parser = _new_parser(
        "export", "Export a .keras AlexNet (a run's, or torchvision's ImageNet model "
                  "converted) as the next TF Serving version.")
    parser.add_argument("model", help="the .keras file, e.g. alexnet_imagenet.keras")
    _add_setting(parser, next(field for field in dataclasses.fields(config_lib.ExportConfig)
                              if field.name == "export_dir"))
    parser.add_argument("--class-names", default=None,
                        help="a comma-separated list, or a file with one name per line "
                             "(default: the names the model carries)")
    parser.add_argument("--max-pixels", type=int, default=config_lib.DataConfig.max_pixels,
                        help="answer images with more pixels than this as invalid, read "
                             "from their headers (give the --max-pixels the model was "
                             "trained under)")
    return parser


def predict_parser():
    parser = _new_parser("predict", "Classify images with a served or exported AlexNet.")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help=f"{image_formats.FORMATS_TEXT} files, or directories of them")
    place = parser.add_mutually_exclusive_group(required=True)
    place.add_argument("--server", help="TF Serving's REST address, e.g. http://localhost:8501")
    place.add_argument("--grpc", dest="grpc_target",
                       help="TF Serving's gRPC address, e.g. localhost:8500")
    place.add_argument("--saved-model",
                       help="an export: a version directory or its base directory")
    parser.add_argument("--model", dest="model_name", default="alexnet",
                        help="the served model's name")
    parser.add_argument("--version", type=int, default=None,
                        help="a served version (the server's choice, the newest, when "
                             "not given)")
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image")
    parser.add_argument("--batch-size", type=int, default=32, help="images per request")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON list of {path, valid, error, top_k} instead")
    return parser
