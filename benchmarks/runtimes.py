"""The LiteRT and ONNX files, float32 against int8: size and speed in their runtimes.

    python -m benchmarks.runtimes
    python -m benchmarks.runtimes --image-size 67 --calls 3  # smoke

It writes the paper AlexNet (227x227x3, 10 classes, random weights) as each
of `pipeline.serving.runtimes.FILE_NAMES` with `runtimes.export_file`, the
int8 forms calibrated (`runtimes.calibration_images`) on the training split
of JPEGs of 300-500 pixels ingested as `folder:`, and runs each in its own
runtime on the CPU (`runtimes.Runner`: LiteRT's interpreter with XNNPACK,
ONNX Runtime's CPU provider, as many threads as the process has cores), at
batch 1 and 32: the file's size and its images/s (median of
`--calls` calls), beside the float32 file of the same runtime and the
ratio. Accuracy is not measured here (the weights are random): the run's
`metrics.json` reports each int8 file's test accuracy in its runtime, and
tests/pipeline/serving/test_runtimes.py checks it against Keras.

Run it on a quiet machine; it names the CPU it ran on.
"""

import argparse
import os
import statistics
import sys
import tempfile

from benchmarks import common

BATCHES = (1, 32)
CALIBRATION_JPEGS = 50


def _runner(export_format, path, batch, image_shape):
    """A call that runs the file once on a batch of `batch` random model inputs."""
    import numpy as np

    from pipeline.serving import runtimes

    images = np.random.default_rng(0).normal(0, 60, (batch, *image_shape)).astype("float32")
    runner = runtimes.Runner(export_format, path)
    return lambda: runner(images)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runtimes",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per figure")
    args = parser.parse_args(argv)
    common.prepare_process()
    from alexnet_keras import AlexNet
    from pipeline.serving import runtimes

    model = AlexNet(num_classes=common.NUM_CLASSES,
                    input_shape=(args.image_size, args.image_size, 3))
    shape = model.image_spec.shape
    print(f"CPU: {common.cpu_model()}; paper AlexNet at {args.image_size}x{args.image_size}x3, "
          f"{args.calls} calls per figure")
    with tempfile.TemporaryDirectory() as directory:
        ingested = common.ingest_jpegs(directory, CALIBRATION_JPEGS)
        calibration = runtimes.calibration_images(ingested, model.image_spec)
        rates, sizes = {}, {}
        for export_format, file_name in runtimes.FILE_NAMES.items():
            path = runtimes.export_file(
                model, export_format, os.path.join(directory, file_name), calibration,
                float_onnx=os.path.join(directory, runtimes.FILE_NAMES["onnx"])
                if export_format == "onnx_int8" else None)
            sizes[export_format] = os.path.getsize(path)
            for batch in BATCHES:
                times = common.latencies(_runner(export_format, path, batch, shape), args.calls)
                rates[export_format, batch] = batch / statistics.median(times)

        print(f"{'file':<18} {'MB':>7} {'size ratio':>10}"
              + "".join(f" {f'b{batch} img/s':>11} {'ratio':>6}" for batch in BATCHES))
        for export_format, file_name in runtimes.FILE_NAMES.items():
            reference = export_format.removesuffix("_int8")
            row = (f"{file_name:<18} {sizes[export_format] / 1e6:>7.1f} "
                   f"{sizes[export_format] / sizes[reference]:>10.2f}")
            for batch in BATCHES:
                rate = rates[export_format, batch]
                row += f" {rate:>11.1f} {rate / rates[reference, batch]:>6.2f}"
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
