"""What a model's input is: its image size and channels, and how pixels are scaled."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """The input an AlexNet expects, as keras-hub's `ImageConverter` describes one.

    A model built for this spec takes float images of `(height, width,
    channels)` made from 0-255 pixels as `(pixels - pixel_offset) * pixel_scale`.
    Every `AlexNet` carries one (`model.image_spec`) and saves it in its config,
    so whatever preprocesses images for it (training, evaluation, a serving
    signature) reads it from the model instead of being told by hand.

    Args:
        height: int, rows of the model's input.
        width: int, columns of the model's input.
        channels: int, 1 (grey) or 3 (RGB).
        pixel_offset: float subtracted from 0-255 pixels (127.5 centres them).
        pixel_scale: float the centred pixels are multiplied by.

    Example:

    ```python
    spec = AlexNet(variant="d2l", num_classes=10).image_spec
    inputs = spec.normalize(pixels)  # pixels: float 0-255, (..., 224, 224, 1)
    ```
    """

    height: int
    width: int
    channels: int
    pixel_offset: float = 127.5
    pixel_scale: float = 1.0

    @property
    def image_size(self):
        """`(height, width)`."""
        return self.height, self.width

    @property
    def shape(self):
        """`(height, width, channels)`."""
        return self.height, self.width, self.channels

    def normalize(self, pixels):
        """0-255 pixels (any float tensor or array) as the model takes them."""
        return (pixels - self.pixel_offset) * self.pixel_scale
