"""Training and serving speed against the PyTorch AlexNets of the seed tutorials.

    pip install -e ".[bench]"        # adds torch==2.13.0 (CPU) for the references
    python -m benchmarks.train
    python -m benchmarks.train --steps 2 --warmup-steps 1 --batch-size 8 --images 64  # smoke

In one run on this machine it measures:

1. the fp32 matrix-multiply peak (TensorFlow, 4096x4096, the fastest of 10), the
   ceiling in GFLOP/s;
2. this project's training images/s as `pipeline.run --strategy mirrored`
   reports them (`train.fit` under the MirroredStrategy it builds, on JPEGs
   ingested from a folder, the real input pipeline, SGD momentum), for the
   paper variant (227x227x3, LRN) and the d2l variant (224x224x1), with and
   without XLA, and the paper variant over the CPU split into two replicas
   (`--cpu-replicas 2`, machines without GPUs only);
3. the PyTorch 2.13 eager references: the seed model without LRN and the paper
   model with `nn.LocalResponseNorm` (median step on random tensors);
4. inference images/s of the Keras model and the exported SavedModel's latency
   on JPEG bytes through `serving_default` (batch 1 and 64);

and prints each figure with its GFLOP/s, share of the matmul peak and ratio to
the PyTorch reference of the same architecture. Run it on a quiet machine.
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


def matmul_peak(size=4096, repeats=10):
    """fp32 GFLOP/s of the fastest of `repeats` size x size matmuls on all cores:
    the best the machine showed, so shares of it are not flattered by a slow
    moment."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))
    matmul().numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul().numpy()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def pipeline_training_speed(variant, input_shape, ingested, args, jit_compile, strategy):
    """images/s that `train.fit` reports for one epoch of `args.steps` steps."""
    from pipeline import model_factory
    from pipeline import train
    from pipeline.config import DataConfig
    from pipeline.config import ModelConfig
    from pipeline.config import TrainConfig

    height, width, channels = input_shape
    model_config = ModelConfig(variant=variant, image_size=(height, width), channels=channels)
    train_config = TrainConfig(
        # train.fit's images/s leaves out the epoch's first step (it traces), as
        # in history.csv: the rest are the timed steps.
        epochs=1, steps_per_epoch=1 + args.steps,
        batch_size=args.batch_size, optimizer="sgd", learning_rate=0.01,
        jit_compile=jit_compile, seed=0,
    )
    with strategy.scope():
        model = model_factory.build_model(model_config, common.NUM_CLASSES)
        optimizer = model_factory.make_optimizer(train_config, train_config.steps_per_epoch,
                                                 model.trainable_variables)
    logs = train.fit(model, optimizer, strategy, train_config, DataConfig(), ingested)
    return logs[-1]["images_per_second"], common.training_gflop_per_image(model)


def torch_training_speed(variant, input_shape, args):
    """Median images/s of the PyTorch eager reference, or None without torch."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    height, width, channels = input_shape
    if variant == "paper":
        # The paper's LRN in PyTorch's convention: alpha there is divided by size.
        norm = [nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)]
        conv1 = nn.Conv2d(channels, 96, 11, stride=4)
    else:
        norm = []
        conv1 = nn.Conv2d(channels, 96, 11, stride=4, padding=1)
    features = nn.Sequential(
        conv1, nn.ReLU(), *norm, nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(),
        *([nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)] if norm else []),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(),
    )
    flat = features(torch.zeros(1, channels, height, width)).shape[1]
    model = nn.Sequential(
        features, nn.Linear(flat, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, common.NUM_CLASSES),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    images = torch.randn(args.batch_size, channels, height, width)
    labels = torch.randint(0, common.NUM_CLASSES, (args.batch_size,))
    times = []
    for step in range(args.warmup_steps + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(images), labels).backward()
        optimizer.step()
        if step >= args.warmup_steps:
            times.append(time.perf_counter() - start)
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
    from pipeline import export

    model = AlexNet(variant="paper", num_classes=common.NUM_CLASSES, input_shape=input_shape)
    version = export.export_saved_model(
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

    from pipeline import distribute

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps")
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="untimed first steps of the PyTorch references (train.fit "
                             "leaves out its first step, which traces)")
    parser.add_argument("--images", type=int, default=None,
                        help="JPEGs to write (default: enough for the steps)")
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA runs")
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
    peak = matmul_peak()
    log.info("matmul peak: %.1f GFLOP/s", peak)
    input_shapes = common.input_shapes()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        ingested = common.ingest_jpegs(directory, args.images)
        for variant, input_shape in input_shapes.items():
            reference = torch_training_speed(variant, input_shape, args)
            for jit_compile in (False,) if args.no_xla else (False, True):
                speed, gflop = pipeline_training_speed(
                    variant, input_shape, ingested, args, jit_compile, mirrored
                )
                xla = "on" if jit_compile else "off"
                rows.append((f"{variant} {input_shape} Keras, XLA {xla}",
                             speed, gflop, reference))
            if reference is not None:
                rows.append((f"{variant} {input_shape} PyTorch 2.13 eager",
                             reference, gflop, reference))
            if variant == "paper":
                paper_reference = reference
        if split is not None:
            speed, gflop = pipeline_training_speed(
                "paper", input_shapes["paper"], ingested, args, False, split
            )
            rows.append((f"paper {input_shapes['paper']} Keras, --cpu-replicas 2",
                         speed, gflop, paper_reference))
        inference = {variant: inference_speed(variant, input_shape, args)
                     for variant, input_shape in input_shapes.items()}
        latencies = serving_latency(input_shapes["paper"], ingested,
                                    os.path.join(directory, "export"),
                                    (1, args.batch_size), max(5, args.steps))

    print(f"\nTraining, batch {args.batch_size}, fp32, SGD momentum; "
          f"{os.cpu_count()} CPUs, matmul peak {peak:.0f} GFLOP/s")
    print(f"{'model':<44}{'images/s':>10}{'GFLOP/s':>10}{'of peak':>9}{'vs PyTorch':>12}")
    for name, speed, gflop, reference in rows:
        ratio = f"{speed / reference:11.2f}x" if reference else f"{'-':>12}"
        print(f"{name:<44}{speed:10.1f}{speed * gflop:10.1f}{speed * gflop / peak:9.0%}{ratio}")
    print(f"\nInference, batch {args.batch_size}: "
          + ", ".join(f"{variant} {speed:.1f} images/s" for variant, speed in inference.items()))
    print("SavedModel serving_default on JPEG bytes (paper, 227x227): "
          + ", ".join(f"batch {size}: {ms:.0f} ms" for size, ms in latencies.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
