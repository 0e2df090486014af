"""The whole pipeline: ingest -> train -> evaluate -> bless -> export.

    python -m pipeline.run --strategy mirrored

With no other flag it trains the paper's AlexNet on the embedded `digits`
dataset and exports it to `saved_models/alexnet/<version>/`. `--help` lists
every flag; README.md explains what they are for.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

from alexnet_keras import alexnet
from pipeline import config as config_lib
from pipeline import distribute
from pipeline import evaluate
from pipeline import export
from pipeline import ingest
from pipeline import model_factory
from pipeline import train
from pipeline import tune
from pipeline.config import PipelineError

log = logging.getLogger("pipeline.run")


def _image_size(text):
    try:
        parts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH, got {text!r}")
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHT,WIDTH, got {text!r}")
    return tuple(parts * 2 if len(parts) == 1 else parts)


def build_parser():
    defaults = config_lib.RunConfig()
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Train AlexNet and export it for TensorFlow Serving.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    ingest.add_source_arguments(data)
    data.add_argument("--image-size", type=_image_size, default=None,
                      help="SIZE or HEIGHT,WIDTH (default: 67 for digits, else the "
                           "variant's 227 or 224)")
    data.add_argument("--channels", type=int, choices=(1, 3), default=None,
                      help="model input channels (default: the dataset's own)")
    data.add_argument("--cache", default=None,
                      help="cache decoded examples: 'memory' or a file path")
    data.add_argument("--pca-noise", action="store_true",
                      help="the paper's PCA colour augmentation (colour data)")

    model = parser.add_argument_group("model")
    model.add_argument("--variant", choices=alexnet.VARIANTS, default=defaults.model.variant)
    model.add_argument("--dropout-rate", type=float, default=defaults.model.dropout_rate)
    model.add_argument("--normalization", choices=alexnet.NORMALIZATIONS, default=None,
                       help="default: the variant's own (lrn for paper, none for d2l)")

    train = parser.add_argument_group("training")
    train.add_argument("--strategy", choices=config_lib.STRATEGIES,
                       default=defaults.train.strategy)
    train.add_argument("--cpu-replicas", type=int, default=None,
                       help="split the CPU into N logical devices for --strategy mirrored "
                            "(without GPUs)")
    train.add_argument("--epochs", type=int, default=defaults.train.epochs)
    train.add_argument("--steps-per-epoch", type=int, default=None,
                       help="cap on training steps per epoch")
    train.add_argument("--batch-size", type=int, default=defaults.train.batch_size,
                       help="global batch size, split over the replicas")
    train.add_argument("--optimizer", choices=config_lib.OPTIMIZERS,
                       default=defaults.train.optimizer)
    train.add_argument("--learning-rate", type=float, default=defaults.train.learning_rate)
    train.add_argument("--weight-decay", type=float, default=defaults.train.weight_decay,
                       help="L2 on the kernels (the paper: 5e-4)")
    train.add_argument("--lr-schedule", choices=config_lib.LR_SCHEDULES,
                       default=defaults.train.lr_schedule,
                       help="plateau: the paper's divide-by-10 when validation loss stalls")
    train.add_argument("--seed", type=int, default=None,
                       help="make a single-replica run reproducible")
    train.add_argument("--output-dir", default=None,
                       help="run directory (default: runs/<timestamp>); rerun with the "
                            "same one to resume")
    train.add_argument("--mixed-precision", action="store_true",
                       help="float16 on GPUs, bfloat16 on CPUs and TPUs")
    train.add_argument("--jit-compile", action="store_true",
                       help="compile the training step with XLA")

    tuning = parser.add_argument_group("tuning (keras-tuner)")
    tuning.add_argument("--tune", choices=config_lib.TUNERS, default=None,
                        help="search hyperparameters first, then train with the best")
    tuning.add_argument("--max-trials", type=int, default=defaults.tune.max_trials,
                        help="trials of a random or bayesian search")
    tuning.add_argument("--tune-epochs", type=int, default=defaults.tune.epochs,
                        help="epochs per trial (Hyperband: the most a trial gets)")
    tuning.add_argument("--tune-dir", default=None,
                        help="keras-tuner's directory (default: <output-dir>/tuning); "
                             "reuse it to resume a search, share it across machines")
    tuning.add_argument("--tune-space", default=None,
                        help="JSON file replacing entries of the search space")
    tuning.add_argument("--hparams", default=None,
                        help="best_hparams.json of an earlier search: train with it, no search")

    export = parser.add_argument_group("evaluation and export")
    export.add_argument("--export-dir", default=defaults.export.export_dir,
                        help="TF Serving base path; versions go in numbered subdirectories")
    export.add_argument("--bless-tolerance", type=float,
                        default=defaults.export.bless_tolerance,
                        help="push if test accuracy >= the served version's minus this")
    export.add_argument("--force-push", action="store_true",
                        help="export even if the model is worse than the served one")
    export.add_argument("--export-format", action="append",
                        choices=config_lib.EXPORT_FORMATS, default=None,
                        help="saved_model (always) and/or keras (a .keras file in the run "
                             "directory); repeatable")
    return parser


def config_from_args(args):
    """The validated `RunConfig` that the flags describe."""
    output_dir = args.output_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    return config_lib.RunConfig(
        data=config_lib.DataConfig(
            **ingest.source_settings(args), cache=args.cache, pca_noise=args.pca_noise,
        ),
        model=config_lib.ModelConfig(
            variant=args.variant, dropout_rate=args.dropout_rate,
            normalization=args.normalization, image_size=args.image_size,
            channels=args.channels,
        ),
        train=config_lib.TrainConfig(
            strategy=args.strategy, cpu_replicas=args.cpu_replicas, epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
            optimizer=args.optimizer, learning_rate=args.learning_rate,
            weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, seed=args.seed,
            mixed_precision=args.mixed_precision, jit_compile=args.jit_compile,
            output_dir=output_dir,
        ),
        export=config_lib.ExportConfig(
            export_dir=args.export_dir, bless_tolerance=args.bless_tolerance,
            force_push=args.force_push,
            export_formats=tuple(dict.fromkeys(["saved_model", *(args.export_format or [])])),
        ),
        tune=config_lib.TuneConfig(
            tuner=args.tune, max_trials=args.max_trials, epochs=args.tune_epochs,
            tune_dir=args.tune_dir, space_file=args.tune_space, hparams_file=args.hparams,
        ),
    )


def run(config):
    """Runs every stage in order; returns the metrics written to `metrics.json`
    (None on a keras-tuner worker, which stops after the search)."""
    start = time.perf_counter()
    run_dir = config.train.output_dir
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as error:
        raise config_lib.ConfigError(
            f"cannot create the run directory {run_dir} ({error.strerror}); choose "
            "another --output-dir"
        ) from None

    # The strategy comes first: splitting the CPU into logical devices must
    # happen before any TensorFlow op runs.
    strategy = distribute.make_strategy(config.train.strategy, config.train.cpu_replicas)
    chief = distribute.is_chief(strategy)
    log.info("Strategy %s with %d replica(s)", config.train.strategy,
             strategy.num_replicas_in_sync)

    # ExampleGen: the source as sharded TFRecords with a manifest.
    ingest_dir = config.data.ingest_dir or ingest.default_ingest_dir(config.data.dataset)
    ingested = ingest.ingest(config.data, ingest_dir)
    config = dataclasses.replace(config, model=model_factory.resolve(config.model, ingested))

    # Tuner: the best hyperparameters of a search, or of an earlier one; the
    # defaults stand when neither is asked for.
    if config.tune.hparams_file:
        config = tune.apply_hparams(config, tune.load_hparams(config.tune.hparams_file))
    elif config.tune.tuner:
        best = tune.tune(config, strategy, ingested, run_dir)
        if best is None:
            log.info("This tuning worker is done; the chief trains and exports the final model")
            return None
        config = tune.apply_hparams(config, best)
    with open(os.path.join(run_dir, "config.json"), "w") as file:
        file.write(config.to_json())

    # Trainer: the custom distributed loop, resumable from the run directory.
    result = train.train(
        strategy, config.model, config.train, config.data, ingested, run_dir
    )

    # Evaluator: test-split metrics and pictures, then the comparison with the
    # newest served version (blessing).
    # Every worker evaluates (the same weights, so the same metrics); only the
    # chief, which exports, compares with the served version.
    metrics = evaluate.evaluate(result.model, ingested, run_dir)
    if chief:
        blessing = evaluate.bless(
            metrics["test_accuracy"], config.export.export_dir, ingested,
            config.export.bless_tolerance, config.export.force_push,
        )
    else:
        blessing = {"blessed": False,
                    "reason": "this worker is not the chief, which blesses and exports"}
    metrics.update(blessing)

    # Pusher: a new version directory for TF Serving, from the chief only.
    metrics["export_path"] = None
    if blessing["blessed"]:
        # TF Serving replays a few real test images before it serves the version.
        warmup_images, _ = next(ingested.encoded_batches("test", batch_size=3))
        metrics["export_path"] = export.export_saved_model(
            result.model, ingested.class_names, config.export.export_dir,
            warmup_images=list(warmup_images),
        )
    if chief and "keras" in config.export.export_formats:
        metrics["keras_path"] = export.export_keras(
            result.model, os.path.join(run_dir, "model.keras")
        )
    last = result.history[-1] if result.history else {}
    metrics.update(
        {
            "images_per_second": last.get("images_per_second"),
            "wall_time_seconds": time.perf_counter() - start,
            "epochs": config.train.epochs,
            "resumed_from_epoch": result.initial_epoch,
        }
    )
    with open(os.path.join(run_dir, "metrics.json"), "w") as file:
        json.dump(metrics, file, indent=2, sort_keys=True)
    _print_summary(metrics, run_dir)
    return metrics


def _print_summary(metrics, run_dir):
    lines = [f"Test accuracy: {metrics['test_accuracy']:.4f}"]
    if "test_top5_accuracy" in metrics:
        lines[0] += f"   top-5: {metrics['test_top5_accuracy']:.4f}"
    if metrics["images_per_second"] is not None:
        lines.append(f"Training speed: {metrics['images_per_second']:.1f} images/s "
                     "(last epoch)")
    lines.append(f"Wall time: {metrics['wall_time_seconds']:.0f} s")
    lines.append(f"Run directory: {run_dir}")
    if metrics["export_path"]:
        lines.append(f"Exported for TF Serving: {metrics['export_path']} ({metrics['reason']})")
    else:
        lines.append(f"Not exported: {metrics['reason']}")
    print("\n".join(lines), flush=True)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # The pipeline's own progress at INFO; TensorFlow's and Keras' only when
    # they warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("pipeline").setLevel(logging.INFO)
    try:
        run(config_from_args(args))
        return 0
    except PipelineError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
