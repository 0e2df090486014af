"""Choose a `tf.distribute` strategy by name, as the `strategy` setting does.

- `default`: TensorFlow's default strategy (one device, no distribution).
- `one_device`: the first GPU, else the CPU.
- `mirrored`: every local GPU; without GPUs, `cpu_replicas=N` logical CPU
  devices, or one replica on the CPU (splitting one CPU into two replicas was
  measured 35% slower on a 2-core machine, so it is never the default).
- `multiworker`: `MultiWorkerMirroredStrategy` over the cluster in `TF_CONFIG`.
- `tpu`: `TPUStrategy` through a `TPUClusterResolver` (the `TPU_NAME`
  environment variable or a Cloud TPU VM's local TPU); not run on this
  project's CI.
"""

import dataclasses
import json
import os

import tensorflow as tf

from pipeline.config import STRATEGIES
from pipeline.errors import ConfigError
from pipeline.errors import PipelineError
from pipeline.storage import run_dir


def _split_cpu(replicas):
    """Expose the CPU as `replicas` logical devices and return their names."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    except RuntimeError:
        # TensorFlow is already initialised (in tests, or a second run in one
        # process): the existing logical devices are all there is.
        pass
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(devices) < replicas:
        raise PipelineError(
            f"cpu_replicas={replicas} needs {replicas} logical CPU devices but "
            f"TensorFlow was already started with {len(devices)}; set it before "
            "TensorFlow runs anything"
        )
    return devices[:replicas]


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's task in a cluster: its type ("worker", "chief") and index."""

    type: str
    index: int
    chief: bool


def cluster_task(raw=None):
    """This process's `Task` in `TF_CONFIG` (or `raw`), None if it is not set;
    raises `ConfigError` if it does not parse or names no task of its cluster."""
    raw = os.environ.get("TF_CONFIG") if raw is None else raw
    if not raw:
        return None
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        task_type, index = task["type"], int(task.get("index", 0))
        if index < 0:
            raise IndexError(index)
        cluster[task_type][index]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise ConfigError(
            "TF_CONFIG must be JSON naming the cluster and this process's task in it "
            '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            f'"task": {{"type": "worker", "index": 0}}}}). Received: {raw!r}'
        ) from None
    chief = task_type == "chief" or (task_type == "worker" and index == 0
                                     and "chief" not in cluster)
    return Task(task_type, index, chief)


def task_output_dir(output_dir, strategy_name):
    """Where this process of a run writes, given the run's one `output_dir`: the
    chief there, every other task of a multi-worker cluster in
    `workers/<type>-<index>` inside it. So every pod runs one command.

    A non-chief task that started in `output_dir` itself before this layout
    (its own `--output-dir` per worker) and left checkpoints there resumes
    there."""
    if strategy_name != "multiworker":
        return output_dir
    task = cluster_task()
    if task is None or task.chief:
        return output_dir
    own = os.path.join(output_dir, "workers", f"{task.type}-{task.index}")
    if not tf.io.gfile.exists(own) and run_dir.has_checkpoint(output_dir):
        return output_dir
    return own


def is_chief(strategy):
    """Whether this process is the one that writes checkpoints and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (
        task_type == "worker"
        and task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def make_strategy(name, cpu_replicas=None, all_reduce="auto", all_reduce_pack_mb=0):
    """Returns the strategy `strategy=name` means on this machine; the last two
    set a multi-worker strategy's collectives."""
    gpus = tf.config.list_physical_devices("GPU")
    if cpu_replicas is not None and gpus:
        raise ConfigError(
            f"`cpu_replicas` splits the CPU for machines without GPUs, but "
            f"{len(gpus)} GPU(s) are present; drop `cpu_replicas` to mirror over the GPUs"
        )
    if cpu_replicas is not None and name != "mirrored":
        # MultiWorkerMirroredStrategy takes one device per worker on CPUs.
        raise ConfigError(
            f"`cpu_replicas` only applies to strategy='mirrored', not {name!r}"
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy(_split_cpu(cpu_replicas or 1))
    if name == "multiworker":
        return _multi_worker_strategy(all_reduce, all_reduce_pack_mb)
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
                tpu=os.environ.get("TPU_NAME", "")
            )
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as error:
            raise PipelineError(
                f"strategy='tpu' found no TPU ({error}); run it on a TPU VM or "
                "set TPU_NAME to your TPU's name"
            ) from None
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"`strategy` must be one of {', '.join(STRATEGIES)}. Received: {name!r}")


def communication_options(all_reduce="auto", all_reduce_pack_mb=0):
    """`CommunicationOptions` for `all_reduce` ("auto", "ring" or "nccl") and a
    pack size in MB (0: TensorFlow's own choice)."""
    implementations = tf.distribute.experimental.CommunicationImplementation
    return tf.distribute.experimental.CommunicationOptions(
        bytes_per_pack=int(all_reduce_pack_mb * 2**20),
        implementation={"auto": implementations.AUTO, "ring": implementations.RING,
                        "nccl": implementations.NCCL}[all_reduce],
    )


def _multi_worker_strategy(all_reduce, all_reduce_pack_mb):
    if cluster_task() is None:
        raise ConfigError(
            "strategy='multiworker' needs the TF_CONFIG environment variable "
            '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}) on every worker'
        )
    # Collective ops over gRPC ("ring") work on CPUs and GPUs alike; "auto"
    # picks NCCL on GPU clusters.
    if all_reduce == "nccl" and not tf.config.list_physical_devices("GPU"):
        raise ConfigError("all_reduce='nccl' needs GPUs; use 'ring' or 'auto' on CPUs")
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=communication_options(all_reduce, all_reduce_pack_mb)
    )
