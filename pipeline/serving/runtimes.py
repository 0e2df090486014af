"""Export the bare network for other runtimes: LiteRT (phones, edge devices) and ONNX.

    python -m pipeline.run --export-format litert --export-format onnx

writes `model.tflite` and `model.onnx` in the run directory, through Keras' own
`Model.export(format=...)`: LiteRT through TensorFlow's converter, where the LRN
layer becomes LiteRT's LOCAL_RESPONSE_NORMALIZATION builtin; ONNX through
tf2onnx, where it becomes ONNX's LRN (whose alpha is divided by the window:
tf2onnx writes the paper's 1e-4 as 5e-4, the same formula).

Unlike the SavedModel's signatures, these files hold the network alone: they
take float32 `[batch, height, width, channels]` already preprocessed for the
model's `image_spec` (`pipeline.data.preprocess_ops.preprocess_for_eval` of 0-255
pixels: resize, central crop, `(pixels - pixel_offset) * pixel_scale`) and
return the logits, float32 `[batch, classes]`; softmax is the caller's. Run them
with `ai_edge_litert.interpreter.Interpreter` and `onnxruntime.InferenceSession`.
"""

import importlib
import logging
import os
import tempfile
import warnings

import tensorflow as tf

from pipeline.training import precision
from pipeline.storage import atomic
from pipeline.errors import PipelineError
from pipeline.errors import first_line

FILE_NAMES = {"litert": "model.tflite", "onnx": "model.onnx"}
INSTALL_EXTRA = 'pip install -e ".[export]" (or "alexnet-keras[export]")'
# What each format's export imports beyond TensorFlow and Keras: LiteRT's
# converter is part of TensorFlow. The extra also installs both runtimes.
_REQUIRED_MODULES = {"litert": (), "onnx": ("tf2onnx", "onnx")}

logger = logging.getLogger(__name__)


def check_installed(export_formats):
    """Raises a one-line `PipelineError` naming the `export` extra if a format of
    `export_formats` needs a package that cannot be imported; a run calls it
    before it trains, not after."""
    for export_format in export_formats:
        for module in _REQUIRED_MODULES.get(export_format, ()):
            try:
                importlib.import_module(module)
            except Exception as error:  # A broken install fails in many ways.
                raise PipelineError(
                    f"export_formats={export_format} needs the {module} package, which "
                    f"does not import ({first_line(error)}); install the export extra: "
                    f"{INSTALL_EXTRA}"
                ) from None


def export_file(model, export_format, path):
    """Write `model` (an AlexNet) as one `export_format` ("litert" or "onnx")
    file at `path` and return `path`.

    The file is written aside and renamed into place, so `path` never holds
    half a model; `path` may be on any file system TensorFlow has (`gs://`, ...).
    """
    if export_format not in FILE_NAMES:
        raise ValueError(
            f"`export_format` must be one of {', '.join(FILE_NAMES)}. "
            f"Received: export_format={export_format!r}"
        )
    check_installed([export_format])
    model = precision.float32_copy(model)
    # Stated, not inferred: Keras infers it only from a model that was called.
    input_spec = tf.TensorSpec([None, *model.image_spec.shape], tf.float32, name="image")
    path = atomic.absolute(path)
    directory = os.path.dirname(path)
    tf.io.gfile.makedirs(directory)
    local = atomic.is_local(path)
    # Beside the file when local, so the last step is a rename; the converters
    # write local files only, so elsewhere the file is copied from /tmp.
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=directory if local else None) as temp_dir:
        # The converter needs the file's own extension (LiteRT insists on .tflite).
        temp_path = os.path.join(temp_dir, os.path.basename(path))
        with warnings.catch_warnings():
            # Keras' tf2onnx patch probes `np.object`, which NumPy 2 warns about.
            warnings.filterwarnings("ignore", message=r".*np\.object", category=FutureWarning)
            model.export(temp_path, format=export_format, verbose=False,
                         input_signature=[input_spec])
        if not local:
            copied = f"{path}.{atomic.owner_tag()}.tmp"
            tf.io.gfile.copy(temp_path, copied, overwrite=True)
            temp_path = copied
        atomic.rename(temp_path, path)
    logger.info("Exported the %s model to %s", export_format, path)
    return path
