"""Adaptive average pooling with PyTorch's bins, for maps of any size."""

import keras
import numpy as np
from keras import ops


def pooling_matrix(input_size, output_size):
    """[output_size, input_size]: row i averages input positions
    floor(i * input_size / output_size) to ceil((i + 1) * input_size /
    output_size) - 1, as `torch.nn.AdaptiveAvgPool2d` does; a map smaller than
    the output is so repeated, position by position."""
    matrix = np.zeros((output_size, input_size), np.float32)
    for row in range(output_size):
        start = (row * input_size) // output_size
        end = -((-(row + 1) * input_size) // output_size)
        matrix[row, start:end] = 1.0 / (end - start)
    return matrix


@keras.saving.register_keras_serializable(package="alexnet_keras")
class AdaptiveAveragePooling(keras.layers.Layer):
    """`torch.nn.AdaptiveAvgPool2d(output_size)` for channels-last maps.

    torchvision's AlexNet pools its last feature map to 6x6 with it, so that
    fc6's weights fit at any input size. `keras.layers.AdaptiveAveragePooling2D`
    takes the same bins but fails on a map smaller than its output (Keras
    3.15: "Negative dimension size"), which torchvision's AlexNet below 223x223
    pixels makes: there PyTorch repeats positions. This layer computes every
    case as two products with constant averaging matrices (`pooling_matrix`),
    plain matmuls on every backend and in LiteRT and ONNX.

    Args:
        output_size: int or (height, width).
        **kwargs: standard `keras.layers.Layer` arguments.
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        size = (output_size, output_size) if isinstance(output_size, int) else output_size
        if len(size) != 2 or not all(isinstance(side, int) and side >= 1 for side in size):
            raise ValueError("`output_size` must be a positive int or two of them. "
                             f"Received: output_size={output_size!r}")
        self.output_size = tuple(size)

    def build(self, input_shape):
        height, width = input_shape[1:3]
        if height is None or width is None:
            raise ValueError("AdaptiveAveragePooling needs the map's height and width "
                             f"statically. Received: input_shape={input_shape}")
        self._rows = pooling_matrix(height, self.output_size[0])
        self._columns = pooling_matrix(width, self.output_size[1])

    def call(self, inputs):
        rows = ops.cast(self._rows, inputs.dtype)
        columns = ops.cast(self._columns, inputs.dtype)
        # [b, h, w, c] -> [b, c, w, h] @ [h, H] -> [b, c, H, w] @ [w, W] -> [b, H, W, c]
        x = ops.matmul(ops.transpose(inputs, (0, 3, 2, 1)), ops.transpose(rows))
        x = ops.matmul(ops.transpose(x, (0, 1, 3, 2)), ops.transpose(columns))
        return ops.transpose(x, (0, 2, 3, 1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config["output_size"] = self.output_size
        return config
