"""Training speed against the best a PyTorch user would run, at every precision
the CPU computes natively, and serving speed.

    pip install -e ".[bench]"        # adds torch==2.13.0 (CPU) for the references
    python -m benchmarks.train
    python -m benchmarks.train --steps 1 --warmup-steps 1 --batch-size 2 --images 30 \
        --no-xla --no-torch-compile  # smoke

In one run on this machine it measures:

1. the matrix-multiply peak per precision (4096x4096, the fastest of 10):
   float32 always, bfloat16 where the CPU has bfloat16 instructions
   (`avx512_bf16` or `amx_bf16`); each row's share of its precision's peak;
2. this project's training images/s as `pipeline.run --strategy mirrored`
   reports them (`loop.fit` under the MirroredStrategy it builds, on JPEGs
   ingested from a folder, the real input pipeline, SGD momentum), for the
   paper variant (227x227x3, LRN) and the d2l variant (224x224x1), with and
   without XLA, in float32 and, where native, bfloat16 (`--mixed-precision`);
   and the paper variant over the CPU split into two replicas
   (`--cpu-replicas 2`, machines without GPUs only); and the pipeline's train
   step alone on ready tensors, measured as the PyTorch references are, which
   separates the framework from the input pipeline;
3. the same architectures in PyTorch 2.13, eager and `torch.compile`d, at the
   same precision (bfloat16 through `torch.autocast`), median step on random
   tensors; each Keras row's ratio is to the faster of the two;
4. inference images/s of the Keras model and the exported SavedModel's latency
   on JPEG bytes through `serving_default` (batch 1 and the batch size).

Ratios depend on the CPU: the header names it and the instruction-set flags
that matter. Run it on a quiet machine.
"""

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

from benchmarks import common

log = logging.getLogger(__name__)

# The CPU flags that decide which kernels run: vector width, and native
# bfloat16 (AVX512_BF16 dot products, AMX tiles) or float16.
_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
              "avx512_fp16")


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """Which of `_CPU_FLAGS` the CPU has, in that order."""
    try:
        with open(cpuinfo) as file:
            flags = set(file.read().split())
    except OSError:
        return []
    return [flag for flag in _CPU_FLAGS if flag in flags]


def precisions():
    """The precisions this machine trains natively: float32, and bfloat16 on a
    CPU with bfloat16 instructions (elsewhere TensorFlow emulates it, 14x slower
    on an AVX2 CPU)."""
    from pipeline.training import precision

    return ("float32", "bfloat16") if precision.cpu_has_bfloat16() else ("float32",)


def matmul_peak(precision, size=4096, repeats=10):
    """GFLOP/s of the fastest of `repeats` size x size matmuls on all cores in
    `precision`: the best the machine showed, so shares of it are not
    flattered by a slow moment."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((size, size)), precision)
    b = tf.cast(tf.random.normal((size, size)), precision)
    matmul = tf.function(lambda: tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b), tf.float32)))
    matmul().numpy()
    times = common.latencies(lambda: matmul().numpy(), repeats, warmup=0)
    return 2 * size**3 / min(times) / 1e9


def pipeline_training_speed(variant, input_shape, ingested, args, jit_compile, strategy,
                            precision="float32"):
    """images/s that `loop.fit` reports for one epoch of `args.steps` steps."""
    from pipeline.training import loop
    from pipeline.config import DataConfig
    from pipeline.config import TrainConfig

    train_config = TrainConfig(
        # loop.fit's images/s leaves out the epoch's first step (it traces), as
        # in history.csv: the rest are the timed steps.
        epochs=1, steps_per_epoch=1 + args.steps,
        batch_size=args.batch_size, optimizer="sgd", learning_rate=0.01,
        lr_schedule="constant", warmup_epochs=0.0,
        jit_compile=jit_compile, seed=0, mixed_precision=precision == "bfloat16",
    )
    with common.built(variant, input_shape, strategy, train_config) as (model, optimizer):
        logs = loop.fit(model, optimizer, strategy, train_config, DataConfig(), ingested)
    return logs[-1]["images_per_second"], common.training_gflop_per_image(model)


def step_speed(variant, input_shape, args, strategy, precision="float32"):
    """Median images/s of the pipeline's own train step alone on ready random
    tensors, measured as the PyTorch references are: what the framework does
    without the input pipeline beside it."""
    import tensorflow as tf

    from pipeline.training import train_steps
    from pipeline.config import TrainConfig

    train_config = TrainConfig(batch_size=args.batch_size, optimizer="sgd", learning_rate=0.01,
                               lr_schedule="constant", warmup_epochs=0.0,
                               mixed_precision=precision == "bfloat16")
    with common.built(variant, input_shape, strategy, train_config) as (model, optimizer):
        images = tf.random.uniform((args.batch_size, *input_shape), 0, 255)
        labels = tf.random.uniform((args.batch_size,), 0, common.NUM_CLASSES, tf.int32)
        batches = tf.data.Dataset.from_tensors((images, labels)).repeat()
        iterator = iter(strategy.experimental_distribute_dataset(batches))
        step = train_steps.make_train_step(model, optimizer, strategy, args.batch_size)
        times = common.latencies(lambda: [float(value) for value in step(iterator)],
                                 args.steps, warmup=args.warmup_steps)
    return args.batch_size / statistics.median(times)


def torch_model(variant, input_shape):
    """The variant in PyTorch, as the seed tutorials write it, with the paper's
    LRN in PyTorch's convention (alpha there is divided by the window size);
    paper_2gpu's conv2, conv4 and conv5 with `groups=2`."""
    import torch
    from torch import nn

    height, width, channels = input_shape
    paper = variant in ("paper", "paper_2gpu")
    groups = 2 if variant == "paper_2gpu" else 1

    def lrn():
        return [nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)] if paper else []

    features = nn.Sequential(
        nn.Conv2d(channels, 96, 11, stride=4, padding=0 if paper else 1),
        nn.ReLU(), *lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=groups), nn.ReLU(), *lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=groups), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=groups), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(),
    )
    flat = features(torch.zeros(1, channels, height, width)).shape[1]
    return nn.Sequential(
        features, nn.Linear(flat, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, common.NUM_CLASSES),
    )


def torch_training_speed(variant, input_shape, args, precision, compiled):
    """Median images/s of the PyTorch reference, eager or `torch.compile`d, in
    float32 or under bfloat16 autocast; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    model = torch_model(variant, input_shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    forward = torch.compile(model) if compiled else model
    height, width, channels = input_shape
    images = torch.randn(args.batch_size, channels, height, width)
    labels = torch.randint(0, common.NUM_CLASSES, (args.batch_size,))

    def step():
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            loss = loss_fn(forward(images), labels)
        loss.backward()
        optimizer.step()

    # torch.compile compiles in the first steps: they are the warm-up.
    times = common.latencies(step, args.steps, warmup=args.warmup_steps)
    return args.batch_size / statistics.median(times)


def inference_speed(variant, input_shape, args):
    """Median images/s of `model(x, training=False)` in a tf.function."""
    import tensorflow as tf

    from alexnet_keras import AlexNet

    model = AlexNet(variant=variant, num_classes=common.NUM_CLASSES, input_shape=input_shape)
    predict = tf.function(lambda x: model(x, training=False))
    images = tf.random.normal((args.batch_size, *input_shape))
    predict(images).numpy()
    times = []
    for _ in range(max(3, args.steps)):
        start = time.perf_counter()
        predict(images).numpy()
        times.append(time.perf_counter() - start)
    return args.batch_size / statistics.median(times)


def serving_latency(input_shape, ingested, export_dir, batch_sizes, repeats):
    """Median milliseconds of the paper model's `serving_default` on JPEG bytes,
    per batch size."""
    import tensorflow as tf

    from alexnet_keras import AlexNet
    from pipeline.serving import builder

    model = AlexNet(variant="paper", num_classes=common.NUM_CLASSES, input_shape=input_shape)
    version = builder.export_saved_model(
        model, [str(index) for index in range(common.NUM_CLASSES)], export_dir,
    )
    serve = tf.saved_model.load(version).signatures["serving_default"]
    encoded, _ = next(ingested.encoded_batches("train", max(batch_sizes)))
    latencies = {}
    for batch_size in batch_sizes:
        images = tf.constant(encoded[:batch_size])
        serve(image_bytes=images)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            serve(image_bytes=images)["probabilities"].numpy()
            times.append(time.perf_counter() - start)
        latencies[batch_size] = 1000 * statistics.median(times)
    return latencies


def main(argv=None):
    # TensorFlow reads the process set-up when it is imported, so it and the
    # pipeline are imported here and in the functions above, never at the top.
    common.prepare_process()
    import tensorflow as tf

    from pipeline.training import distribute

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps")
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="untimed first steps of the PyTorch references (loop.fit "
                             "leaves out its first step, which traces)")
    parser.add_argument("--images", type=int, default=None,
                        help="JPEGs to write (default: enough for the steps)")
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA runs")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="skip the torch.compile references (they compile for a minute)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), action="append",
                        default=None,
                        help="only these precisions (default: every one the CPU runs natively)")
    parser.add_argument("--variant", choices=common.VARIANTS, action="append", default=None,
                        help="only these variants (default: all; the paper variant is always "
                             "measured, the reference of the others)")
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = common.images_for(args.warmup_steps, args.steps, args.batch_size)
    if min(args.batch_size, args.steps, args.warmup_steps, args.images) < 1:
        parser.error("every count must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)

    # The split strategy first: it exposes the CPU as two logical devices before
    # TensorFlow starts; `--strategy mirrored` then takes the first one, as in a
    # run without --cpu-replicas. A second strategy's all-reduce could collide
    # with this one's in TensorFlow's process-wide collective keys, and the
    # one-replica strategy has none.
    split = None if tf.config.list_physical_devices("GPU") else (
        distribute.make_strategy("mirrored", cpu_replicas=2))
    mirrored = distribute.make_strategy("mirrored")
    run_precisions = args.precision or precisions()
    peaks = {precision: matmul_peak(precision) for precision in run_precisions}
    log.info("matmul peaks: %s", ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items()))
    input_shapes = {variant: shape for variant, shape in common.input_shapes().items()
                    if variant in {"paper", *(args.variant or common.VARIANTS)}}
    rows = []
    keras_speeds = {}
    paper_reference = None
    with tempfile.TemporaryDirectory() as directory:
        ingested = common.ingest_jpegs(directory, args.images)
        for variant, input_shape in input_shapes.items():
            for precision in run_precisions:
                references = {
                    "PyTorch 2.13 eager": torch_training_speed(
                        variant, input_shape, args, precision, compiled=False),
                }
                if not args.no_torch_compile:
                    references["PyTorch 2.13 torch.compile"] = torch_training_speed(
                        variant, input_shape, args, precision, compiled=True)
                measured = [speed for speed in references.values() if speed is not None]
                best = max(measured) if measured else None
                for jit_compile in (False,) if args.no_xla else (False, True):
                    speed, gflop = pipeline_training_speed(
                        variant, input_shape, ingested, args, jit_compile, mirrored, precision
                    )
                    xla = "on" if jit_compile else "off"
                    keras_speeds[variant, precision, jit_compile] = speed
                    rows.append((f"{variant} {input_shape} Keras, XLA {xla}", precision,
                                 speed, gflop, best))
                rows.append((f"{variant} {input_shape} Keras step, ready tensors", precision,
                             step_speed(variant, input_shape, args, mirrored, precision),
                             gflop, best))
                for name, speed in references.items():
                    if speed is not None:
                        rows.append((f"{variant} {input_shape} {name}", precision, speed,
                                     gflop, best))
                if variant == "paper" and precision == "float32":
                    paper_reference = best
        if split is not None:
            speed, gflop = pipeline_training_speed(
                "paper", input_shapes["paper"], ingested, args, False, split
            )
            rows.append((f"paper {input_shapes['paper']} Keras, --cpu-replicas 2", "float32",
                         speed, gflop, paper_reference))
        inference = {variant: inference_speed(variant, input_shape, args)
                     for variant, input_shape in input_shapes.items()}
        latencies = serving_latency(input_shapes["paper"], ingested,
                                    os.path.join(directory, "export"),
                                    (1, args.batch_size), max(5, args.steps))

    print(f"\nTraining, batch {args.batch_size}, SGD momentum; {common.cpu_model()}; "
          f"flags: {' '.join(cpu_flags()) or 'unknown'}")
    print("matmul peak " + ", ".join(f"{precision} {gflops:.0f} GFLOP/s"
                                     for precision, gflops in peaks.items()))
    print(f"{'model':<54}{'precision':>10}{'images/s':>10}{'GFLOP/s':>9}{'of peak':>9}"
          f"{'vs best PyTorch':>17}")
    for name, precision, speed, gflop, best in rows:
        ratio = f"{speed / best:16.2f}x" if best else f"{'-':>17}"
        print(f"{name:<54}{precision:>10}{speed:10.1f}{speed * gflop:9.1f}"
              f"{speed * gflop / peaks[precision]:9.0%}{ratio}")
    for (variant, precision, jit_compile), speed in keras_speeds.items():
        if variant == "paper_2gpu":
            print(f"paper_2gpu against paper, {precision}, XLA {'on' if jit_compile else 'off'}: "
                  f"{speed / keras_speeds['paper', precision, jit_compile]:.2f}x the images/s")
    print(f"\nInference, batch {args.batch_size}, float32: "
          + ", ".join(f"{variant} {speed:.1f} images/s" for variant, speed in inference.items()))
    print("SavedModel serving_default on JPEG bytes (paper, 227x227): "
          + ", ".join(f"batch {size}: {ms:.0f} ms" for size, ms in latencies.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
