"""The pusher: what a run leaves for serving, from the chief only.

A blessed model becomes the next TF Serving version under `export_dir`;
`export_formats` adds a `.keras` file and the LiteRT and ONNX files (float32
or int8) to the run directory. Each int8 file is calibrated on training images
and scored on the test split in its own runtime.
"""

import dataclasses
import logging
import os
import tempfile

import tensorflow as tf

from pipeline.data import input_pipeline
from pipeline.errors import PipelineError
from pipeline.serving import builder
from pipeline.serving import runtimes
from pipeline.storage import atomic
from pipeline.training import precision

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Pushed:
    """Where the pusher put the model: a served version, a .keras, .tflite or
    .onnx file, or None; and the test accuracy of each int8 file run in its
    runtime, by format."""

    export_path: str | None = None
    keras_path: str | None = None
    litert_path: str | None = None
    onnx_path: str | None = None
    litert_int8_path: str | None = None
    onnx_int8_path: str | None = None
    int8_test_accuracy: dict = dataclasses.field(default_factory=dict)


def push(model, ingested, export_config, run_dir, chief, blessed, max_pixels):
    """The pusher: a new TF Serving version if the model is `blessed`, and the
    `.keras`, LiteRT and ONNX files `export_formats` asks for, from the chief
    only. The version refuses the images the run's ingest refused: over
    `max_pixels` (the run's setting) or of an extreme aspect ratio."""
    export_path = keras_path = None
    if chief and blessed:
        # TF Serving replays a few real test images before it serves the version.
        warmup_images, _ = next(ingested.encoded_batches("test", batch_size=3))
        export_path = builder.export_saved_model(
            model, ingested.class_names, export_config.export_dir,
            warmup_images=list(warmup_images), max_pixels=max_pixels,
        )
    if chief and "keras" in export_config.export_formats:
        keras_path = export_keras(model, os.path.join(run_dir, "model.keras"))
    formats = [export_format for export_format in runtimes.FILE_NAMES
               if chief and export_format in export_config.export_formats]
    calibration = None
    if set(formats) & set(runtimes.QUANTIZED):
        calibration = runtimes.calibration_images(ingested, model.image_spec)
    runtime_paths, int8_accuracy = {}, {}
    for export_format in formats:
        float_onnx = runtime_paths.get("onnx_path")
        path = runtimes.export_file(
            model, export_format, os.path.join(run_dir, runtimes.FILE_NAMES[export_format]),
            calibration, float_onnx=float_onnx if float_onnx and atomic.is_local(float_onnx)
            else None)
        runtime_paths[f"{export_format}_path"] = path
        if export_format in runtimes.QUANTIZED:
            int8_accuracy[export_format] = _runtime_accuracy(export_format, path, ingested,
                                                             model.image_spec)
            logger.info("%s test accuracy in its runtime: %.4f", export_format,
                        int8_accuracy[export_format])
    return Pushed(export_path, keras_path, **runtime_paths, int8_test_accuracy=int8_accuracy)


def _runtime_accuracy(export_format, path, ingested, image_spec):
    """Top-1 accuracy on the test split of the `export_format` file at `path`, in
    its runtime, on the images evaluation preprocesses for the Keras model."""
    local = path if atomic.is_local(path) else None
    with tempfile.TemporaryDirectory() as temp_dir:
        if local is None:  # The runtimes read local files only.
            local = os.path.join(temp_dir, os.path.basename(path))
            tf.io.gfile.copy(path, local)
        runner, correct = runtimes.Runner(export_format, local), 0
        for images, labels in input_pipeline.make_dataset(ingested, "test", image_spec, 64,
                                                          training=False):
            predicted = runner(images.numpy()).argmax(axis=1)
            correct += int((predicted == labels.numpy()).sum())
    return correct / ingested.num_examples("test")


def export_keras(model, path):
    """Save `model` as a `.keras` file at `path` (for retraining or Keras tools)."""
    if not str(path).endswith(".keras"):
        raise PipelineError(f"a Keras model file must end in .keras. Received: {path}")
    tf.io.gfile.makedirs(os.path.dirname(atomic.absolute(path)))
    precision.float32_copy(model).save(path)
    logger.info("Saved the Keras model to %s", path)
    return str(path)
