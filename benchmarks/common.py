"""What the benchmarks share: process set-up, the classes and variants they train,
the JPEGs they feed the pipeline, and the FLOP count their GFLOP/s come from.

Importing this module sets nothing and imports only the standard library:
`prepare_process()` must run before TensorFlow is imported, so TensorFlow, Keras
and the pipeline are imported inside the functions that use them.
"""

import contextlib
import math
import os

# Classes of the random JPEGs and so of every benchmarked model's output.
NUM_CLASSES = 10


def prepare_process():
    """Sets the process up as the pipeline's commands do, before TensorFlow is
    imported (`pipeline.environment.prepare`): oneDNN on (TensorFlow leaves it
    off on this project's AMD CPUs; it made training ~20% faster there), so the
    figures are those of a tuned run, and TensorFlow's start-up lines kept out
    of the output. Values already set in the environment win."""
    from pipeline import environment

    environment.prepare([])


def cpu_model():
    """The CPU's name from /proc/cpuinfo, and the cores this process may use."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as file:
            name = next(line.split(":", 1)[1].strip() for line in file
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


@contextlib.contextmanager
def built(variant, input_shape, strategy, train_config):
    """The pipeline's model and optimizer for `train_config`, seeded, built in
    the strategy's scope under the precision policy `pipeline.run` sets for it
    (`precision.set_precision`), which is reset to float32 on leaving."""
    import keras

    from pipeline.training import models

    from pipeline.training import optimizers

    from pipeline.training import precision
    from pipeline.config import ModelConfig

    height, width, channels = input_shape
    model_config = ModelConfig(variant=variant, image_size=(height, width), channels=channels)
    precision.set_precision(train_config, strategy)
    try:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = models.build_model(model_config, NUM_CLASSES)
            optimizer = optimizers.make_optimizer(
                train_config, train_config.steps_per_epoch or 1, model.trainable_variables
            )
        yield model, optimizer
    finally:
        keras.mixed_precision.set_global_policy("float32")


def latencies(function, calls, warmup=2):
    """Seconds each of `calls` calls of `function` took, after `warmup` untimed ones."""
    import time

    for _ in range(warmup):
        function()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


# The variants the benchmarks measure, each beside its PyTorch reference
# model (benchmarks.train.torch_model); torchvision's is the paper's layer
# sizes' smaller cousin and is not measured.
VARIANTS = ("paper", "paper_2gpu", "d2l")


def input_shapes():
    """{variant: (height, width, channels)} of each benchmarked AlexNet variant
    at its own input size."""
    from alexnet_keras import alexnet

    return {variant: alexnet.default_input_shape(variant) for variant in VARIANTS}


def images_for(warmup_steps, steps, batch_size):
    """JPEGs enough for one pass of the warm-up steps, the measured steps and one
    batch more (ingest keeps 80% for training; a few more cover the rounding),
    and for at least three validation batches (10%): the evaluation step traces
    once per model, and with fewer batches a benchmark's five models would make
    TensorFlow warn of frequent retracing."""
    return max(int((warmup_steps + steps + 1) * batch_size / 0.8), 30 * batch_size) + 10


def write_jpegs(directory, count, seed=0):
    """`count` JPEGs in NUM_CLASSES class folders, 300-500 pixels a side like
    ImageNet's. Smooth random colour fields with a little noise: white noise
    would make files several times larger and slower to decode than photos."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for index in range(count):
        height, width = rng.integers(300, 501), rng.integers(350, 501)
        coarse = rng.uniform(0, 255, (height // 32 + 2, width // 32 + 2, 3))
        image = tf.image.resize(coarse, (height, width)) + rng.normal(
            0, 8, (height, width, 3)
        )
        pixels = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        class_dir = os.path.join(directory, f"class_{index % NUM_CLASSES}")
        os.makedirs(class_dir, exist_ok=True)
        tf.io.write_file(
            os.path.join(class_dir, f"{index:05d}.jpg"),
            tf.io.encode_jpeg(pixels, quality=90),
        )


def ingest_jpegs(directory, count):
    """The `IngestedDataset` of `count` JPEGs written to `directory`/images and
    ingested from there as `folder:` into `directory`/ingested: the real input
    pipeline's source, as `pipeline.run --dataset folder:...` would make it."""
    from pipeline.data import ingest
    from pipeline.config import DataConfig

    images = os.path.join(directory, "images")
    write_jpegs(images, count)
    return ingest.ingest(DataConfig(dataset=f"folder:{images}"),
                         os.path.join(directory, "ingested"))


def multiply_adds(layer):
    """Forward multiply-adds per image of a Conv2D or Dense layer (0 for others)."""
    if layer.__class__.__name__ in ("Conv2D", "GroupedConv2D"):
        height, width, filters = layer.output.shape[1:]
        kernel_height, kernel_width, channels, _ = layer.kernel.shape
        return height * width * filters * kernel_height * kernel_width * channels
    if layer.__class__.__name__ == "Dense":
        return math.prod(layer.kernel.shape)
    return 0


def training_gflop_per_image(model):
    """Forward multiply-adds of the convolutions and dense layers, x2 for FLOPs,
    x3 for training (the backward pass costs about twice the forward)."""
    return 3 * 2 * sum(multiply_adds(layer) for layer in model.layers) / 1e9
