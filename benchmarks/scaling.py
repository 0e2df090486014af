"""Multi-worker scaling on localhost: what one training step all-reduces, and the
step time of two workers against one.

    python -m benchmarks.scaling
    python -m benchmarks.scaling --all-reduce ring --pack-mb 32
    python -m benchmarks.scaling --image-size 67 --steps 2 --warmup-steps 1  # smoke

It starts `MultiWorkerMirroredStrategy` workers as `pipeline.run --strategy
multiworker` builds them (the collectives of `--all-reduce` and
`--all-reduce-pack-mb`), first a cluster of one, then of two, on this machine's
ports, each training the paper AlexNet with the pipeline's own train step on
random tensors (the input pipeline is measured by `benchmarks.input_pipeline`).
Each worker also times an all-reduce of the gradients alone (a tensor of the
model's trainable size). It prints the bytes all-reduced per step, the median
step and all-reduce times, images/s and the scaling efficiency: two workers'
images/s over twice one worker's.

On localhost the workers share one machine's cores and memory bus, so the
two-worker figures measure contention as much as communication; the
scaling model of docs/distributed.md turns the all-reduce size into figures for real clusters.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys

from benchmarks import common


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for probe in sockets:
        probe.bind(("localhost", 0))
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def _median_seconds(function, warmup, repeats):
    return statistics.median(common.latencies(function, repeats, warmup))


def worker(args):
    """One worker of the cluster in TF_CONFIG: prints its figures as JSON."""
    common.prepare_process()
    import tensorflow as tf

    from pipeline.training import distribute
    from pipeline.training import models
    from pipeline.training import optimizers
    from pipeline.training import train_steps
    from pipeline.config import ModelConfig
    from pipeline.config import TrainConfig

    strategy = distribute.make_strategy("multiworker", None, args.all_reduce, args.pack_mb)
    workers = strategy.num_replicas_in_sync
    global_batch = args.batch_size * workers
    train_config = TrainConfig(strategy="multiworker", batch_size=global_batch,
                               optimizer="sgd", learning_rate=0.01, lr_schedule="constant",
                               warmup_epochs=0.0)
    model_config = ModelConfig(image_size=(args.image_size, args.image_size), channels=3)
    with strategy.scope():
        model = models.build_model(model_config, common.NUM_CLASSES)
        optimizer = optimizers.make_optimizer(train_config, 100, model.trainable_variables)
    shape = model.image_spec.shape

    def dataset_fn(context):
        batch = context.get_per_replica_batch_size(global_batch)
        images = tf.random.stateless_uniform([batch, *shape], [1, context.input_pipeline_id])
        labels = tf.zeros([batch], tf.int32)
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    step = train_steps.make_train_step(model, optimizer, strategy, global_batch, 0.0, False)
    step_seconds = _median_seconds(lambda: float(step(iterator)[0]), args.warmup_steps,
                                   args.steps)

    parameters = sum(int(tf.size(variable)) for variable in model.trainable_variables)
    gradients = tf.ones([parameters])

    @tf.function
    def all_reduce():
        values = strategy.run(lambda: gradients * 1.0)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)[0]

    reduce_seconds = _median_seconds(lambda: float(all_reduce()), args.warmup_steps, args.steps)
    print(json.dumps({
        "workers": workers, "parameters": parameters, "global_batch": global_batch,
        "step_seconds": step_seconds, "all_reduce_seconds": reduce_seconds,
    }), flush=True)


def _cluster(args, count):
    """Runs a cluster of `count` workers on localhost; returns worker 0's figures."""
    addresses = [f"localhost:{port}" for port in _free_ports(count)]
    flags = ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
             "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
             "--all-reduce", args.all_reduce, "--pack-mb", str(args.pack_mb)]
    processes = []
    try:
        for index in range(count):
            tf_config = {"cluster": {"worker": addresses},
                         "task": {"type": "worker", "index": index}}
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.scaling", "--worker", *flags],
                env={**os.environ, "TF_CONFIG": json.dumps(tf_config)},
                stdout=subprocess.PIPE, text=True,
            ))
        outputs = [process.communicate(timeout=3600)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    failed = [process.returncode for process in processes if process.returncode]
    if failed:
        sys.exit(f"a worker of the {count}-worker cluster failed (exit {failed[0]})")
    return json.loads(outputs[0].strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--all-reduce", default="auto", choices=("auto", "ring", "nccl"))
    parser.add_argument("--pack-mb", type=float, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    one, two = _cluster(args, 1), _cluster(args, 2)
    megabytes = one["parameters"] * 4 / 1e6
    print(f"CPU: {common.cpu_model()}; "
          f"all-reduce {args.all_reduce}, packs {args.pack_mb or 'auto'} MB; "
          f"{args.image_size}x{args.image_size}, batch {args.batch_size} per worker")
    print(f"gradients all-reduced per step: {one['parameters']:,} float32 = {megabytes:.0f} MB")
    print(f"{'workers':>8} {'step s':>8} {'images/s':>9} {'all-reduce s':>13} {'GB/s':>6}")
    for figures in (one, two):
        rate = figures["global_batch"] / figures["step_seconds"]
        # A cluster of one all-reduces nothing: no bandwidth to show.
        bandwidth = (f"{megabytes / 1e3 / figures['all_reduce_seconds']:.2f}"
                     if figures["workers"] > 1 else "-")
        print(f"{figures['workers']:>8} {figures['step_seconds']:>8.2f} {rate:>9.1f} "
              f"{figures['all_reduce_seconds']:>13.3f} {bandwidth:>6}")
    efficiency = (two["global_batch"] / two["step_seconds"]) / (
        2 * one["global_batch"] / one["step_seconds"])
    print(f"scaling efficiency, 2 workers against 1: {efficiency:.2f}")
    return None


if __name__ == "__main__":
    sys.exit(main())
