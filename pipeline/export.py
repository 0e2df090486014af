"""Export a trained AlexNet for TensorFlow Serving: numbered SavedModel versions.

`python -m pipeline.run` calls `export_saved_model` for a blessed model; inspect
what it wrote with

    saved_model_cli show --dir saved_models/alexnet/1 --all

Each export is `<export_dir>/<version>/` (1, 2, ...), the layout TF Serving polls,
with two signatures:

- `serving_default`: `image_bytes`, string [None], encoded images of any size
  in the formats of `pipeline.image_formats`, decoded, resized and normalised in
  the graph by the same `pipeline.preprocess_ops.preprocess_for_eval` that
  evaluation uses;
- `serving_pixels`: `pixels`, float32 [None, height, width, channels] in 0-255,
  for clients that decode images themselves.

Both answer `probabilities` (float32 [None, classes], softmax of the logits),
`class_id` (int64 [None]), `class_name` (string [None]), `top_k_class_name`
(string [None, k]) and `top_k_probabilities` (float32 [None, k]), k = min(5,
classes), `valid` (bool [None]) and `error` (string [None]): an image that
cannot be read (format, header, size limits, corrupt data) is answered as
invalid on its own, with class_id -1, empty names and zero probabilities.
`assets.extra/tf_serving_warmup_requests` holds a few requests TF Serving
replays before it serves the version.
"""

import dataclasses
import logging
import os

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from pipeline import export_runtimes
from pipeline import image_formats
from pipeline import model_factory
from pipeline import preprocess_ops
from pipeline import temp_dirs
from pipeline.config import DataConfig
from pipeline.config import PipelineError
from pipeline.config import first_line

BYTES_SIGNATURE = "serving_default"
BYTES_INPUT = "image_bytes"
PIXELS_SIGNATURE = "serving_pixels"
PIXELS_INPUT = "pixels"
OUTPUTS = (
    "probabilities",
    "class_id",
    "class_name",
    "top_k_class_name",
    "top_k_probabilities",
    "valid",
    "error",
)
# What the signature answers for an image it cannot read (`valid` false and its
# `error` say why).
_INVALID = {"probabilities": 0.0, "class_id": -1, "class_name": "",
            "top_k_class_name": "", "top_k_probabilities": 0.0}
# Images one request may carry; a larger request is malformed as a whole
# (INVALID_ARGUMENT).
MAX_IMAGES_PER_REQUEST = 1024
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
TOP_K = 5
# TF Serving only loads directories named by an integer, so a version is written
# under this prefix and renamed into place once it is complete.
_TEMP_PREFIX = ".tmp-"
# Each warm-up image is replayed alone and all of them once as a batch, so both a
# single-image and a batched request have run before the first real one.
_MAX_WARMUP_IMAGES = 4

logger = logging.getLogger(__name__)


def versions(export_dir):
    """The integer version numbers present in `export_dir`, ascending."""
    if not tf.io.gfile.isdir(export_dir):
        return []
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(export_dir)]
    return sorted(
        int(name)
        for name in names
        if name.isdigit() and tf.io.gfile.isdir(os.path.join(export_dir, name))
    )


def resolve_saved_model(path):
    """A version directory as given, or the newest version of a base directory."""
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if not found:
        raise PipelineError(
            f"{path} is neither a SavedModel nor a directory of numbered versions; "
            "pass a version directory such as saved_models/alexnet/1 or its parent"
        )
    return os.path.join(path, str(found[-1]))


def load_serving_signature(version_dir):
    """`(loaded, signature)`: the export's `serving_default` and the object that
    owns the variables it reads (keep it alive while the signature is used)."""
    try:
        loaded = tf.saved_model.load(version_dir)
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise PipelineError(
            f"cannot load the SavedModel in {version_dir} ({first_line(error)}); "
            "check that it is a complete export"
        ) from None
    if BYTES_SIGNATURE not in loaded.signatures:
        raise PipelineError(
            f"{version_dir} has no {BYTES_SIGNATURE} signature; export it with "
            "pipeline.export"
        )
    return loaded, loaded.signatures[BYTES_SIGNATURE]


def _scatter(values, indices, count, fill):
    """A batch of `count` holding `values` at `indices` and `fill` elsewhere."""
    shape = tf.concat([[count], tf.shape(values, out_type=tf.int64)[1:]], 0)
    base = tf.fill(shape, tf.constant(fill, values.dtype))
    return tf.tensor_scatter_nd_update(base, indices[:, tf.newaxis], values)


def _collect(dataset, empty):
    """The elements of `dataset` (at most `MAX_IMAGES_PER_REQUEST`) as one batch;
    `empty`, a batch of none, when there are none."""
    return dataset.batch(MAX_IMAGES_PER_REQUEST).reduce(empty, lambda _, batch: batch)


# The decode pipeline runs once per request on at most a batch: tf.data's
# graph rewrites and autotuning cost more there than they save.
_ONE_REQUEST = tf.data.Options()
_ONE_REQUEST.experimental_optimization.apply_default_optimizations = False
_ONE_REQUEST.autotune.enabled = False
# Images of one request decoded at a time: faster on several cores (the
# answers are put back in order by index), and it bounds the memory a request
# can take to this many decoded images under the pixel limit.
_DECODE_PARALLELISM = 4


def _decode_each(image_bytes, image_spec, max_pixels, max_aspect_ratio):
    """Decodes and preprocesses each image on its own, so that a bad one costs
    only itself: returns the indices of the readable images, their model inputs
    in that order, and an error per image ("" for the readable ones).

    Inside the graph TF Serving runs, with no Python: the sizes are read from
    the headers first (plain ops over the batch), so an image over the limits
    is turned away before it is decoded; then `tf.data` maps the rest, as
    (index, bytes) pairs, through decode and preprocessing, and
    `ignore_errors()` drops the images whose ops failed.
    """
    count = tf.size(image_bytes, out_type=tf.int64)
    supported, height, width = image_formats.header_sizes_op(image_bytes)
    errors = tf.where(
        ~supported, f"not a {image_formats.FORMATS_TEXT} image", tf.where(
            height < 0, "truncated or malformed image header", tf.where(
                height * width > max_pixels, f"over {max_pixels:,} pixels", tf.where(
                    tf.maximum(height, width) > max_aspect_ratio * tf.maximum(
                        tf.minimum(height, width), 1
                    ), f"sides more than {max_aspect_ratio}:1", ""))))

    def decode(index, encoded):
        image = preprocess_ops.decode_image(encoded, image_spec.channels)
        return index, tf.ensure_shape(
            preprocess_ops.preprocess_for_eval(image, image_spec), image_spec.shape
        )

    candidates = tf.where(tf.equal(errors, ""))[:, 0]
    decoded = tf.data.Dataset.from_tensor_slices(
        (candidates, tf.gather(image_bytes, candidates))
    ).map(decode, num_parallel_calls=_DECODE_PARALLELISM, deterministic=False
          ).ignore_errors().with_options(_ONE_REQUEST)
    indices, images = _collect(decoded, (tf.zeros([0], tf.int64),
                                         tf.zeros([0, *image_spec.shape])))
    readable = _scatter(tf.ones_like(indices, tf.bool), indices, count, False)
    errors = tf.where(tf.equal(errors, "") & ~readable, "corrupt or truncated image data",
                      errors)
    return indices, images, errors


def _serving_functions(model, class_names, max_pixels, max_aspect_ratio):
    names = tf.constant(list(class_names))
    top_k = min(TOP_K, len(class_names))
    image_spec = model.image_spec

    def classify(images):
        # oneDNN's convolutions fail on a batch of none (TF 2.21), which a
        # request of only unreadable images makes: the model is not run then.
        logits = tf.cond(
            tf.shape(images)[0] > 0,
            lambda: model(images, training=False),
            lambda: tf.zeros([0, len(class_names)]),
        )
        probabilities = tf.nn.softmax(logits, axis=-1)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        best = tf.math.top_k(probabilities, k=top_k)
        return {
            "probabilities": probabilities,
            "class_id": class_id,
            "class_name": tf.gather(names, class_id),
            "top_k_class_name": tf.gather(names, best.indices),
            "top_k_probabilities": best.values,
        }

    def serve_image_bytes(image_bytes):
        count = tf.size(image_bytes, out_type=tf.int64)
        tf.debugging.assert_less_equal(
            count, tf.constant(MAX_IMAGES_PER_REQUEST, tf.int64),
            message=f"a request takes at most {MAX_IMAGES_PER_REQUEST} images",
        )
        indices, images, errors = _decode_each(
            image_bytes, image_spec, max_pixels, max_aspect_ratio
        )
        valid = tf.equal(errors, "")
        answers = {
            name: _scatter(value, indices, count, _INVALID[name])
            for name, value in classify(images).items()
        }
        return {**answers, "valid": valid, "error": errors}

    def serve_pixels(pixels):
        answers = classify(preprocess_ops.preprocess_for_eval(pixels, image_spec))
        count = tf.shape(pixels)[0]
        return {**answers, "valid": tf.fill([count], True), "error": tf.fill([count], "")}

    return serve_image_bytes, serve_pixels


def _encode(image):
    if isinstance(image, bytes):
        return image
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., np.newaxis]
    return tf.io.encode_png(image.astype(np.uint8)).numpy()


def _generated_images(image_spec):
    # A smooth gradient, deliberately not at the model's size, so the warm-up
    # exercises resizing and both the PNG and the JPEG decoder.
    height, width = image_spec.height + 13, image_spec.width + 7
    rows = np.linspace(0, 255, height)[:, np.newaxis, np.newaxis]
    cols = np.linspace(255, 0, width)[np.newaxis, :, np.newaxis]
    image = ((rows + cols) / 2 * np.ones((1, 1, image_spec.channels))).astype(np.uint8)
    return [tf.io.encode_png(image).numpy(), tf.io.encode_jpeg(image).numpy()]


def _write_warmup(version_dir, model_name, encoded_images):
    path = os.path.join(version_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    batches = [[image] for image in encoded_images]
    if len(encoded_images) > 1:
        batches.append(list(encoded_images))
    with tf.io.TFRecordWriter(path) as writer:
        for batch in batches:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = BYTES_SIGNATURE
            request.inputs[BYTES_INPUT].CopyFrom(
                tf.make_tensor_proto(batch, dtype=tf.string)
            )
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def export_saved_model(
    model, class_names, export_dir, warmup_images=None, *,
    max_pixels=DataConfig.max_pixels, max_aspect_ratio=image_formats.MAX_ASPECT_RATIO,
):
    """Write `model` as the next version under `export_dir` and return its path.

    Args:
        model: an AlexNet (or any Keras model with an `image_spec`) returning
            logits; the serving graph preprocesses images for its `image_spec`.
        class_names: one name per logit, in logit order.
        export_dir: TF Serving's base path for this model, e.g.
            `saved_models/alexnet`; its last component names the model in the
            warm-up requests.
        warmup_images: optional encoded images (bytes) or uint8 arrays
            `[height, width, channels]` to replay at load time, e.g. a few test
            images; a generated image is used when not given.
        max_pixels, max_aspect_ratio: images with more pixels, or a long side
            more than this many times the short one, are answered as invalid
            (read from the header, never decoded); by default the limits of
            ingest.
    """
    model = model_factory.float32_copy(model)
    num_logits = model.outputs[0].shape[-1] if model.outputs else None
    if num_logits is not None and num_logits != len(class_names):
        raise PipelineError(
            f"the model has {num_logits} outputs but {len(class_names)} class names "
            "were given; pass one class name per output"
        )
    export_dir = temp_dirs.absolute(export_dir)
    try:
        # TF Serving ignores a killed export's temporary directory; it goes here.
        temp_dir = temp_dirs.make(export_dir, _TEMP_PREFIX)
    except (OSError, tf.errors.OpError) as error:
        reason = getattr(error, "strerror", None) or getattr(error, "message", error)
        raise PipelineError(
            f"cannot write to {export_dir} ({reason}); choose another `export_dir`"
        ) from None
    version = max(versions(export_dir), default=0) + 1
    version_dir = os.path.join(export_dir, str(version))
    if warmup_images:
        encoded = [_encode(image) for image in list(warmup_images)[:_MAX_WARMUP_IMAGES]]
    else:
        encoded = _generated_images(model.image_spec)

    serve_image_bytes, serve_pixels = _serving_functions(
        model, class_names, max_pixels, max_aspect_ratio
    )
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        # Added first and under TF Serving's default name: what a client gets
        # when it names no signature.
        archive.add_endpoint(
            BYTES_SIGNATURE,
            serve_image_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)],
        )
        archive.add_endpoint(
            PIXELS_SIGNATURE,
            serve_pixels,
            input_signature=[
                tf.TensorSpec(
                    [None, *model.image_spec.shape], tf.float32, name=PIXELS_INPUT
                )
            ],
        )
        archive.write_out(temp_dir, verbose=False)
        _write_warmup(temp_dir, os.path.basename(export_dir), encoded)
        # One rename, so TF Serving never sees a half-written version (on an
        # object store, saved_model.pb is copied last); an existing version
        # (another export won the race) is never replaced.
        if not temp_dirs.publish(temp_dir, version_dir, last=["saved_model.pb"]):
            raise PipelineError(
                f"{version_dir} appeared while exporting; run the export again"
            )
    except BaseException:
        temp_dirs.remove(temp_dir)
        raise
    logger.info("Exported version %d to %s", version, version_dir)
    return version_dir


@dataclasses.dataclass(frozen=True)
class Pushed:
    """Where the pusher put the model: a served version, a .keras, .tflite or
    .onnx file, or None."""

    export_path: str | None = None
    keras_path: str | None = None
    litert_path: str | None = None
    onnx_path: str | None = None


def push(model, ingested, export_config, run_dir, chief, blessed):
    """The pusher: a new TF Serving version if the model is `blessed`, and the
    `.keras`, LiteRT and ONNX files `export_formats` asks for, from the chief
    only."""
    export_path = keras_path = None
    if chief and blessed:
        # TF Serving replays a few real test images before it serves the version.
        warmup_images, _ = next(ingested.encoded_batches("test", batch_size=3))
        export_path = export_saved_model(
            model, ingested.class_names, export_config.export_dir,
            warmup_images=list(warmup_images),
        )
    if chief and "keras" in export_config.export_formats:
        keras_path = export_keras(model, os.path.join(run_dir, "model.keras"))
    runtime_paths = {
        f"{export_format}_path": export_runtimes.export_file(
            model, export_format, os.path.join(run_dir, file_name)
        )
        for export_format, file_name in export_runtimes.FILE_NAMES.items()
        if chief and export_format in export_config.export_formats
    }
    return Pushed(export_path, keras_path, **runtime_paths)


def export_keras(model, path):
    """Save `model` as a `.keras` file at `path` (for retraining or Keras tools)."""
    if not str(path).endswith(".keras"):
        raise PipelineError(f"a Keras model file must end in .keras. Received: {path}")
    tf.io.gfile.makedirs(os.path.dirname(temp_dirs.absolute(path)))
    model_factory.float32_copy(model).save(path)
    logger.info("Saved the Keras model to %s", path)
    return str(path)
