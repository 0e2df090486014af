"""The trainer: one custom training loop for every `tf.distribute` strategy.

Keras 3's `model.fit` fails under `MultiWorkerMirroredStrategy`
(keras-team/keras#20585), so training runs its own step through
`strategy.run` inside a `tf.function`, the same code on one CPU, several GPUs
or several machines. It prints Keras' progress bar, checkpoints every epoch
and inside epochs (`pipeline.training.checkpoints`) and resumes from the
newest checkpoint, at the step it was saved, and writes `history.csv`,
TensorBoard logs (see `pipeline.training.summaries`) and `training_curves.png`
to the run directory.
"""

import contextlib
import dataclasses
import logging
import math
import os
import sys
import time

import keras
import tensorflow as tf

from pipeline import plots
from pipeline.data import input_pipeline
from pipeline.data import service as data_service
from pipeline.errors import TrainingDiverged
from pipeline.storage import atomic
from pipeline.training import callbacks as callbacks_lib
from pipeline.training import checkpoints as checkpoints_lib
from pipeline.training import history
from pipeline.training import models
from pipeline.training import optimizers
from pipeline.training import summaries
from pipeline.training import train_steps
from pipeline.training import warm_start

log = logging.getLogger(__name__)


# Shown as given: the loop passes running means, not per-step values.
_SHOWN_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "images/s")


def _diverged(where, learning_rate):
    return TrainingDiverged(
        f"training diverged {where} at learning rate {learning_rate:g}; nothing was "
        "evaluated or exported, and the checkpoints keep the last epoch that ended finite; "
        "lower `learning_rate` and start a new `output_dir`"
    )


def _ran_out(epoch, step, steps, data_config):
    """The training data ended before the epoch's last step: only a data
    service whose worker was lost does that (DYNAMIC sharding loses the files
    it held; the local pipeline repeats)."""
    return checkpoints_lib.Retryable(
        f"the data service at {data_config.data_service} ran out after step {step} of "
        f"{steps} in epoch {epoch + 1} (a lost service "
        "worker loses the shards it was reading); run the same command again: it resumes "
        "from the last checkpoint"
    )


def fit(model, optimizer, strategy, train_config, data_config, ingested,
        initial_epoch=0, callbacks=(), checkpoints=None):
    """Trains `model` from `initial_epoch` to `train_config.epochs`; the epoch loop.

    Prints `Epoch k/N` and Keras' progress bar, validates after every epoch and
    calls the Keras `callbacks` (`on_epoch_end` gets `loss`, `accuracy`,
    `val_loss`, `val_accuracy`, `learning_rate` and `images_per_second`), so
    run-level bookkeeping and keras-tuner's callbacks plug in alike; a
    callback that sets `model.stop_training` (`keras.callbacks.EarlyStopping`,
    `TerminateOnNaN`) ends training after that epoch. Returns the logs of the
    epochs it ran.

    With `checkpoints` (a `RunCheckpoints` that has resumed), it starts at
    the step where they stand and saves inside epochs and when preempted.

    Raises `TrainingDiverged` at the first step whose loss is NaN or infinite,
    or after validation if its loss is, before that epoch's callbacks (and so
    its checkpoint) run; `checkpoints.Preempted` after a SIGTERM's save.
    """
    global_batch_size = train_config.batch_size
    steps = input_pipeline.steps_per_epoch(train_config, ingested, strategy.num_replicas_in_sync)

    def train_batches(epoch, skip_steps):
        # Each epoch's own dataset, seeded by the run's seed and the epoch: a
        # resumed run sees the batches the uninterrupted one saw.
        return iter(input_pipeline.distribute_dataset(
            strategy, ingested, "train", model.image_spec, global_batch_size,
            training=True, data_config=data_config,
            seed=input_pipeline.epoch_seed(train_config.seed, epoch), repeat=True,
            skip_steps=skip_steps,
        ))

    validation = input_pipeline.make_dataset(
        ingested, "validation", model.image_spec, global_batch_size, training=False
    )
    train_step = train_steps.make_train_step(
        model, optimizer, strategy, global_batch_size, train_config.weight_decay,
        train_config.jit_compile, train_config.winograd,
    )
    eval_step = train_steps.make_eval_step(model)
    callbacks = keras.callbacks.CallbackList(list(callbacks), model=model)
    interactive = sys.stdout.isatty()
    logs_per_epoch = []
    model.stop_training = False
    callbacks.on_train_begin()
    # A lost service worker can stall a job for good (pipeline.data.service).
    watchdog = data_service.Watchdog(
        data_config.data_service_timeout,
        f"error: no training step finished in {data_config.data_service_timeout:g} s with "
        f"the tf.data service at {data_config.data_service} (a service worker lost with "
        "unread shards stalls its job; so does a lost peer trainer); run the same command "
        f"to resume from the last checkpoint (exit status {checkpoints_lib.PREEMPTED_EXIT_STATUS})",
        checkpoints_lib.PREEMPTED_EXIT_STATUS) if data_config.data_service else None
    traced = False
    first_step = checkpoints.position.step if checkpoints else 0
    if first_step and train_config.seed is None and not data_config.data_service:
        log.warning("Resuming inside epoch %d without --seed: its remaining %d steps read "
                    "the epoch in a new order, so some of its examples train twice and some "
                    "not at all; --seed makes the resume exact", initial_epoch + 1,
                    steps - first_step)
    if first_step and data_config.data_service:
        log.warning("Resuming inside epoch %d with a data service: its remaining %d steps "
                    "read a new pass of the epoch (the service's order is not repeatable)",
                    initial_epoch + 1, steps - first_step)
    try:
        for epoch in range(initial_epoch, train_config.epochs):
            print(f"Epoch {epoch + 1}/{train_config.epochs}", flush=True)
            callbacks.on_epoch_begin(epoch)
            progress = keras.utils.Progbar(
                steps, verbose=1 if interactive else 2, unit_name="step",
                stateful_metrics=_SHOWN_METRICS,
            )
            # The last epoch's iterator goes first: one that stopped before the
            # end of a `cache` file still holds the file's lock.
            train_iterator = None
            if first_step < steps:
                train_iterator = train_batches(epoch, first_step)
            # A run resumed inside the epoch goes on with the sums it saved.
            loss_sum, correct, count = checkpoints.sums.values() if first_step else (0.0,) * 3
            warmed_up = time.perf_counter()
            for step in range(first_step, steps):
                try:
                    # Not the process's first step: it traces and compiles, for as
                    # long as the model and XLA take.
                    with watchdog if watchdog and traced else contextlib.nullcontext():
                        batch_loss, batch_correct, batch_count = train_step(train_iterator)
                    traced = True
                except tf.errors.OutOfRangeError:
                    raise _ran_out(epoch, step, steps, data_config) from None
                batch_loss = float(batch_loss)
                if not math.isfinite(batch_loss):
                    # As Keras' TerminateOnNaN: the weights are lost from here on.
                    # Every replica sees the same reduced loss, so all stop here.
                    raise _diverged(f"at epoch {epoch + 1}, step {step + 1}: the loss is "
                                    f"{batch_loss}", callbacks_lib.current_learning_rate(optimizer))
                loss_sum += batch_loss
                correct += float(batch_correct)
                count += float(batch_count)
                if step == first_step and steps - first_step > 1:
                    # The first step traces and compiles; images/s counts the rest.
                    warmed_up = time.perf_counter()
                if checkpoints:
                    checkpoints.after_step(epoch * steps + step + 1, (loss_sum, correct, count),
                                           last_of_epoch=step == steps - 1)
                if step < steps - 1:
                    progress.update(
                        step + 1, [("loss", loss_sum / count), ("accuracy", correct / count)]
                    )
            elapsed = time.perf_counter() - warmed_up
            # The rate at the end of the epoch (a schedule moves it within the
            # epoch; the plateau schedule moves it after, in the callbacks).
            learning_rate = callbacks_lib.current_learning_rate(optimizer)
            steps_run = steps - first_step
            timed_images = global_batch_size * (steps_run - 1 if steps_run > 1 else steps_run)
            if not timed_images:
                # Resumed after the epoch's last step, before its validation.
                elapsed = 0
            first_step = 0
            validation_metrics = train_steps.evaluate_dataset(eval_step, validation)
            if not math.isfinite(validation_metrics["loss"]):
                # The epoch's last updates broke the weights: not checkpointed.
                raise _diverged(f"in epoch {epoch + 1}: the validation loss is "
                                f"{validation_metrics['loss']}", learning_rate)
            logs = {
                "loss": loss_sum / count,
                "accuracy": correct / count,
                "val_loss": validation_metrics["loss"],
                "val_accuracy": validation_metrics["accuracy"],
                "learning_rate": learning_rate,
                "images_per_second": timed_images / elapsed if elapsed > 0 else float("nan"),
            }
            progress.update(
                steps,
                [(key, logs[key]) for key in ("loss", "accuracy", "val_loss", "val_accuracy")]
                + [("images/s", logs["images_per_second"])],
                finalize=True,
            )
            logs_per_epoch.append(logs)
            callbacks.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
    finally:
        if watchdog:
            watchdog.stop()
    callbacks.on_train_end()
    return logs_per_epoch


def _random_states(model):
    """The model's random-number state (its dropout layers' seed generators):
    Keras keeps it apart from the weights, and a checkpoint without it would
    resume with other dropout masks than the uninterrupted run."""
    weights = {id(variable) for variable in model.non_trainable_weights}
    return [variable for variable in model.non_trainable_variables
            if id(variable) not in weights]


@dataclasses.dataclass
class TrainResult:
    """The trained model, every epoch's `history.csv` row, and where this run began."""

    model: keras.Model
    history: list
    initial_epoch: int
    epochs: int
    # What `init_from` loaded, when this process started the run from it.
    warm_start: "warm_start.WarmStart | None" = None
    # The epoch (from 1) after which early stopping ended the run, if it did.
    stopped_after: int | None = None

    @property
    def finished_before(self):
        """Whether the run had no epoch left to train when this process began."""
        return self.initial_epoch == self.epochs or self.stopped_after == self.initial_epoch

    def summary(self):
        """The figures `metrics.json` reports of training."""
        last = self.history[-1] if self.history else {}
        speed = last.get("images_per_second")
        # NaN (an epoch resumed after its last step timed nothing) is not JSON.
        speed = speed if speed is None or math.isfinite(speed) else None
        summary = {"images_per_second": speed, "epochs": self.epochs,
                   "resumed_from_epoch": self.initial_epoch,
                   "stopped_early_after_epoch": self.stopped_after}
        if self.warm_start:
            summary["warm_start"] = dataclasses.asdict(self.warm_start)
        return summary


def train(strategy, chief, model_config, train_config, data_config, ingested, run_dir):
    """Trains AlexNet on the ingested data under `strategy`; resumes if it can.

    `run_dir` receives `history.csv`, `training_curves.png`, TensorBoard logs
    and the run's hyperparameters under `logs/` and checkpoints under
    `checkpoints/`. Every worker of a multi-worker run checkpoints into its
    own run directory, and all resume from the newest checkpoint that each of
    them holds; a worker other than the chief removes its checkpoints once
    training is done. SIGTERM stops it at the next step, saved
    (`checkpoints.Preempted`).
    Returns the trained model, the whole history and the epoch it started from.
    """
    steps = input_pipeline.steps_per_epoch(train_config, ingested, strategy.num_replicas_in_sync)
    with strategy.scope():
        model = models.build_model(model_config, ingested.num_classes)
        if train_config.freeze:
            warm_start.freeze(model, train_config.freeze)
        plateau = callbacks_lib.Plateau()
        optimizer = optimizers.make_optimizer(train_config, steps, model.trainable_variables,
                                              plateau.reductions)
        early_stopping = (callbacks_lib.EarlyStopping(train_config.early_stopping)
                          if train_config.early_stopping else None)
    tracked = dict(
        model=model, optimizer=optimizer, random_states=_random_states(model),
        **plateau.trackables(), **(early_stopping.trackables() if early_stopping else {})
    )
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    # A save that died half-way (a kill, a full disk) is not resumed from; the
    # run directory is this process's (run_dir.claimed), so nothing writes there.
    checkpoints_lib.remove_partial(checkpoint_dir)
    checkpoints = checkpoints_lib.RunCheckpoints(
        tracked, checkpoint_dir, steps, strategy, train_config.checkpoint_every_steps,
        train_config.checkpoint_every_minutes)
    position = checkpoints.resume()
    initial_epoch = position.epoch
    started_from = None
    if position == checkpoints_lib.Position() and train_config.init_from:
        started_from = warm_start.load(model, train_config.init_from)
    rows = history.epochs_up_to(os.path.join(run_dir, "history.csv"), initial_epoch)
    callbacks = [
        summaries.TensorBoard(summaries.log_dir(run_dir)),
        summaries.hparams_callback(run_dir, model, train_config),
        callbacks_lib.HistoryRecorder(run_dir, rows),
    ]
    if train_config.lr_schedule == "plateau":
        callbacks.append(callbacks_lib.PlateauSchedule(plateau, optimizer))
    if early_stopping:
        callbacks.append(early_stopping)
    callbacks.append(callbacks_lib.Checkpointer(checkpoints))

    def stopped_after():
        if early_stopping is None:
            return None
        return int(early_stopping.stopped_after.numpy()) or None

    if stopped_after():
        log.info("%s stopped early after epoch %d: nothing is left to train", run_dir,
                 stopped_after())
    else:
        checkpoints.watch_preemption()
        try:
            fit(model, optimizer, strategy, train_config, data_config, ingested,
                initial_epoch, callbacks, checkpoints)
        finally:
            checkpoints.close()
        checkpoints.remove_step_checkpoints()
    if not chief:
        # Only the chief's checkpoints outlive the run; a killed worker's are
        # what its next run resumes from, and that run removes them.
        atomic.remove(checkpoint_dir)
    if rows:
        plots.training_curves(rows, os.path.join(run_dir, "training_curves.png"))
    return TrainResult(model, rows, initial_epoch, train_config.epochs, started_from,
                       stopped_after())
