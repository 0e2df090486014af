"""The SavedModel builder: a trained AlexNet as the next TF Serving version.

    saved_model_cli show --dir saved_models/alexnet/1 --all

Each export is `<export_dir>/<version>/` (1, 2, ...), the layout TF Serving
polls, with the signatures of `pipeline.serving.contract`.
`assets.extra/tf_serving_warmup_requests` holds a few requests TF Serving
replays before it serves the version; `assets.extra/alexnet_keras.json` the
model's Keras config and class names, from which this package rebuilds the
model without running the SavedModel (TF Serving ignores it).
"""

import json
import logging
import os

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from pipeline.config import DataConfig
from pipeline.data import image_formats
from pipeline.data import preprocess_ops
from pipeline.errors import PipelineError
from pipeline.errors import first_line
from pipeline.serving import contract
from pipeline.storage import atomic
from pipeline.storage import saved_models
from pipeline.training import precision

# What the signature answers for an image it cannot read (`valid` false and its
# `error` say why).
_INVALID = {"probabilities": 0.0, "class_id": -1, "class_name": "",
            "top_k_class_name": "", "top_k_probabilities": 0.0}
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# TF Serving only loads directories named by an integer, so a version is written
# under this prefix and renamed into place once it is complete.
_TEMP_PREFIX = ".tmp-"
# Each warm-up image is replayed alone and all of them once as a batch, so both a
# single-image and a batched request have run before the first real one.
_MAX_WARMUP_IMAGES = 4

logger = logging.getLogger(__name__)


def _scatter(values, indices, count, fill):
    """A batch of `count` holding `values` at `indices` and `fill` elsewhere."""
    shape = tf.concat([[count], tf.shape(values, out_type=tf.int64)[1:]], 0)
    base = tf.fill(shape, tf.constant(fill, values.dtype))
    return tf.tensor_scatter_nd_update(base, indices[:, tf.newaxis], values)


def _collect(dataset, empty):
    """The elements of `dataset` (at most `contract.MAX_IMAGES_PER_REQUEST`) as one batch;
    `empty`, a batch of none, when there are none."""
    # Taken with get_single_element, which runs no function of its own:
    # `Dataset.reduce` with the batch as its state cost 23 ms a request, ten
    # times the decoding and preprocessing it collected.
    batches = dataset.batch(contract.MAX_IMAGES_PER_REQUEST)
    return batches.concatenate(tf.data.Dataset.from_tensors(empty)).take(1).get_single_element()


# The decode pipeline runs once per request on at most a batch: tf.data's
# graph rewrites and autotuning cost more there than they save.
_ONE_REQUEST = tf.data.Options()
_ONE_REQUEST.experimental_optimization.apply_default_optimizations = False
_ONE_REQUEST.autotune.enabled = False
# Images of one request decoded at a time: faster on several cores (the
# answers are put back in order by index), and it bounds the memory a request
# can take to this many decoded images under the pixel limit.
_DECODE_PARALLELISM = 4


def _decode_each(image_bytes, image_spec, max_pixels, max_aspect_ratio, ten_crop=False):
    """Decodes and preprocesses each image on its own, so that a bad one costs
    only itself: returns the indices of the readable images, their model inputs
    in that order (ten patches each with `ten_crop`), and an error per image
    ("" for the readable ones).

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

    if ten_crop:
        preprocess, shape = preprocess_ops.ten_crops, (preprocess_ops.TEN_CROPS, *image_spec.shape)
    else:
        preprocess, shape = preprocess_ops.preprocess_for_eval, image_spec.shape

    def decode(index, encoded):
        image = preprocess_ops.decode_image(encoded, image_spec.channels)
        return index, tf.ensure_shape(preprocess(image, image_spec), shape)

    candidates = tf.where(tf.equal(errors, ""))[:, 0]
    decoded = tf.data.Dataset.from_tensor_slices(
        (candidates, tf.gather(image_bytes, candidates))
    ).map(decode, num_parallel_calls=_DECODE_PARALLELISM, deterministic=False
          ).ignore_errors().with_options(_ONE_REQUEST)
    indices, images = _collect(decoded, (tf.zeros([0], tf.int64), tf.zeros([0, *shape])))
    readable = _scatter(tf.ones_like(indices, tf.bool), indices, count, False)
    errors = tf.where(tf.equal(errors, "") & ~readable, "corrupt or truncated image data",
                      errors)
    return indices, images, errors


def _serving_functions(model, class_names, max_pixels, max_aspect_ratio):
    """The signatures' functions, by name: `contract.BYTES_SIGNATURE`,
    `contract.PIXELS_SIGNATURE` and `contract.TEN_CROP_SIGNATURE`."""
    names = tf.constant(list(class_names))
    top_k = min(contract.TOP_K, len(class_names))
    image_spec = model.image_spec

    def probabilities_of(images):
        # oneDNN's convolutions fail on a batch of none (TF 2.21), which a
        # request of only unreadable images makes: the model is not run then.
        logits = tf.cond(
            tf.shape(images)[0] > 0,
            lambda: model(images, training=False),
            lambda: tf.zeros([0, len(class_names)]),
        )
        return tf.nn.softmax(logits, axis=-1)

    def answer(probabilities):
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        best = tf.math.top_k(probabilities, k=top_k)
        return {
            "probabilities": probabilities,
            "class_id": class_id,
            "class_name": tf.gather(names, class_id),
            "top_k_class_name": tf.gather(names, best.indices),
            "top_k_probabilities": best.values,
        }

    def ten_crop_probabilities(patches):
        # The paper's test: the softmax of each of an image's ten patches, averaged.
        return preprocess_ops.ten_crop_average(probabilities_of, patches, image_spec)

    def image_bytes_function(ten_crop):
        def serve(image_bytes):
            count = tf.size(image_bytes, out_type=tf.int64)
            tf.debugging.assert_less_equal(
                count, tf.constant(contract.MAX_IMAGES_PER_REQUEST, tf.int64),
                message=f"a request takes at most {contract.MAX_IMAGES_PER_REQUEST} images",
            )
            indices, images, errors = _decode_each(
                image_bytes, image_spec, max_pixels, max_aspect_ratio, ten_crop
            )
            probabilities = (ten_crop_probabilities if ten_crop else probabilities_of)(images)
            answers = {
                name: _scatter(value, indices, count, _INVALID[name])
                for name, value in answer(probabilities).items()
            }
            return {**answers, "valid": tf.equal(errors, ""), "error": errors}

        return serve

    def serve_pixels(pixels):
        answers = answer(probabilities_of(preprocess_ops.preprocess_for_eval(pixels, image_spec)))
        count = tf.shape(pixels)[0]
        return {**answers, "valid": tf.fill([count], True), "error": tf.fill([count], "")}

    return {
        contract.BYTES_SIGNATURE: image_bytes_function(ten_crop=False),
        contract.PIXELS_SIGNATURE: serve_pixels,
        contract.TEN_CROP_SIGNATURE: image_bytes_function(ten_crop=True),
    }


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
    # The ten-crop signature's first request is warmed up too, on one image.
    requests = [(contract.BYTES_SIGNATURE, batch) for batch in batches]
    requests.append((contract.TEN_CROP_SIGNATURE, encoded_images[:1]))
    with tf.io.TFRecordWriter(path) as writer:
        for signature, batch in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            request.inputs[contract.BYTES_INPUT].CopyFrom(
                tf.make_tensor_proto(batch, dtype=tf.string)
            )
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def _write_export_info(version_dir, model, class_names, max_pixels, max_aspect_ratio):
    path = os.path.join(version_dir, saved_models.EXPORT_INFO_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as file:
        json.dump({"config": model.get_config(), "class_names": list(class_names),
                   "image_limits": {"max_pixels": max_pixels,
                                    "max_aspect_ratio": max_aspect_ratio}}, file)


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
            ingest. `pipeline.run` passes its own run's (`max_pixels`), so the
            export refuses exactly what the run's ingest refused; both are
            recorded in `assets.extra/alexnet_keras.json` (`image_limits`).
    """
    if not (isinstance(max_pixels, int) and max_pixels >= 1):
        raise PipelineError(f"`max_pixels` must be a positive integer. "
                            f"Received: max_pixels={max_pixels!r}")
    model = precision.float32_copy(model)
    num_logits = model.outputs[0].shape[-1] if model.outputs else None
    if num_logits is not None and num_logits != len(class_names):
        raise PipelineError(
            f"the model has {num_logits} outputs but {len(class_names)} class names "
            "were given; pass one class name per output"
        )
    export_dir = atomic.absolute(export_dir)
    try:
        # TF Serving ignores a killed export's temporary directory; it goes here.
        temp_dir = atomic.make(export_dir, _TEMP_PREFIX)
    except (OSError, tf.errors.OpError) as error:
        reason = getattr(error, "strerror", None) or getattr(error, "message", error)
        raise PipelineError(
            f"cannot write to {export_dir} ({reason}); choose another `export_dir`"
        ) from None
    version = saved_models.next_version(export_dir)
    version_dir = os.path.join(export_dir, str(version))
    if warmup_images:
        encoded = [_encode(image) for image in list(warmup_images)[:_MAX_WARMUP_IMAGES]]
    else:
        encoded = _generated_images(model.image_spec)

    functions = _serving_functions(model, class_names, max_pixels, max_aspect_ratio)
    image_bytes_spec = tf.TensorSpec([None], tf.string, name=contract.BYTES_INPUT)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        # Added first and under TF Serving's default name: what a client gets
        # when it names no signature.
        archive.add_endpoint(contract.BYTES_SIGNATURE, functions[contract.BYTES_SIGNATURE],
                             input_signature=[image_bytes_spec])
        archive.add_endpoint(
            contract.PIXELS_SIGNATURE,
            functions[contract.PIXELS_SIGNATURE],
            input_signature=[
                tf.TensorSpec(
                    [None, *model.image_spec.shape], tf.float32, name=contract.PIXELS_INPUT
                )
            ],
        )
        archive.add_endpoint(contract.TEN_CROP_SIGNATURE, functions[contract.TEN_CROP_SIGNATURE],
                             input_signature=[image_bytes_spec])
        archive.write_out(temp_dir, verbose=False)
        _write_warmup(temp_dir, os.path.basename(export_dir), encoded)
        _write_export_info(temp_dir, model, class_names, max_pixels, max_aspect_ratio)
        # One rename, so TF Serving never sees a half-written version (on an
        # object store, saved_model.pb is copied last); an existing version
        # (another export won the race) is never replaced.
        if not atomic.publish(temp_dir, version_dir, last=["saved_model.pb"]):
            raise PipelineError(
                f"{version_dir} appeared while exporting; run the export again"
            )
    except (OSError, tf.errors.OpError) as error:
        # A full disk or a quota: nothing half-written is left for TF Serving.
        atomic.remove(temp_dir)
        reason = getattr(error, "strerror", None) or first_line(error)
        raise PipelineError(
            f"cannot write the export to {export_dir} ({reason}); free space there and run "
            "the same command again (nothing was published)"
        ) from None
    except BaseException:
        atomic.remove(temp_dir)
        raise
    logger.info("Exported version %d to %s", version, version_dir)
    return version_dir
