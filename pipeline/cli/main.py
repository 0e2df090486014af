"""The command line of every pipeline command: one entry point and one error handler.

    python -m pipeline.run --strategy mirrored
    python -m pipeline.ingest --dataset digits --output-dir data/digits
    python -m pipeline.evaluate --saved-model saved_models/alexnet --dataset digits
    python -m pipeline.export alexnet_imagenet.keras --export-dir saved_models/alexnet
    python -m pipeline.predict digit.png --saved-model saved_models/alexnet

Every flag sets the setting of the same name (`--batch-size` is
`TrainConfig.batch_size`; `pipeline.cli.parsers`). The library names settings
in its errors (`batch_size=30`, `` `output_dir` ``) and `main` shows them as
this command's flags. Choices and ranges are validated once, by the config
dataclasses.
"""

import dataclasses
import json
import logging
import os
import re
import sys

from pipeline import config as config_lib
from pipeline import errors
from pipeline import json_values
from pipeline import runner
from pipeline.cli import parsers
from pipeline.data import ingest
from pipeline.serving import client
from pipeline.storage import atomic


def read_config_file(path, what="config"):
    """The text of a `--config` file (`json_values.read_text`): anything that is
    not a readable regular file of at most `MAX_CONFIG_BYTES` of UTF-8 is one
    `ConfigError`."""
    return json_values.read_text(path, what, "pass a run's config.json or a recipe")


def _parse_run_args(parser, argv):
    """The run's flags, on top of the settings of `--config` when it is given."""
    args = parser.parse_args(argv)
    if args.config:
        sections = config_lib.sections_from_json(read_config_file(args.config), args.config)
        settings = {}
        for section in sections.values():
            settings.update(dataclasses.asdict(section))
        # A new run: the recorded run directory is not resumed unless asked for.
        settings.pop("output_dir")
        # --export-format appends to its default, which must be a list.
        settings["export_formats"] = list(settings["export_formats"])
        parser.set_defaults(**settings)
        args = parser.parse_args(argv)
    return args


def _settings(config_class, args):
    """The fields of `config_class` that `args` sets, by name (None for an
    unset `output_dir`, which the field's own default then makes)."""
    return {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if hasattr(args, field.name) and not (
            getattr(args, field.name) is None and field.default is dataclasses.MISSING)
    }


def run_config(args):
    """The validated `RunConfig` the flags of `python -m pipeline.run` describe."""
    args.export_formats = tuple(dict.fromkeys(["saved_model", *(args.export_formats or [])]))
    return config_lib.RunConfig(**{
        section: config_class(**_settings(config_class, args))
        for section, config_class in config_lib.SECTIONS.items()
    })


def _run(args):
    config = run_config(args)
    if args.find_lr:
        print(_find_lr_summary(*runner.find_learning_rate(config)), flush=True)
        return
    metrics = runner.run(config)
    if metrics is not None:
        print(_summary(metrics, config.train.output_dir), flush=True)


def _find_lr_summary(test, run_dir):
    picture = os.path.join(run_dir, "lr_find.png")
    if test.lowest is None:
        return (f"The loss did not fall below its start at any rate tried: no rate is "
                f"suggested; see {picture}")
    rate = f"{test.suggestion:.2g}"
    return (f"Suggested learning rate: {rate} (a tenth of the rate at the lowest loss); "
            f"train with --learning-rate {rate}\n"
            f"Loss against rate: {picture} (lowest smoothed loss "
            f"{test.smoothed[test.lowest]:.3f} at {test.learning_rates[test.lowest]:.2g})")


def _summary(metrics, run_dir):
    lines = [f"Test accuracy: {metrics['test_accuracy']:.4f}"]
    if "test_top5_accuracy" in metrics:
        lines[0] += f"   top-5: {metrics['test_top5_accuracy']:.4f}"
    if "test_ten_crop_accuracy" in metrics:
        lines[0] += f"   ten-crop: {metrics['test_ten_crop_accuracy']:.4f}"
        if "test_ten_crop_top5_accuracy" in metrics:
            lines[0] += f" (top-5 {metrics['test_ten_crop_top5_accuracy']:.4f})"
    for export_format, accuracy in metrics.get("int8_test_accuracy", {}).items():
        lines.append(f"{export_format} test accuracy: {accuracy:.4f} "
                     f"({metrics[export_format + '_path']}, in its runtime)")
    if metrics["images_per_second"] is not None:
        lines.append(f"Training speed: {metrics['images_per_second']:.1f} images/s "
                     "(last epoch)")
    lines.append(f"Wall time: {metrics['wall_time_seconds']:.0f} s")
    lines.append(f"Run directory: {run_dir}")
    reason = _as_flags(metrics["reason"], "run")
    for unscored in metrics.get("unscored", ()):
        lines.append(f"Could not score {unscored}")
    if metrics["export_path"]:
        lines.append(f"Exported for TF Serving: {metrics['export_path']} ({reason})")
    else:
        lines.append(f"Not exported: {reason}")
    return "\n".join(lines)


def _ingest(args):
    data_config = config_lib.DataConfig(**_settings(config_lib.DataConfig, args))
    output_dir = args.ingest_dir or ingest.default_ingest_dir(args.dataset)
    ingested = ingest.ingest(data_config, output_dir)
    for skipped in ingested.skipped:
        print(_as_flags(f"skipped {skipped.path}: {skipped.reason}", "ingest"))
    counts = ", ".join(f"{name} {split.num_examples}" for name, split in ingested.splits.items())
    print(f"{counts} examples; {len(ingested.skipped)} skipped; in {output_dir}")


def _evaluate(args):
    data_config = config_lib.DataConfig(**_settings(config_lib.DataConfig, args))
    metrics = runner.evaluate_export(
        args.saved_model, data_config, args.split, args.output_dir, args.ten_crop
    )
    atomic.replace_file(os.path.join(args.output_dir, "evaluation.json"),
                        json.dumps(metrics, indent=2))
    print(f"Metrics and pictures are in {args.output_dir}")


def _export(args):
    version_dir = runner.export_model_file(args.model, args.export_dir, args.class_names,
                                           args.max_pixels)
    print(f"Exported for TF Serving: {version_dir}")


def _predict(args):
    if args.top_k < 1:
        raise config_lib.ConfigError(f"`top_k` must be at least 1. Received: top_k={args.top_k}")
    results = client.predict(
        args.images, server=args.server, grpc_target=args.grpc_target,
        saved_model=args.saved_model, model_name=args.model_name, version=args.version,
        top_k=args.top_k, batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps([result.as_json() for result in results], indent=2))
    else:
        for result in results:
            print(result.path)
            if not result.valid:
                print(f"  error: {result.error}")
            for rank, (name, probability) in enumerate(result.classes, start=1):
                print(f"  {rank}. {name:<24} {probability:.4f}")
    # Like grep: 1 when some image could not be classified.
    return 0 if all(result.valid for result in results) else 1


_COMMANDS = {
    "run": (parsers.run_parser, _run),
    "ingest": (parsers.ingest_parser, _ingest),
    "evaluate": (parsers.evaluate_parser, _evaluate),
    "export": (parsers.export_parser, _export),
    "predict": (parsers.predict_parser, _predict),
}


# Every name a library message may use for a setting.
_SETTINGS = frozenset(parsers.FLAG_OF["run"]) | {
    "saved_model", "split", "server", "grpc_target", "top_k", "config"}


def _as_flags(message, command):
    """A library message with its setting names (`name=value`, `` `name` ``) shown
    as the command's flags (`--name value`, `--name`)."""
    renamed = parsers.FLAG_OF[command]

    def flag(match, suffix=""):
        name = match.group(1)
        if name not in _SETTINGS:
            return match.group(0)
        return renamed.get(name, "--" + name.replace("_", "-")) + suffix

    message = re.sub(r"`(\w+)`", flag, message)
    return re.sub(r"\b([a-z_]+)=(?=\S)", lambda match: flag(match, " "), message)


def main(command, argv=None):
    """Runs `command` ("run", "ingest", "evaluate", "export" or "predict") on `argv`.

    Errors a user can cause print one line, `<prog>: error: <what and the fix>`,
    and return 2 (a preempted run, saved: 138, `checkpoints.PREEMPTED_EXIT_STATUS`);
    anything else is a bug and keeps its traceback. Otherwise it
    returns the command's own status (predict: 1 if an image was not
    classified), else 0.
    """
    make_parser, execute = _COMMANDS[command]
    parser = make_parser()
    try:
        args = _parse_run_args(parser, argv) if command == "run" else parser.parse_args(argv)
    except errors.PipelineError as error:
        parser.error(_as_flags(str(error), command))
    # The pipeline's own progress at INFO; TensorFlow's and Keras' only when
    # they warn, or everything with --verbose.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    logging.getLogger("pipeline").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        status = execute(args)
    except errors.PipelineError as error:
        print(f"{parser.prog}: error: {_as_flags(str(error), command)}", file=sys.stderr)
        return getattr(error, "exit_status", 2)
    return status or 0
