"""The pusher: what a run leaves for serving, from the chief only.

A blessed model becomes the next TF Serving version under `export_dir`;
`export_formats` adds a `.keras` file and the LiteRT and ONNX files to the run
directory.
"""

import dataclasses
import logging
import os

import tensorflow as tf

from pipeline.errors import PipelineError
from pipeline.serving import builder
from pipeline.serving import runtimes
from pipeline.storage import atomic
from pipeline.training import precision

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Pushed:
    """Where the pusher put the model: a served version, a .keras, .tflite or
    .onnx file, or None."""

    export_path: str | None = None
    keras_path: str | None = None
    litert_path: str | None = None
    onnx_path: str | None = None


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
    runtime_paths = {
        f"{export_format}_path": runtimes.export_file(
            model, export_format, os.path.join(run_dir, file_name)
        )
        for export_format, file_name in runtimes.FILE_NAMES.items()
        if chief and export_format in export_config.export_formats
    }
    return Pushed(export_path, keras_path, **runtime_paths)


def export_keras(model, path):
    """Save `model` as a `.keras` file at `path` (for retraining or Keras tools)."""
    if not str(path).endswith(".keras"):
        raise PipelineError(f"a Keras model file must end in .keras. Received: {path}")
    tf.io.gfile.makedirs(os.path.dirname(atomic.absolute(path)))
    precision.float32_copy(model).save(path)
    logger.info("Saved the Keras model to %s", path)
    return str(path)
