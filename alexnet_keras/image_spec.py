"""What a model's input is: its image size and channels, how pixels are scaled,
and how an image of any size is cropped and resized to it for evaluation."""

import dataclasses

import numpy as np
from keras import ops

# The evaluation crop keeps the central 87.5% of each side (224 of 256, the
# usual ImageNet ratio; the paper's 227 of 256 is close).
EVAL_CROP_FRACTION = 0.875


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """The input an AlexNet expects, as keras-hub's `ImageConverter` describes one.

    A model built for this spec takes float images of `(height, width,
    channels)` made from 0-255 pixels as `(pixels - pixel_offset) * pixel_scale`,
    each one number for every channel or one per channel (torchvision's
    ImageNet mean and standard deviation).
    For evaluation and serving, an image of any size is first cut to its central
    `crop_fraction` of each side and resized to cover `(height, width)`.
    Every `AlexNet` carries one (`model.image_spec`) and saves it in its config,
    so whatever preprocesses images for it (training, evaluation, a serving
    signature, a user with a `.keras` file) reads it from the model instead of
    being told by hand.

    Args:
        height: int, rows of the model's input.
        width: int, columns of the model's input.
        channels: int, 1 (grey) or 3 (RGB).
        pixel_offset: float, or a tuple of one per channel, subtracted from
            0-255 pixels (127.5 centres them).
        pixel_scale: float, or a tuple of one per channel, the centred pixels
            are multiplied by.
        crop_fraction: float in (0, 1], the share of each side of an image
            that evaluation keeps, centred.

    Example:

    ```python
    import alexnet_keras  # registers AlexNet, which load_model needs

    model = keras.saving.load_model("model.keras")
    # images: 0-255, (batch, any height, any width, model.image_spec.channels).
    probabilities = keras.ops.softmax(model(model.image_spec.preprocess(images)))
    ```
    """

    height: int
    width: int
    channels: int
    pixel_offset: float | tuple[float, ...] = 127.5
    pixel_scale: float | tuple[float, ...] = 1.0
    crop_fraction: float = EVAL_CROP_FRACTION

    def __post_init__(self):
        for name in ("pixel_offset", "pixel_scale"):
            value = getattr(self, name)
            if np.ndim(value) == 0:
                value = float(value)
            elif np.ndim(value) == 1 and len(value) == self.channels:
                value = tuple(float(item) for item in value)
            else:
                raise ValueError(
                    f"`{name}` must be a number or one number per channel ({self.channels}). "
                    f"Received: {name}={value!r}"
                )
            # Frozen: the normalised value is set once, here.
            object.__setattr__(self, name, value)
        object.__setattr__(self, "crop_fraction", float(self.crop_fraction))
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(
                f"`crop_fraction` must be in (0, 1]. Received: crop_fraction={self.crop_fraction!r}"
            )

    @property
    def image_size(self):
        """`(height, width)`."""
        return self.height, self.width

    @property
    def shape(self):
        """`(height, width, channels)`."""
        return self.height, self.width, self.channels

    def normalize(self, pixels):
        """0-255 pixels (any float tensor or array, channels last) as the model
        takes them."""
        offset, scale = self.pixel_offset, self.pixel_scale
        if isinstance(offset, tuple):
            offset = np.asarray(offset, "float32")
        if isinstance(scale, tuple):
            scale = np.asarray(scale, "float32")
        return (pixels - offset) * scale

    def preprocess(self, pixels):
        """Images of any size as the model takes them, on any Keras backend.

        What the serving signature's `pipeline.data.preprocess_ops.
        preprocess_for_eval` (a TensorFlow op) does, to the float32 rounding of
        where each sample falls: the central `crop_fraction` of each side,
        scaled with its aspect ratio kept to cover `(height, width)`, sampled
        bilinearly at half-pixel centres straight from the input pixels (edge
        pixels repeat where the image is enlarged), then `normalize`d. Shapes
        must be known (eager use, or a traced function of fixed shapes); the
        image is cast to float32 whole.

        Args:
            pixels: uint8 or float 0-255, `(H, W, channels)` or
                `(N, H, W, channels)` with this spec's channels (decode grey
                images as RGB, or colour ones as grey, first).

        Returns:
            float32 `(..., height, width, channels)` in the backend's tensor type.
        """
        images = ops.convert_to_tensor(pixels)
        if len(images.shape) not in (3, 4) or images.shape[-1] != self.channels:
            raise ValueError(
                f"`pixels` must be (height, width, {self.channels}) or (batch, height, width, "
                f"{self.channels}), the model's channels. Received: shape={tuple(images.shape)}"
            )
        batched = len(images.shape) == 4
        if not batched:
            images = ops.expand_dims(images, 0)
        _, rows, columns, _ = images.shape
        # Input pixels per output pixel, the same on both axes.
        step = min(rows / self.height, columns / self.width) * self.crop_fraction
        crops = ops.cast(images, "float32")
        # Bilinear is separable: rows, then columns, each pass reading only
        # the two input lines around each sample.
        for axis, extent, output in ((1, rows, self.height), (2, columns, self.width)):
            # Half-pixel centres, as tf.image.resize samples: output pixel i
            # sits at input coordinate (i + 0.5) * step - 0.5 from the crop's
            # corner. Clipped to the image, edge pixels repeat.
            centres = (extent - output * step) / 2 + (np.arange(output) + 0.5) * step - 0.5
            centres = np.clip(centres, 0, extent - 1)
            lower = np.floor(centres).astype("int32")
            upper = np.minimum(lower + 1, extent - 1)
            shape = [1, 1, 1, 1]
            shape[axis] = output
            weight = ops.reshape(ops.convert_to_tensor(centres - lower, "float32"), shape)
            low = ops.take(crops, lower, axis=axis)
            crops = low + (ops.take(crops, upper, axis=axis) - low) * weight
        crops = self.normalize(crops)
        return crops if batched else crops[0]
