"""Export the bare network for other runtimes: LiteRT (phones, edge devices) and ONNX.

    python -m pipeline.run --export-format litert --export-format onnx
    python -m pipeline.run --export-format litert_int8 --export-format onnx_int8

writes `model.tflite` and `model.onnx` in the run directory, through Keras' own
`Model.export(format=...)`: LiteRT through TensorFlow's converter, where the LRN
layer becomes LiteRT's LOCAL_RESPONSE_NORMALIZATION builtin; ONNX through
tf2onnx, where it becomes ONNX's LRN (whose alpha is divided by the window:
tf2onnx writes the paper's 1e-4 as 5e-4, the same formula).

The `_int8` forms, `model_int8.tflite` and `model_int8.onnx`, are quantized
after training, both fully: int8 weights (per output channel) and int8
activations, their ranges calibrated on training images preprocessed as for
evaluation. LiteRT's through its converter's full-integer mode (a
representative dataset), ONNX's through ONNX Runtime's static quantization
(QDQ format: uint8 activations, int8 weights). LRN has no integer kernel in
either runtime and stays float32 between a dequantize and a quantize; the
input and the logits stay float32, so the int8 files are called exactly as the
float ones. Dynamic-range quantization (int8 weights only, no calibration) was
measured and not chosen: in LiteRT it was no faster than full integer, and in
ONNX Runtime slower than float32 and less accurate (docs/serving.md).

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

from pipeline.data import input_pipeline
from pipeline.training import precision
from pipeline.storage import atomic
from pipeline.errors import PipelineError
from pipeline.errors import first_line

FILE_NAMES = {"litert": "model.tflite", "onnx": "model.onnx",
              "litert_int8": "model_int8.tflite", "onnx_int8": "model_int8.onnx"}
QUANTIZED = ("litert_int8", "onnx_int8")
# Training images the int8 forms calibrate their activation ranges on: TF's
# guide asks for "around hundreds"; the ranges of 200 digits images gave the
# same test accuracy as float32.
CALIBRATION_IMAGES = 200
INSTALL_EXTRA = 'pip install -e ".[export]" (or "alexnet-keras[export]")'
# What each format's export imports beyond TensorFlow and Keras: LiteRT's
# converter is part of TensorFlow, ONNX's quantizer part of ONNX Runtime. The
# extra also installs both runtimes.
_REQUIRED_MODULES = {"litert": (), "onnx": ("tf2onnx", "onnx"), "litert_int8": (),
                     "onnx_int8": ("tf2onnx", "onnx", "onnxruntime.quantization")}

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


def export_file(model, export_format, path, calibration_images=None, float_onnx=None):
    """Write `model` (an AlexNet) as one `export_format` file (a key of
    `FILE_NAMES`) at `path` and return `path`.

    The `QUANTIZED` formats need `calibration_images`: float32 `[n, height,
    width, channels]` model inputs (`preprocess_for_eval` of training images;
    `CALIBRATION_IMAGES` of them is enough). `onnx_int8` quantizes
    `float_onnx`, a local `onnx` file of the same model, where given, instead
    of converting the model again (tf2onnx takes the longest). The file is written aside and
    renamed into place, so `path` never holds half a model; `path` may be on
    any file system TensorFlow has (`gs://`, ...).
    """
    if export_format not in FILE_NAMES:
        raise ValueError(
            f"`export_format` must be one of {', '.join(FILE_NAMES)}. "
            f"Received: export_format={export_format!r}"
        )
    if export_format in QUANTIZED and (
            calibration_images is None or len(calibration_images) == 0):
        raise ValueError(f"export_format={export_format} needs `calibration_images`")
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
        if export_format == "litert_int8":
            _export(model, temp_path, "litert", input_spec,
                    **_full_integer_options(calibration_images))
        elif export_format == "onnx_int8":
            float_path = float_onnx
            if float_path is None:
                float_path = os.path.join(temp_dir, "float.onnx")
                _export(model, float_path, "onnx", input_spec)
            _quantize_onnx(float_path, temp_path, calibration_images, temp_dir)
        else:
            _export(model, temp_path, export_format, input_spec)
        if not local:
            copied = f"{path}.{atomic.owner_tag()}.tmp"
            tf.io.gfile.copy(temp_path, copied, overwrite=True)
            temp_path = copied
        atomic.rename(temp_path, path)
    logger.info("Exported the %s model to %s", export_format, path)
    return path


class Runner:
    """A LiteRT or ONNX file (local) loaded once in its own runtime on the CPU,
    LiteRT's interpreter or ONNX Runtime, on `threads` threads (default: the
    cores this process may use). Called with float32 model inputs
    `[batch, height, width, channels]`, it returns their logits."""

    def __init__(self, export_format, path, threads=None):
        threads = threads or len(os.sched_getaffinity(0))
        self._litert = export_format.startswith("litert")
        if self._litert:
            from ai_edge_litert import interpreter as litert

            self._interpreter = litert.Interpreter(model_path=str(path), num_threads=threads)
            (self._input,) = self._interpreter.get_input_details()
            (self._output,) = self._interpreter.get_output_details()
            self._shape = None
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            self._session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"])
            (self._input,) = self._session.get_inputs()

    def __call__(self, images):
        if not self._litert:
            return self._session.run(None, {self._input.name: images})[0]
        if images.shape != self._shape:  # Tensors are reallocated only for a new shape.
            self._interpreter.resize_tensor_input(self._input["index"], images.shape)
            self._interpreter.allocate_tensors()
            self._shape = images.shape
        self._interpreter.set_tensor(self._input["index"], images)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"])


def calibration_images(ingested, image_spec, count=CALIBRATION_IMAGES):
    """The first `count` training images (file order) as the model sees them in
    evaluation, float32 `[count, height, width, channels]`: what the
    `QUANTIZED` formats calibrate on."""
    dataset = input_pipeline.make_dataset(
        ingested, "train", image_spec, min(count, ingested.num_examples("train")),
        training=False)
    images, _ = next(iter(dataset))
    return images.numpy()


def _export(model, path, export_format, input_spec, **options):
    """Keras' own export of `model` to a local `path`; `options` go to the converter."""
    with warnings.catch_warnings():
        # Keras' tf2onnx patch probes `np.object`, which NumPy 2 warns about.
        warnings.filterwarnings("ignore", message=r".*np\.object", category=FutureWarning)
        model.export(path, format=export_format, verbose=False, input_signature=[input_spec],
                     **options)


def _full_integer_options(calibration_images):
    """LiteRT converter settings for int8 weights and activations, LRN kept in
    float32 (`TFLITE_BUILTINS` beside the int8 set lets an op without an int8
    kernel stay float), float32 input and logits."""

    def representative_dataset():
        for index in range(len(calibration_images)):
            yield [calibration_images[index:index + 1]]

    return {
        "optimizations": [tf.lite.Optimize.DEFAULT],
        "representative_dataset": representative_dataset,
        "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                          tf.lite.OpsSet.TFLITE_BUILTINS]},
    }


def _quantize_onnx(float_path, path, calibration_images, temp_dir):
    """ONNX Runtime's static quantization of the ONNX file at `float_path` into
    `path`, calibrated on `calibration_images`."""
    import onnx
    from onnxruntime import quantization

    (image_input,) = onnx.load(float_path, load_external_data=False).graph.input

    class Images(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = ({image_input.name: calibration_images[index:index + 1]}
                            for index in range(len(calibration_images)))

        def get_next(self):
            return next(self.batches, None)

    # ONNX Runtime's own preparation: shapes inferred and the graph folded, so
    # that every convolution and matrix product is quantized.
    prepared = os.path.join(temp_dir, "prepared.onnx")
    quantization.quant_pre_process(float_path, prepared)
    quantization.quantize_static(
        prepared, path, Images(), quant_format=quantization.QuantFormat.QDQ,
        activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8, per_channel=True,
    )
