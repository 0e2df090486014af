"""How fast does ingest check and shard images? Images/s and MB/s, one process.

    python -m benchmarks.ingest --images 2000
    python -m benchmarks.ingest --images 20     # a smoke run

Writes `--images` JPEGs of ImageNet's typical size (500x375, landscape or
portrait) into a temporary folder in two classes, then times
`pipeline.ingest.ingest` on it as `folder:`: reading, the header size check,
a full decode of every image, and writing the shards. The files are written
just before, so they come from the page cache: the figure is ingest's own
cost, not the disk's.
"""

import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks import common
from pipeline.data import ingest
from pipeline.config import DataConfig

# ImageNet's most common sizes (its images average ~400x350, ~110 KB).
SIZES = ((375, 500), (500, 375))


def write_jpegs(directory, count, seed=0):
    """`count` JPEGs at quality 90: smooth random colour fields with a little
    noise, so they compress like photos (white noise would not). Returns bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for index in range(count):
        height, width = SIZES[index % len(SIZES)]
        coarse = rng.uniform(0, 255, (height // 32 + 2, width // 32 + 2, 3))
        image = tf.image.resize(coarse, (height, width)) + rng.normal(0, 8, (height, width, 3))
        data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90)
        class_dir = os.path.join(directory, f"class_{index % 2}")
        os.makedirs(class_dir, exist_ok=True)
        path = os.path.join(class_dir, f"{index:06d}.jpg")
        tf.io.write_file(path, data)
        total += os.path.getsize(path)
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to write and ingest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as directory:
        images = os.path.join(directory, "images")
        size = write_jpegs(images, args.images)
        start = time.perf_counter()
        ingested = ingest.ingest(DataConfig(dataset=f"folder:{images}"),
                                 os.path.join(directory, "out"))
        seconds = time.perf_counter() - start
    done = sum(ingested.num_examples(split) for split in ingested.splits)
    print(f"CPU: {common.cpu_model()}")
    print(f"{done} JPEGs of 500x375, {size / args.images / 1e3:.0f} KB each: "
          f"{seconds:.2f} s, {done / seconds:.1f} images/s, {size / 1e6 / seconds:.1f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
