"""The run's checkpoints, where a resumed run starts, and preemption.

    checkpoints/ckpt-<epoch>        after epoch <epoch>: validated, its callbacks run
    checkpoints/steps/ckpt-<step>   after <step> training steps of the run, inside
                                    an epoch: every `checkpoint_every_steps`, every
                                    `checkpoint_every_minutes`, and when preempted

A step checkpoint also holds the epoch's running sums of loss and accuracy,
so that the epoch's `history.csv` row is the one an uninterrupted run writes;
with the input pipeline's `skip_steps` and the checkpointed random state,
a seeded run resumed inside an epoch trains every step the uninterrupted one
would, on the same batches.

On SIGTERM (Kubernetes' notice before it stops a pod) the run saves at the
next step boundary; under `MultiWorkerMirroredStrategy` TensorFlow's
`PreemptionCheckpointHandler` picks a step every worker saves at, at most two
steps on. The run then stops with `Preempted`: the command line exits with
status 138, which
Kubeflow's training operator restarts (`restartPolicy: ExitCode`), and the
same command resumes there.
"""

import dataclasses
import logging
import os
import signal
import time

import tensorflow as tf

from pipeline.errors import PipelineError
from pipeline.errors import first_line
from pipeline.storage import atomic

log = logging.getLogger(__name__)

# 128 + SIGUSR1: the exit status Kubeflow's training operator keeps for a
# retryable error of the user's own. Its ExitCode policy restarts it in every
# release (older ones: 130, 137, 138 and 143 only; newer: every status from
# 128) and never restarts 2, this package's status for a user's error.
PREEMPTED_EXIT_STATUS = 138
STEPS_DIR = "steps"
# Checkpoints kept of each kind, per worker: the last two, so that workers
# killed between one checkpoint's saves still share one of them.
KEPT = 2
# Under MultiWorkerMirroredStrategy the workers agree on a timed save, with a
# collective, once in this many steps rather than at every one.
_TIME_CHECK_STEPS = 10


class Retryable(PipelineError):
    """The run stopped for a cause outside it, and the same command resumes it."""

    exit_status = PREEMPTED_EXIT_STATUS


class Preempted(Retryable):
    """The run was asked to stop (SIGTERM) and saved where it was."""


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands: `epoch` epochs done and `step` steps of the next one
    trained (`step` may be every step of it, not yet validated)."""

    epoch: int = 0
    step: int = 0


class EpochSums:
    """The epoch's running loss, correct count and example count so far."""

    def __init__(self):
        self.variables = {name: tf.Variable(0.0, dtype=tf.float64, trainable=False)
                          for name in ("loss_sum", "correct", "count")}

    def assign(self, loss_sum, correct, count):
        for variable, value in zip(self.variables.values(), (loss_sum, correct, count)):
            variable.assign(value)

    def values(self):
        return tuple(float(variable.numpy()) for variable in self.variables.values())


def _position(key, steps_per_epoch):
    """The `Position` of a key: positions as comparable numbers are twice the
    steps trained, plus one after the epoch's validation (its epoch
    checkpoint comes after the step checkpoint of its last step)."""
    steps, epoch_end = divmod(key, 2)
    if epoch_end or steps == 0:
        return Position(steps // steps_per_epoch)
    epoch = (steps - 1) // steps_per_epoch
    return Position(epoch, steps - epoch * steps_per_epoch)


def newest_common(keys_per_worker):
    """The newest key every worker holds, 0 (the start) if there is none;
    each worker's list may be padded with zeros."""
    return max(set.intersection(*(set(keys) for keys in keys_per_worker)) | {0})


def _numbers(manager):
    return [int(path.rsplit("-", 1)[1]) for path in manager.checkpoints][-KEPT:]


def remove_partial(checkpoint_dir):
    """Removes what saves that failed half-way left: TensorFlow writes a
    checkpoint's shards into `ckpt-N_temp...` and renames them into place."""
    for directory in (checkpoint_dir, os.path.join(checkpoint_dir, STEPS_DIR)):
        if tf.io.gfile.isdir(directory):
            for name in tf.io.gfile.listdir(directory):
                name = name.rstrip("/")
                if name.startswith("ckpt-") and "_temp" in name:
                    atomic.remove(os.path.join(directory, name))


class RunCheckpoints:
    """Saves and finds the run's checkpoints (see the module's note).

    `tracked` is what a checkpoint holds (the model, the optimizer, ...);
    a step checkpoint holds `sums` too. `strategy` decides how workers agree.
    """

    def __init__(self, tracked, directory, steps_per_epoch, strategy,
                 every_steps=None, every_minutes=None):
        self.directory = directory
        self.steps_per_epoch = steps_per_epoch
        self.strategy = strategy
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self.sums = EpochSums()
        self.epochs = tf.train.CheckpointManager(
            tf.train.Checkpoint(**tracked), directory, max_to_keep=KEPT)
        self.steps = tf.train.CheckpointManager(
            tf.train.Checkpoint(**tracked, epoch_sums=self.sums.variables),
            os.path.join(directory, STEPS_DIR), max_to_keep=KEPT)
        self.position = Position()
        self._global_step = 0
        self._sums = (0.0, 0.0, 0.0)
        self._last_save = time.monotonic()
        self._handler = None
        self._sigterm = None

    @property
    def multi_worker(self):
        return isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def resume(self):
        """Restores the newest checkpoint every worker holds and returns its
        `Position` (the start if there is none); raises `PipelineError` if it
        is of another model."""
        keys = [2 * epoch * self.steps_per_epoch + 1 for epoch in _numbers(self.epochs)]
        keys += [2 * step for step in _numbers(self.steps)]
        padded = tf.constant(keys + [0] * (2 * KEPT - len(keys)), tf.int64)
        if self.multi_worker:
            # Each worker keeps its own checkpoints (no shared file system is
            # needed), and one killed before a save holds one less.
            per_replica = self.strategy.experimental_distribute_values_from_function(
                lambda context: padded)
            padded = self.strategy.gather(per_replica, axis=0)
        key = newest_common(tf.reshape(padded, [-1, 2 * KEPT]).numpy().tolist())
        self.position = _position(key, self.steps_per_epoch)
        if key == 0:
            return self.position
        if key % 2:
            manager, number = self.epochs, self.position.epoch
        else:
            manager, number = self.steps, key // 2
        path = os.path.join(manager.directory, f"ckpt-{number}")
        try:
            manager.checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError):
            raise PipelineError(
                f"the checkpoint {path} is of another model or optimizer, or unreadable; "
                "resume with the same flags or use a new `output_dir`"
            ) from None
        log.info("Resuming from %s (epoch %d, step %d of %d done)", path,
                 self.position.epoch + (self.position.step > 0), self.position.step,
                 self.steps_per_epoch)
        self._global_step = key // 2
        return self.position

    def save_epoch(self, epoch):
        """Saves the state after epoch `epoch` (from 1) as `ckpt-<epoch>`."""
        self._save(self.epochs, epoch, f"epoch {epoch}")

    def after_step(self, global_step, sums, last_of_epoch):
        """Called after every training step with the run's step count and the
        epoch's running sums: saves if preempted (and raises `Preempted`) or
        if a step checkpoint is due."""
        self._global_step = global_step
        self._sums = sums
        if self._handler is not None:
            self._handler.save_checkpoint_if_preempted()
        elif self._sigterm is not None and self._sigterm.is_set():
            self._save_step()
            self._preempted()
        if not last_of_epoch and self._due(global_step):
            self._save_step()

    def _due(self, global_step):
        if self.every_steps and global_step % self.every_steps == 0:
            return True
        if not self.every_seconds:
            return False
        if not self.multi_worker:
            return time.monotonic() - self._last_save >= self.every_seconds
        if global_step % _TIME_CHECK_STEPS:
            return False
        # Clocks differ across workers: all save if any one's time is up.
        due = int(time.monotonic() - self._last_save >= self.every_seconds)
        flags = self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(due, tf.int32))
        return bool(self.strategy.reduce(tf.distribute.ReduceOp.MAX, flags, axis=None))

    def _save_step(self):
        self.sums.assign(*self._sums)
        position = _position(2 * self._global_step, self.steps_per_epoch)
        self._save(self.steps, self._global_step,
                   f"step {position.step} of epoch {position.epoch + 1}")

    def _save(self, manager, number, what):
        try:
            manager.save(checkpoint_number=number)
        except (OSError, tf.errors.OpError) as error:
            # A full disk, a quota, a lost mount: the half-written checkpoint
            # goes, the earlier ones stay, and the same command resumes.
            remove_partial(self.directory)
            raise PipelineError(
                f"cannot save the checkpoint of {what} in {manager.directory} "
                f"({first_line(error)}); free space there and run the same command again: "
                "it resumes from the last saved checkpoint"
            ) from None
        self._last_save = time.monotonic()

    def watch_preemption(self):
        """From now on, SIGTERM makes the run save at the next step boundary
        and raise `Preempted`; under `MultiWorkerMirroredStrategy` every
        worker saves the same step, through TensorFlow's
        `PreemptionCheckpointHandler`. Not under `TPUStrategy` (TensorFlow's
        handler works through the TPU's own notices there; not done here)."""
        if isinstance(self.strategy, tf.distribute.TPUStrategy):
            return
        if self.multi_worker and _on_cloud_cpu():
            # TensorFlow's handler turns itself off on Google Cloud CPU machines
            # (GKE's CPU nodes among them): SIGTERM keeps its default there.
            log.warning("Google Cloud CPU machine: TensorFlow's PreemptionCheckpointHandler "
                        "does not run here, so a SIGTERM stops the run without a save; "
                        "it resumes from its last checkpoint")
            return
        self._sigterm = _SigtermFlag()
        if not self.multi_worker:
            return
        config = tf.distribute.experimental.TerminationConfig(
            # Polled by the handler's thread: on a cloud GPU VM it would
            # otherwise watch only the VM's maintenance notices, not the
            # SIGTERM with which Kubernetes stops a pod.
            termination_watcher_fn=self._sigterm.is_set,
            exit_fn=self._preempted, grace_period=0, save_fn=self._save_step)
        # The handler restores what its manager holds and counts its own steps
        # from there: it gets an empty one, as this run's restore is done.
        self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            self.strategy.cluster_resolver, tf.train.CheckpointManager(
                tf.train.Checkpoint(), os.path.join(self.directory, "preemption"), 1),
            termination_config=config)

    def _preempted(self):
        position = _position(2 * self._global_step, self.steps_per_epoch)
        raise Preempted(
            f"stopped by SIGTERM after step {position.step} of epoch {position.epoch + 1}, "
            f"saved in {self.steps.directory}; run the same command to resume there "
            f"(exit status {PREEMPTED_EXIT_STATUS}: preempted)"
        )

    def close(self):
        """Stops watching for SIGTERM."""
        if self._sigterm is not None:
            self._sigterm.restore()
            self._sigterm = None
        if self._handler is not None:
            # What the handler's own __del__ does, which its threads (holding
            # its methods) would keep from running.
            self._handler._stop_poll_termination_signal_thread()
            self._handler._stop_cluster_wise_termination_watcher_thread()
            self._handler = None

    def remove_step_checkpoints(self):
        """A finished run's step checkpoints are behind its last epoch's."""
        atomic.remove(self.steps.directory)


class _SigtermFlag:
    """Set by SIGTERM, in place of the handler there was (Python's default
    ends the process at once)."""

    def __init__(self):
        self._set = False
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame):
        log.warning("SIGTERM: the run saves at the next step and stops")
        self._set = True

    def is_set(self):
        return self._set

    def restore(self):
        # None: a handler set outside Python, which cannot be put back.
        signal.signal(signal.SIGTERM, self._previous if self._previous is not None
                      else signal.SIG_DFL)


def _on_cloud_cpu():
    """Whether TensorFlow sees a Google Cloud CPU (or TPU) machine, where its
    `PreemptionCheckpointHandler` does nothing."""
    from tensorflow.python.distribute.failure_handling import failure_handling_util

    platform = failure_handling_util.detect_platform()
    return platform in (failure_handling_util.PlatformDevice.GCE_CPU,
                        failure_handling_util.PlatformDevice.GCE_TPU)
