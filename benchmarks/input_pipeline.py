"""Does the tf.data pipeline keep AlexNet fed? Pipeline and training speed, one run.

    python -m benchmarks.input_pipeline
    python -m benchmarks.input_pipeline --images 32 --steps 2 --batch-size 4 \
        --pipeline-batches 3    # a smoke run

Writes `--images` random-content JPEGs of ImageNet-like sizes into a temporary
folder, ingests them as `folder:`, then measures on this machine:

1. the training pipeline alone (decode, random crop, flip, 227x227x3, batches);
2. `AlexNet(variant="paper")` trained by the pipeline's own train step
   (`train_steps.make_train_step`, XLA off) from that pipeline;
3. the same training from a few batches cached as in-memory tensors;
4. what resuming inside an epoch costs: the time to the first batch of an
   epoch, and of the same epoch resumed at step `--resume-step` (its earlier
   examples skipped before they are decoded), beside the time decoding those
   steps' batches would take;

and prints images/s for each with the ratios pipeline / training and
pipeline-fed / cached training. Run it on a quiet machine: the figures are only
as good as the cores are free.
"""

import argparse
import logging
import os
import sys
import tempfile
import time

from benchmarks import common

logger = logging.getLogger(__name__)


def pipeline_speed(dataset, batches):
    """Images/s of `batches` batches, after one to start the pipeline's threads."""
    iterator = iter(dataset.repeat())
    next(iterator)
    start = time.perf_counter()
    images = sum(len(next(iterator)[1]) for _ in range(batches))
    return images / (time.perf_counter() - start)


def first_batch_seconds(dataset):
    """Seconds from a new iterator of `dataset` to its first batch."""
    start = time.perf_counter()
    next(iter(dataset))
    return time.perf_counter() - start


def training_speed(step, dataset, steps, warmup_steps, batch_size):
    """Training images/s of `step` (the pipeline's own train step) over `steps`
    steps, after `warmup_steps` (the first traces)."""
    iterator = iter(dataset.repeat())
    for _ in range(warmup_steps):
        step(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        loss_sum, _, _ = step(iterator)
    float(loss_sum)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None):
    # TensorFlow reads the process set-up when it is imported, so it, Keras and
    # the pipeline are imported here, never at the top.
    common.prepare_process()
    import keras
    import tensorflow as tf

    from alexnet_keras import AlexNet
    from pipeline.training import train_steps
    from pipeline.data import input_pipeline

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.input_pipeline", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--images", type=int, default=320, help="JPEGs to write")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument(
        "--warmup-steps", type=int, default=2, help="untimed first steps"
    )
    parser.add_argument(
        "--pipeline-batches", type=int, default=50, help="timed pipeline batches"
    )
    parser.add_argument("--resume-step", type=int, default=50,
                        help="the step a resumed epoch starts at")
    args = parser.parse_args(argv)
    if (
        min(
            args.images,
            args.batch_size,
            args.steps,
            args.warmup_steps,
            args.pipeline_batches,
            args.resume_step,
        )
        < 1
    ):
        parser.error("every count must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory() as directory:
        logger.info("writing %d JPEGs", args.images)
        ingested = common.ingest_jpegs(directory, args.images)
        model = AlexNet(
            variant="paper", num_classes=common.NUM_CLASSES,
            input_shape=common.input_shapes()["paper"],
        )
        dataset = input_pipeline.make_dataset(
            ingested, "train", model.image_spec, args.batch_size, True
        )

        logger.info("timing the pipeline alone")
        pipeline = pipeline_speed(dataset, args.pipeline_batches)

        optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
        # One step for both feeds: their batches have the same spec.
        step = train_steps.make_train_step(
            model, optimizer, tf.distribute.get_strategy(), args.batch_size
        )
        logger.info("timing the first batch of an epoch, and of one resumed")
        first, resumed = (
            first_batch_seconds(input_pipeline.make_dataset(
                ingested, "train", model.image_spec, args.batch_size, True, seed=0,
                repeat=True, skip=skip * args.batch_size))
            for skip in (0, args.resume_step))

        logger.info("timing training fed by the pipeline")
        fed = training_speed(step, dataset, args.steps, args.warmup_steps, args.batch_size)
        # A few real batches, held as tensors: training with no input cost at all.
        images, labels = zip(*dataset.take(min(args.steps, 4)))
        cached_dataset = tf.data.Dataset.from_tensor_slices(
            (tf.stack(images), tf.stack(labels))
        )
        logger.info("timing training from cached tensors")
        cached = training_speed(
            step, cached_dataset, args.steps, args.warmup_steps, args.batch_size
        )

    rows = (
        ("input pipeline alone, 227x227 augmented (images/s)", f"{pipeline:10.1f}"),
        ("AlexNet training fed by the pipeline (images/s)", f"{fed:10.1f}"),
        ("AlexNet training from cached tensors (images/s)", f"{cached:10.1f}"),
        ("pipeline / pipeline-fed training", f"{pipeline / fed:9.1f}x"),
        ("pipeline-fed / cached training", f"{fed / cached:10.3f}"),
        ("first batch of an epoch (s)", f"{first:10.2f}"),
        (f"first batch resumed at step {args.resume_step} (s)", f"{resumed:10.2f}"),
        (f"decoding those {args.resume_step} steps' batches (s)",
         f"{args.resume_step * args.batch_size / pipeline:10.2f}"),
    )
    print(f"batch {args.batch_size}, {args.steps} timed steps, {os.cpu_count()} CPUs")
    for name, value in rows:
        print(f"{name:<52}{value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
