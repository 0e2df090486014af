"""The serving contract: the signatures' names, inputs and outputs, and loading one.

Every export has three signatures:

- `serving_default`: `image_bytes`, string [None], encoded images of any size
  in the formats of `pipeline.data.image_formats`, decoded, resized and
  normalised in the graph by the same `preprocess_ops.preprocess_for_eval`
  that evaluation uses;
- `serving_pixels`: `pixels`, float32 [None, height, width, channels] in 0-255,
  for clients that decode images themselves;
- `serving_ten_crop`: `image_bytes` as `serving_default`, each image answered
  with the paper's ten-crop test (`preprocess_ops.ten_crops`: the softmax of
  its four corner patches, centre patch and their reflections, averaged), at
  ten forward passes per image.

All three answer `probabilities` (float32 [None, classes], softmax of the logits),
`class_id` (int64 [None]), `class_name` (string [None]), `top_k_class_name`
(string [None, k]) and `top_k_probabilities` (float32 [None, k]), k = min(5,
classes), `valid` (bool [None]) and `error` (string [None]): an image that
cannot be read (format, header, size limits, corrupt data) is answered as
invalid on its own, with class_id -1, empty names and zero probabilities.
"""

import tensorflow as tf

from pipeline.errors import PipelineError
from pipeline.errors import first_line

BYTES_SIGNATURE = "serving_default"
BYTES_INPUT = "image_bytes"
PIXELS_SIGNATURE = "serving_pixels"
PIXELS_INPUT = "pixels"
TEN_CROP_SIGNATURE = "serving_ten_crop"
OUTPUTS = (
    "probabilities",
    "class_id",
    "class_name",
    "top_k_class_name",
    "top_k_probabilities",
    "valid",
    "error",
)
# Images one request may carry; a larger request is malformed as a whole
# (INVALID_ARGUMENT).
MAX_IMAGES_PER_REQUEST = 1024
TOP_K = 5


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
            "python -m pipeline.export or python -m pipeline.run"
        )
    return loaded, loaded.signatures[BYTES_SIGNATURE]
