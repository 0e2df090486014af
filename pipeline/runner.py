"""The wiring: each stage's entry point, called in order, passing typed artifacts.

    ingest -> tune -> train -> evaluate -> bless -> push

`run` is what `python -m pipeline.run` does; `evaluate_export` is `python -m
pipeline.evaluate`, `export_model_file` `python -m pipeline.export`. Nothing
here computes: it connects the stages.
"""

import dataclasses
import json
import logging
import os
import time

import tensorflow as tf

from pipeline.config import DataConfig
from pipeline.data import file_sources
from pipeline.data import ingest
from pipeline.data import service as data_service
from pipeline.errors import ConfigError
from pipeline.errors import PipelineError
from pipeline.evaluation import metrics as metrics_lib
from pipeline.serving import blessing as blessing_lib
from pipeline.serving import builder
from pipeline.serving import contract
from pipeline.serving import pusher
from pipeline.serving import runtimes
from pipeline.storage import atomic
from pipeline.storage import run_dir as run_dir_lib
from pipeline.storage import saved_models
from pipeline.training import distribute
from pipeline.training import loop
from pipeline.training import lr_finder
from pipeline.training import models
from pipeline.training import precision
from pipeline.training import summaries
from pipeline.tuning import tuner

log = logging.getLogger("pipeline.run")


def run(config):
    """Runs every stage in order; returns the metrics written to `metrics.json`
    (None on a keras-tuner worker, which stops after the search)."""
    # A missing converter or an absent data service is found now, not later.
    runtimes.check_installed(config.export.export_formats)
    if config.data.data_service:
        if config.data.cache:
            # Each service worker would write (and lock) the same cache file.
            raise ConfigError("`cache` is local to a trainer: drop it with `data_service`, "
                              "whose workers decode every epoch")
        data_service.check_reachable(config.data.data_service)
    config = _with_task_output_dir(config)
    with run_dir_lib.claimed(config.train.output_dir) as run_dir:
        return _run(config, run_dir)


def _with_task_output_dir(config):
    """`config` with this task's own run directory inside a multi-worker run's
    one `output_dir` (`distribute.task_output_dir`)."""
    output_dir = distribute.task_output_dir(config.train.output_dir, config.train.strategy)
    return dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                 output_dir=output_dir))


def find_learning_rate(config):
    """The learning-rate range test of the run `config` describes
    (`pipeline.training.lr_finder`), in its run directory; returns the
    `RangeTest` and the directory."""
    if config.tune.tuner or config.tune.hparams:
        raise ConfigError("`find_lr` tests the rates of the settings given, not of a search's "
                          "(`tuner`, `hparams`): give the hyperparameters as flags instead")
    config = _with_task_output_dir(config)
    with run_dir_lib.claimed(config.train.output_dir) as run_dir:
        strategy = distribute.make_strategy(
            config.train.strategy, config.train.cpu_replicas, config.train.all_reduce,
            config.train.all_reduce_pack_mb,
        )
        precision.set_global_options(config.train, strategy)
        ingested = ingest.ingest(config.data, config.data.ingest_dir
                                 or ingest.default_ingest_dir(config.data.dataset))
        model_config = models.resolve(config.model, ingested)
        return lr_finder.find(strategy, model_config, config.train, config.data, ingested,
                              run_dir), run_dir


def _run(config, run_dir):
    start = time.perf_counter()
    # The strategy comes first: splitting the CPU into logical devices must
    # happen before any TensorFlow op runs.
    strategy = distribute.make_strategy(
        config.train.strategy, config.train.cpu_replicas, config.train.all_reduce,
        config.train.all_reduce_pack_mb,
    )
    chief = distribute.is_chief(strategy)
    precision.set_global_options(config.train, strategy)

    # ExampleGen: the source as sharded TFRecords with a manifest.
    ingested = ingest.ingest(config.data, config.data.ingest_dir
                             or ingest.default_ingest_dir(config.data.dataset))
    config = dataclasses.replace(config, model=models.resolve(config.model, ingested))

    # Tuner: the settings with the best hyperparameters of a search or of an
    # earlier one; the defaults stand when neither is asked for.
    config = tuner.tuned_config(config, strategy, ingested, run_dir)
    if config is None:
        log.info("This tuning worker is done; the chief trains and exports the final model")
        return None
    run_dir_lib.check_resumable(run_dir, config, ingested)

    # Trainer: the custom distributed loop, resumable from the run directory.
    trained = loop.train(strategy, chief, config.model, config.train, config.data,
                         ingested, run_dir)
    metrics_path = os.path.join(run_dir, "metrics.json")
    if trained.finished_before and tf.io.gfile.exists(metrics_path):
        # Trained, evaluated and pushed already: nothing to do again.
        with tf.io.gfile.GFile(metrics_path) as file:
            metrics = json.load(file)
        if trained.stopped_after:
            log.info("%s is a complete run, stopped early after epoch %d (exported as %s); "
                     "a new `output_dir` starts another", run_dir, trained.stopped_after,
                     metrics.get("export_path"))
        else:
            log.info("%s is a complete run of %d epochs (exported as %s); a larger `epochs` "
                     "extends it, a new `output_dir` starts another", run_dir,
                     config.train.epochs, metrics.get("export_path"))
        return metrics

    # What is evaluated is what is served: every export is float32, so a
    # model trained in bfloat16 is copied once here, and its test accuracy,
    # blessing and exports are all of the copy.
    model = precision.float32_copy(trained.model)

    # Evaluator: test-split metrics and pictures on every worker (the same
    # weights, so the same metrics), also in TensorBoard at the last epoch; the
    # chief, which exports, also compares with the served version.
    metrics = metrics_lib.evaluate(model, ingested, run_dir, ten_crop=config.export.ten_crop)
    summaries.write_evaluation(run_dir, config.train.epochs - 1, metrics["test_accuracy"],
                               metrics.get("test_ten_crop_accuracy"))
    blessing = blessing_lib.bless(
        metrics["test_accuracy"], config.export.export_dir, ingested,
        config.export.bless_tolerance, config.export.force_push, config.export.min_accuracy,
    ) if chief else blessing_lib.Blessing.not_chief()

    # Pusher: a new version directory for TF Serving, from the chief only.
    pushed = pusher.push(model, ingested, config.export, run_dir, chief,
                         blessing.blessed, config.data.max_pixels)

    metrics.update(dataclasses.asdict(blessing), **dataclasses.asdict(pushed),
                   **trained.summary(), wall_time_seconds=time.perf_counter() - start)
    atomic.replace_file(metrics_path, json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def evaluate_export(saved_model, data_config, split, output_dir, ten_crop=True):
    """Metrics of an export on a split of `data_config`'s dataset (ingested first,
    or an earlier ingest reused), measured through its `serving_default` (and
    with `ten_crop` its `serving_ten_crop` too, where the export has it), with
    the pictures written to `output_dir`."""
    version_dir = saved_models.resolve_saved_model(saved_model)
    ingest_dir = data_config.ingest_dir or ingest.default_ingest_dir(data_config.dataset)
    ingested = ingest.ingest(data_config, ingest_dir)
    loaded, signature = contract.load_serving_signature(version_dir)
    num_outputs = signature.structured_outputs["probabilities"].shape[-1]
    if num_outputs != ingested.num_classes:
        raise PipelineError(
            f"{version_dir} has {num_outputs} classes but {data_config.dataset} has "
            f"{ingested.num_classes}; evaluate it on the dataset it was trained for"
        )

    def probabilities_from(serving_function):
        def predict_fn(image_bytes):
            return serving_function(**{contract.BYTES_INPUT: image_bytes})["probabilities"]
        return predict_fn

    ten_crop_fn = None
    if ten_crop and contract.TEN_CROP_SIGNATURE in loaded.signatures:
        ten_crop_fn = probabilities_from(loaded.signatures[contract.TEN_CROP_SIGNATURE])
    elif ten_crop:
        log.warning("%s has no %s signature (an export older than it): the ten-crop test "
                    "is skipped", version_dir, contract.TEN_CROP_SIGNATURE)
    log.info("Evaluating %s on the %s split of %s", version_dir, split, data_config.dataset)
    metrics = metrics_lib.evaluate_encoded(probabilities_from(signature), ingested, output_dir,
                                           split, ten_crop_fn)
    metrics.update(saved_model=version_dir, dataset=data_config.dataset, split=split)
    return metrics


def export_model_file(path, export_dir, class_names=None, max_pixels=DataConfig.max_pixels):
    """A `.keras` AlexNet (trained here, or converted from torchvision's
    ImageNet weights) as the next TF Serving version in `export_dir`, with its
    own class names or `class_names` (a file or a comma-separated list),
    refusing images over `max_pixels`."""
    model = models.load_model_file(path, "model")
    if class_names:
        names = file_sources.read_class_names(class_names)
    elif model.class_names:
        names = list(model.class_names)
    else:
        raise PipelineError(f"{path} carries no class names; give `class_names`")
    return builder.export_saved_model(model, names, export_dir, max_pixels=max_pixels)
