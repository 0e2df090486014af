"""The run directory (`output_dir`): one process at a time, and a resume that
trains the run its `config.json` describes.

    with run_dir.claimed(path):
        run_dir.check_resumable(path, config, ingested)
        ...

A directory that holds checkpoints is a run to resume. It resumes only under
the settings that shaped it; a larger `epochs` extends it. `config.json`
records the settings and the fingerprint of the data the run trains on.
"""

import contextlib
import errno
import fcntl
import json
import os

import tensorflow as tf

from pipeline.config import RunConfig
from pipeline.config import shaping_settings
from pipeline.errors import PipelineError
from pipeline.storage import atomic

CONFIG_FILE = "config.json"
_LOCK_FILE = ".lock"


@contextlib.contextmanager
def claimed(run_dir):
    """Holds `run_dir` for this process: a second process gets a one-line error.

    The claim is an advisory lock (`flock`) on `run_dir/.lock`, which the
    kernel drops when its process ends, however it ends: a killed run leaves
    nothing stuck. Paths of other file systems (`gs://`, ...) cannot be locked
    and are not.
    """
    _make(run_dir)
    if not atomic.is_local(run_dir):
        yield run_dir
        return
    path = os.path.join(run_dir, _LOCK_FILE)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise PipelineError(
                f"{run_dir} is in use by process {holder}: two runs must not share a "
                "run directory; wait for it to end or choose another `output_dir`"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield run_dir
        finally:
            lock.truncate(0)


def _make(run_dir):
    try:
        tf.io.gfile.makedirs(run_dir)
    except tf.errors.OpError as error:
        raise PipelineError(
            f"cannot create the run directory {run_dir} ({error.message}); choose "
            "another `output_dir`"
        ) from None


def has_checkpoint(run_dir):
    """Whether `run_dir` holds a checkpoint of an epoch's end, or one saved
    inside an epoch (`checkpoints/steps`, pipeline.training.checkpoints)."""
    return any(tf.train.latest_checkpoint(os.path.join(run_dir, *parts)) is not None
               for parts in (("checkpoints",), ("checkpoints", "steps")))


def record(config, ingested):
    """`config.json`'s content: every setting, and the data's fingerprint."""
    recorded = json.loads(config.to_json())
    recorded["ingested"] = {"source": ingested.source, "fingerprint": ingested.fingerprint}
    return json.dumps(recorded, indent=2, sort_keys=True)


def changed_settings(recorded_text, config, ingested, source=CONFIG_FILE):
    """`name old -> new` for each setting of `config` that would change the run
    whose `config.json` is `recorded_text`."""
    recorded = RunConfig.from_json(recorded_text, source=source)
    changes = []
    for section, names in shaping_settings().items():
        for name in names:
            old = getattr(getattr(recorded, section), name)
            new = getattr(getattr(config, section), name)
            if old != new:
                changes.append(f"`{name}` {_shown(old)} -> {_shown(new)}")
    if config.train.epochs < recorded.train.epochs:
        changes.append(f"`epochs` {recorded.train.epochs} -> {config.train.epochs} (only a "
                       "larger `epochs` extends a run)")
    # The one entry of config.json that is not a setting.
    old_data = json.loads(recorded_text).get("ingested", {}).get("fingerprint")
    if old_data != ingested.fingerprint and recorded.data.dataset == config.data.dataset:
        changes.append(f"the data (ingest fingerprint {str(old_data)[:12]} -> "
                       f"{ingested.fingerprint[:12]})")
    return changes


def _shown(value):
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value) if isinstance(value, str) else str(value)


def check_resumable(run_dir, config, ingested):
    """Raises `PipelineError` if `run_dir` holds a begun run (checkpoints) of
    other settings than `config`, listing each change; returns whether there
    is a run to resume. Then records `config` as the run's `config.json`."""
    path = os.path.join(run_dir, CONFIG_FILE)
    resuming = has_checkpoint(run_dir)
    if resuming and tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as file:
            recorded = file.read()
        changes = changed_settings(recorded, config, ingested, source=path)
        if changes:
            raise PipelineError(
                f"{run_dir} holds a run with other settings ({'; '.join(changes)}): "
                "resume it with its own settings, or start a new run in a new `output_dir`"
            )
    atomic.replace_file(path, record(config, ingested))
    return resuming
