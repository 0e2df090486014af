"""The whole pipeline: ingest -> train -> evaluate -> bless -> export.

    python -m pipeline.run --strategy mirrored

With no other flag it trains the paper's AlexNet on the embedded `digits`
dataset and exports it to `saved_models/alexnet/<version>/`. `--help` lists
every flag; README.md explains what they are for.
"""

if __name__ == "__main__":
    # A command, not an import: set the process up before TensorFlow loads.
    from pipeline import environment

    environment.prepare()

import dataclasses
import json
import logging
import os
import sys
import time

import tensorflow as tf

from pipeline import distribute
from pipeline import evaluate
from pipeline import export
from pipeline import export_runtimes
from pipeline import ingest
from pipeline import model_factory
from pipeline import run_dir as run_dir_lib
from pipeline import summaries
from pipeline import temp_dirs
from pipeline import train
from pipeline import tune

log = logging.getLogger("pipeline.run")


def run(config):
    """Runs every stage in order; returns the metrics written to `metrics.json`
    (None on a keras-tuner worker, which stops after the search)."""
    # A missing converter is found now, not after training.
    export_runtimes.check_installed(config.export.export_formats)
    with run_dir_lib.claimed(config.train.output_dir) as run_dir:
        return _run(config, run_dir)


def _run(config, run_dir):
    start = time.perf_counter()
    # The strategy comes first: splitting the CPU into logical devices must
    # happen before any TensorFlow op runs.
    strategy = distribute.make_strategy(
        config.train.strategy, config.train.cpu_replicas, config.train.all_reduce,
        config.train.all_reduce_pack_mb,
    )
    chief = distribute.is_chief(strategy)
    model_factory.set_global_options(config.train, strategy)

    # ExampleGen: the source as sharded TFRecords with a manifest.
    ingested = ingest.ingest(config.data, config.data.ingest_dir
                             or ingest.default_ingest_dir(config.data.dataset))
    config = dataclasses.replace(config, model=model_factory.resolve(config.model, ingested))

    # Tuner: the settings with the best hyperparameters of a search or of an
    # earlier one; the defaults stand when neither is asked for.
    config = tune.tuned_config(config, strategy, ingested, run_dir)
    if config is None:
        log.info("This tuning worker is done; the chief trains and exports the final model")
        return None
    run_dir_lib.check_resumable(run_dir, config, ingested)

    # Trainer: the custom distributed loop, resumable from the run directory.
    trained = train.train(strategy, chief, config.model, config.train, config.data,
                          ingested, run_dir)
    metrics_path = os.path.join(run_dir, "metrics.json")
    if trained.initial_epoch == config.train.epochs and tf.io.gfile.exists(metrics_path):
        # Trained, evaluated and pushed already: nothing to do again.
        with tf.io.gfile.GFile(metrics_path) as file:
            metrics = json.load(file)
        log.info("%s is a complete run of %d epochs (exported as %s); a larger `epochs` "
                 "extends it, a new `output_dir` starts another", run_dir,
                 config.train.epochs, metrics.get("export_path"))
        return metrics

    # What is evaluated is what is served: every export is float32, so a
    # model trained in bfloat16 is copied once here, and its test accuracy,
    # blessing and exports are all of the copy.
    model = model_factory.float32_copy(trained.model)

    # Evaluator: test-split metrics and pictures on every worker (the same
    # weights, so the same metrics), also in TensorBoard at the last epoch; the
    # chief, which exports, also compares with the served version.
    metrics = evaluate.evaluate(model, ingested, run_dir)
    summaries.write_evaluation(run_dir, config.train.epochs - 1, metrics["test_accuracy"])
    blessing = evaluate.bless(
        metrics["test_accuracy"], config.export.export_dir, ingested,
        config.export.bless_tolerance, config.export.force_push, config.export.min_accuracy,
    ) if chief else evaluate.Blessing.not_chief()

    # Pusher: a new version directory for TF Serving, from the chief only.
    pushed = export.push(model, ingested, config.export, run_dir, chief,
                         blessing.blessed)

    metrics.update(dataclasses.asdict(blessing), **dataclasses.asdict(pushed),
                   **trained.summary(), wall_time_seconds=time.perf_counter() - start)
    temp_dirs.replace_file(metrics_path, json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


if __name__ == "__main__":
    from pipeline import cli

    sys.exit(cli.main("run"))
