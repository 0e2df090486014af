"""The command line of every pipeline command: its flags, their help, one error handler.

    python -m pipeline.run --strategy mirrored
    python -m pipeline.ingest --dataset digits --output-dir data/digits
    python -m pipeline.evaluate --saved-model saved_models/alexnet --dataset digits
    python -m pipeline.predict digit.png --saved-model saved_models/alexnet

Every flag sets the setting of the same name (`--batch-size` is
`TrainConfig.batch_size`); the few exceptions are in `_FLAG_OF`. The library
names settings in its errors (`batch_size=30`, `` `output_dir` ``) and `main`
shows them as this command's flags. Choices and ranges are validated once, by
the config dataclasses.
"""

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time

import tensorflow as tf

from alexnet_keras import alexnet
from pipeline import config as config_lib
from pipeline import environment
from pipeline import evaluate
from pipeline import image_formats
from pipeline import ingest
from pipeline import predict
from pipeline import run
from pipeline import sources
from pipeline import temp_dirs

# Settings whose flag is not their name with dashes, per command.
_FLAG_OF = {
    "run": {"tuner": "--tune", "export_formats": "--export-format"},
    "ingest": {"ingest_dir": "--output-dir"},
    "evaluate": {},
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


def _choices(values):
    """Shown in --help; the config dataclasses do the checking."""
    return "{" + ",".join(values) + "}"


def _image_size(text):
    try:
        parts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH, got {text!r}")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH, got {text!r}")
    return tuple(parts * 2 if len(parts) == 1 else parts)


def _add_data_flags(parser, ingest_dir_flag="--ingest-dir"):
    """The flags that say what to ingest and where, shared by run, ingest and evaluate."""
    parser.add_argument("--dataset", default="digits", help=sources.SPEC_HELP)
    parser.add_argument("--data-dir", default=None,
                        help="TFDS data_dir: where tfds: datasets are (or get) prepared")
    parser.add_argument(ingest_dir_flag, dest="ingest_dir", default=None,
                        help="where the ingested shards and manifest.json are or go "
                             "(default: data/<dataset slug>, e.g. data/digits)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first corrupt or non-image file instead of "
                             "skipping it")
    parser.add_argument("--max-pixels", type=int, default=config_lib.DataConfig.max_pixels,
                        help="skip images with more pixels than this, read from their "
                             "headers before decoding; images over "
                             f"{image_formats.MAX_ASPECT_RATIO}:1 are skipped too")
    parser.add_argument("--label-offset", type=int, default=0,
                        help="tfrecord: subtract from every label (1 for 1-based sets "
                             "like ImageNet)")
    parser.add_argument("--class-names", default=None,
                        help="tfrecord: a comma-separated list, or a file with one name "
                             "per line")


def _prog(command):
    """How the user calls `command`: `alexnet-run` or `python -m pipeline.run`."""
    called = os.path.basename(sys.argv[0])
    return called if called == f"alexnet-{command}" else f"python -m pipeline.{command}"


def _add_verbose_flag(parser):
    parser.add_argument(environment.VERBOSE_FLAG, action="store_true",
                        help="also show TensorFlow's own log lines (its C++ start-up "
                             "messages, Python warnings) and the pipeline's debug lines")


def _run_parser():
    defaults = config_lib.RunConfig()
    parser = argparse.ArgumentParser(
        prog=_prog("run"),
        description="Train AlexNet and export it for TensorFlow Serving.",
        formatter_class=_HelpFormatter,
    )
    _add_verbose_flag(parser)
    parser.add_argument("--config", default=None,
                        help="a run's config.json: train with its settings, the flags given "
                             "beside it overriding them; a new run (in runs/<timestamp> "
                             "unless --output-dir is given)")
    data = parser.add_argument_group("data")
    _add_data_flags(data)
    data.add_argument("--cache", default=None,
                      help="cache decoded examples: 'memory' or a file path")
    data.add_argument("--pca-noise", action=argparse.BooleanOptionalAction,
                      default=defaults.data.pca_noise,
                      help="the paper's PCA colour augmentation (colour data)")

    model = parser.add_argument_group("model")
    model.add_argument("--variant", metavar=_choices(alexnet.VARIANTS),
                       default=defaults.model.variant)
    model.add_argument("--dropout-rate", type=float, default=defaults.model.dropout_rate)
    model.add_argument("--normalization", metavar=_choices(alexnet.NORMALIZATIONS),
                       default=None,
                       help="the variant's own when not given (lrn for paper, none for d2l)")
    model.add_argument("--image-size", type=_image_size, default=None,
                       help="SIZE or HEIGHT,WIDTH; when not given: 67 for digits, else "
                            "the variant's 227 or 224")
    model.add_argument("--channels", type=int, metavar="{1,3}", default=None,
                       help="model input channels; the dataset's own when not given")

    train = parser.add_argument_group("training")
    train.add_argument("--strategy", metavar=_choices(config_lib.STRATEGIES),
                       default=defaults.train.strategy)
    train.add_argument("--cpu-replicas", type=int, default=None,
                       help="split the CPU into N logical devices for --strategy mirrored "
                            "(without GPUs)")
    train.add_argument("--all-reduce", metavar=_choices(config_lib.ALL_REDUCES),
                       default=defaults.train.all_reduce,
                       help="--strategy multiworker's collective implementation (auto: "
                            "NCCL on GPUs, ring otherwise)")
    train.add_argument("--all-reduce-pack-mb", type=float,
                       default=defaults.train.all_reduce_pack_mb,
                       help="all-reduce gradients in packs of this many MB (0: "
                            "TensorFlow's choice)")
    train.add_argument("--epochs", type=int, default=defaults.train.epochs)
    train.add_argument("--steps-per-epoch", type=int, default=None,
                       help="cap on training steps per epoch")
    train.add_argument("--batch-size", type=int, default=defaults.train.batch_size,
                       help="global batch size, split over the replicas")
    train.add_argument("--optimizer", metavar=_choices(config_lib.OPTIMIZERS),
                       default=defaults.train.optimizer)
    train.add_argument("--learning-rate", type=float, default=defaults.train.learning_rate)
    train.add_argument("--weight-decay", type=float, default=defaults.train.weight_decay,
                       help="L2 on the kernels (the paper: 5e-4)")
    train.add_argument("--lr-schedule", metavar=_choices(config_lib.LR_SCHEDULES),
                       default=defaults.train.lr_schedule,
                       help="plateau: the paper's divide-by-10 when validation loss stalls")
    train.add_argument("--seed", type=int, default=None,
                       help="make a single-replica run reproducible")
    train.add_argument("--output-dir", default=None,
                       help="run directory (runs/<timestamp> when not given); rerun with "
                            "the same one to resume")
    train.add_argument("--init-from", default=None,
                       help="start from the weights of a .keras file, a run directory or "
                            "an exported SavedModel; fc8 is new if the class count differs")
    train.add_argument("--freeze", metavar=_choices(config_lib.FREEZABLE_LAYERS),
                       default=None,
                       help="with --init-from: keep the layers up to this one fixed")
    # Switches have a --no- form too, to turn off what a --config turned on.
    train.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction,
                       default=defaults.train.mixed_precision,
                       help="float16 on GPUs, bfloat16 on CPUs and TPUs")
    train.add_argument("--jit-compile", action=argparse.BooleanOptionalAction,
                       default=defaults.train.jit_compile,
                       help="compile the training step with XLA")
    train.add_argument("--winograd", action=argparse.BooleanOptionalAction,
                       default=defaults.train.winograd,
                       help="on by default: 3x3 convolutions in the train step by Winograd "
                            "F(4x4,3x3) (float32 on CPUs, maps of whole 4x4 tiles); "
                            "--no-winograd computes them directly")

    tuning = parser.add_argument_group("tuning (keras-tuner)")
    tuning.add_argument("--tune", dest="tuner", metavar=_choices(config_lib.TUNERS),
                        default=None,
                        help="search hyperparameters first, then train with the best")
    tuning.add_argument("--max-trials", type=int, default=defaults.tune.max_trials,
                        help="trials of a random or bayesian search")
    tuning.add_argument("--tune-epochs", type=int, default=defaults.tune.tune_epochs,
                        help="epochs per trial (Hyperband: the most a trial gets)")
    tuning.add_argument("--tune-dir", default=None,
                        help="keras-tuner's directory (<output-dir>/tuning when not "
                             "given); reuse it to resume a search, share it across machines")
    tuning.add_argument("--tune-space", default=None,
                        help="JSON file replacing entries of the search space")
    tuning.add_argument("--hparams", default=None,
                        help="best_hparams.json of an earlier search: train with it, "
                             "no search")

    export = parser.add_argument_group("evaluation and export")
    export.add_argument("--export-dir", default=defaults.export.export_dir,
                        help="TF Serving base path; versions go in numbered subdirectories")
    export.add_argument("--bless-tolerance", type=float,
                        default=defaults.export.bless_tolerance,
                        help="push if test accuracy >= the served version's (and the best "
                             "kept version's) minus this")
    export.add_argument("--min-accuracy", type=float, default=defaults.export.min_accuracy,
                        help="push only at or above this test accuracy (0: no floor)")
    export.add_argument("--force-push", action=argparse.BooleanOptionalAction,
                        default=defaults.export.force_push,
                        help="export even if the model is worse than the served one")
    export.add_argument("--export-format", dest="export_formats", action="append",
                        metavar=_choices(config_lib.EXPORT_FORMATS), default=None,
                        help="saved_model (always); keras: model.keras, litert: "
                             "model.tflite (LiteRT), onnx: model.onnx (needs pip install -e "
                             "\".[export]\"), in the run directory, the last two the bare "
                             "network; repeatable")
    return parser


def _ingest_parser():
    parser = argparse.ArgumentParser(
        prog=_prog("ingest"), formatter_class=_HelpFormatter,
        description="Turn a dataset into sharded TFRecords with train/validation/test "
                    "splits.",
    )
    _add_verbose_flag(parser)
    _add_data_flags(parser, ingest_dir_flag="--output-dir")
    return parser


def _evaluate_parser():
    parser = argparse.ArgumentParser(
        prog=_prog("evaluate"), formatter_class=_HelpFormatter,
        description="Evaluate an export on a dataset through its serving signature.",
    )
    _add_verbose_flag(parser)
    parser.add_argument("--saved-model", required=True,
                        help="a version directory, or a base directory (its newest version)")
    _add_data_flags(parser)
    parser.add_argument("--split", default="test", metavar="{train,validation,test}")
    parser.add_argument("--output-dir", default="runs/evaluation",
                        help="where evaluation.json and the pictures go")
    return parser


def _predict_parser():
    parser = argparse.ArgumentParser(
        prog=_prog("predict"), formatter_class=_HelpFormatter,
        description="Classify images with a served or exported AlexNet.",
    )
    _add_verbose_flag(parser)
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


def _parse_run_args(parser, argv):
    """The run's flags, on top of the settings of `--config` when it is given."""
    args = parser.parse_args(argv)
    if args.config:
        # Through TensorFlow's file systems, as the run directory it came from
        # may be on gs:// or hdfs://.
        try:
            with tf.io.gfile.GFile(args.config) as file:
                text = file.read()
        except tf.errors.OpError as error:
            raise config_lib.ConfigError(
                f"cannot read `config` {args.config} ({config_lib.first_line(error)}); "
                "pass a run's config.json"
            ) from None
        recorded = config_lib.RunConfig.from_json(text, source=args.config)
        settings = {}
        for section in dataclasses.fields(recorded):
            settings.update(dataclasses.asdict(getattr(recorded, section.name)))
        # A new run: the recorded run directory is not resumed unless asked for.
        settings["output_dir"] = None
        # --export-format appends to its default, which must be a list.
        settings["export_formats"] = list(settings["export_formats"])
        parser.set_defaults(**settings)
        args = parser.parse_args(argv)
    return args


def _settings(config_class, args):
    """The fields of `config_class` that `args` sets, by name."""
    return {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if hasattr(args, field.name)
    }


def run_config(args):
    """The validated `RunConfig` the flags of `python -m pipeline.run` describe."""
    args.output_dir = args.output_dir or os.path.join(
        "runs", time.strftime("%Y%m%d-%H%M%S")
    )
    args.export_formats = tuple(dict.fromkeys(["saved_model", *(args.export_formats or [])]))
    return config_lib.RunConfig(**{
        part: config_class(**_settings(config_class, args))
        for part, config_class in (
            ("data", config_lib.DataConfig), ("model", config_lib.ModelConfig),
            ("train", config_lib.TrainConfig), ("export", config_lib.ExportConfig),
            ("tune", config_lib.TuneConfig),
        )
    })


def _run(args):
    metrics = run.run(run_config(args))
    if metrics is not None:
        print(_summary(metrics, args.output_dir), flush=True)


def _summary(metrics, run_dir):
    lines = [f"Test accuracy: {metrics['test_accuracy']:.4f}"]
    if "test_top5_accuracy" in metrics:
        lines[0] += f"   top-5: {metrics['test_top5_accuracy']:.4f}"
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
    metrics = evaluate.evaluate_export(
        args.saved_model, data_config, args.split, args.output_dir
    )
    temp_dirs.replace_file(os.path.join(args.output_dir, "evaluation.json"),
                           json.dumps(metrics, indent=2))
    print(f"Metrics and pictures are in {args.output_dir}")


def _predict(args):
    if args.top_k < 1:
        raise config_lib.ConfigError(f"`top_k` must be at least 1. Received: top_k={args.top_k}")
    results = predict.predict(
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
    "run": (_run_parser, _run),
    "ingest": (_ingest_parser, _ingest),
    "evaluate": (_evaluate_parser, _evaluate),
    "predict": (_predict_parser, _predict),
}


# Every name a library message may use for a setting.
_SETTINGS = frozenset(
    field.name
    for config_class in (config_lib.DataConfig, config_lib.ModelConfig,
                         config_lib.TrainConfig, config_lib.ExportConfig,
                         config_lib.TuneConfig)
    for field in dataclasses.fields(config_class)
) | {"saved_model", "split", "server", "grpc_target", "top_k", "config"}


def _as_flags(message, command):
    """A library message with its setting names (`name=value`, `` `name` ``) shown
    as the command's flags (`--name value`, `--name`)."""
    renamed = _FLAG_OF[command]

    def flag(match, suffix=""):
        name = match.group(1)
        if name not in _SETTINGS:
            return match.group(0)
        return renamed.get(name, "--" + name.replace("_", "-")) + suffix

    message = re.sub(r"`(\w+)`", flag, message)
    return re.sub(r"\b([a-z_]+)=(?=\S)", lambda match: flag(match, " "), message)


def main(command, argv=None):
    """Runs `command` ("run", "ingest", "evaluate" or "predict") on `argv`.

    Errors a user can cause print one line, `<prog>: error: <what and the fix>`,
    and return 2; anything else is a bug and keeps its traceback. Otherwise it
    returns the command's own status (predict: 1 if an image was not
    classified), else 0.
    """
    make_parser, execute = _COMMANDS[command]
    parser = make_parser()
    try:
        args = _parse_run_args(parser, argv) if command == "run" else parser.parse_args(argv)
    except config_lib.PipelineError as error:
        parser.error(_as_flags(str(error), command))
    # The pipeline's own progress at INFO; TensorFlow's and Keras' only when
    # they warn, or everything with --verbose.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    logging.getLogger("pipeline").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        status = execute(args)
    except config_lib.PipelineError as error:
        print(f"{parser.prog}: error: {_as_flags(str(error), command)}", file=sys.stderr)
        return 2
    return status or 0
