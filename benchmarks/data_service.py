"""The trainer's images/s and its own CPU use with the input pipeline local
against the same pipeline on tf.data service workers.

    python -m benchmarks.data_service
    python -m benchmarks.data_service --steps 2 --batch-size 4 --image-size 67  # smoke

It trains the paper's AlexNet (`loop.fit`, SGD, float32) on JPEGs ingested
from a folder, one epoch of `--steps` timed steps after one untimed, first
with reading, decoding and augmentation in the trainer's process, then with
them on `--workers` service worker processes started on this machine (with a
dispatcher), and prints for each: images/s, the trainer's CPU time per image
and the cores it kept busy, and the workers' CPU time per image.

On one machine the workers compete with the trainer for the same cores, so
images/s here does not show what a cluster gains; the trainer's CPU per image
does: it is what the service takes off the machine that trains.
"""

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

from benchmarks import common


def _cpu_seconds_of(pids):
    """User and system CPU time of processes, from /proc."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def start_service(workers):
    """A dispatcher and `workers` workers as processes; returns (address, processes)."""
    from pipeline.data import service

    command = [sys.executable, "-m", "pipeline.data.service"]
    port = _free_port()
    processes = [subprocess.Popen([*command, "dispatcher", "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    service.check_reachable(f"localhost:{port}", wait_seconds=120)
    for _ in range(workers):
        worker_port = _free_port()
        processes.append(subprocess.Popen(
            [*command, "worker", "--dispatcher", f"localhost:{port}", "--port",
             str(worker_port), "--worker-address", "localhost"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        service.check_reachable(f"localhost:{worker_port}", wait_seconds=120)
    return f"grpc://localhost:{port}", processes


def measure(ingested, args, data_service=None, service_pids=()):
    """images/s of one epoch; the CPU seconds per image of the trainer, the
    cores it kept busy, and the CPU seconds per image of the service workers
    (the epoch's first step and its validation included)."""
    import tensorflow as tf

    from pipeline.config import DataConfig
    from pipeline.config import TrainConfig
    from pipeline.training import loop

    train_config = TrainConfig(
        epochs=1, steps_per_epoch=1 + args.steps, batch_size=args.batch_size,
        optimizer="sgd", learning_rate=0.01, lr_schedule="constant", warmup_epochs=0.0,
        seed=0)
    data_config = DataConfig(data_service=data_service)
    strategy = tf.distribute.get_strategy()
    input_shape = (args.image_size, args.image_size, 3)
    with common.built("paper", input_shape, strategy, train_config) as (model, optimizer):
        trainer, service = _own_cpu_seconds(), _cpu_seconds_of(service_pids)
        wall = time.perf_counter()
        logs = loop.fit(model, optimizer, strategy, train_config, data_config, ingested)
        wall = time.perf_counter() - wall
        trainer = _own_cpu_seconds() - trainer
        service = _cpu_seconds_of(service_pids) - service
    images = (1 + args.steps) * args.batch_size
    return logs[-1]["images_per_second"], trainer / images, trainer / wall, service / images


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--image-size", type=int, default=227, help="(default: 227)")
    parser.add_argument("--workers", type=int, default=2,
                        help="tf.data service workers (default: 2)")
    args = parser.parse_args(argv)
    common.prepare_process()
    with tempfile.TemporaryDirectory() as directory:
        ingested = common.ingest_jpegs(
            directory, common.images_for(1, args.steps, args.batch_size))
        rows = [("local", *measure(ingested, args))]
        address, processes = start_service(args.workers)
        try:
            rows.append((f"service, {args.workers} workers",
                         *measure(ingested, args, address, [p.pid for p in processes[1:]])))
        finally:
            for process in processes:
                process.kill()
                process.wait()
    print(f"{common.cpu_model()}; paper AlexNet {args.image_size}x{args.image_size}x3, "
          f"batch {args.batch_size}, {args.steps} timed steps, float32, SGD")
    print(f"{'input pipeline':<22}{'images/s':>10}{'trainer CPU ms/image':>22}"
          f"{'trainer cores':>15}{'service CPU ms/image':>22}")
    local_speed, local_cpu = rows[0][1], rows[0][2]
    for name, speed, trainer, cores, service in rows:
        print(f"{name:<22}{speed:>10.1f}{trainer * 1000:>22.1f}{cores:>15.2f}"
              f"{service * 1000:>22.1f}")
    name, speed, trainer, _, _ = rows[1]
    print(f"service / local: images/s x{speed / local_speed:.2f}, trainer CPU per image "
          f"x{trainer / local_cpu:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
