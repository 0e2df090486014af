"""3x3 convolutions as Winograd F(4x4, 3x3) in the float32 train step on a CPU.

    with winograd.convolutions(model):
        logits = model(images, training=True)   # traced inside a tf.function

oneDNN computes AlexNet's 3x3 convolutions (conv3-conv5) directly: 9
multiply-adds per output and input channel. Winograd's minimal filtering
algorithm (Lavin and Gray, "Fast Algorithms for Convolutional Neural
Networks", 2015) computes each 4x4 output tile from a 6x6 input tile with 36
element-wise products in a transformed space: 2.25 per output, 4x fewer. The
products of all tiles are 36 batched matrix multiplies; the transforms into
and out of that space are small fixed matrices, fused by XLA into one pass
each (left to TensorFlow's graph executor they took three times as long as
the convolution they replace).

Same weights and same function; the result differs from the direct
convolution by rounding (relative 2e-5 at float32 on AlexNet's layers). In
bfloat16 the transforms' coefficients (1/24, 1/12, 1/6) would cost accuracy,
and TensorFlow's bfloat16 batched matmul ran slower than oneDNN's
convolution, so only float32 layers take it; GPUs are left to cuDNN, which
chooses its own Winograd kernels. Only the train step uses it: evaluation,
prediction and every export compute the plain convolution.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

# F(4x4, 3x3) from Lavin and Gray (2015), interpolation points 0, +-1, +-2 and
# infinity: input transform B^T (6x6), filter transform G (6x3), output
# transform A^T (4x6).
_TILE = 4
_B_T = np.array([[4, 0, -5, 0, 1, 0],
                 [0, -4, -4, 1, 1, 0],
                 [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0],
                 [0, 4, 0, -5, 0, 1]], np.float32)
_G = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], np.float32)
_A_T = np.array([[1, 1, 1, 1, 1, 0],
                 [0, 1, -1, 2, -2, 0],
                 [0, 1, 1, 4, 4, 0],
                 [0, 1, -1, 8, -8, 1]], np.float32)
_WINDOW = _TILE + 2


def _tiles(size):
    return -(-size // _TILE)


@tf.function(jit_compile=True)
def _transform_input(images):
    """[N, H, W, C] -> [36, N * tiles, C]: every 6x6 tile (stride 4) of the
    "same"-padded images, as B^T d B."""
    height, width, channels = images.shape[1:]
    rows, columns = _tiles(height), _tiles(width)
    # One pixel of "same" padding before; after, enough to fill the last tile.
    padded = tf.pad(images, [[0, 0], [1, _TILE * rows + 1 - height],
                             [1, _TILE * columns + 1 - width], [0, 0]])
    b_t = tf.constant(_B_T)
    by_row = tf.stack([padded[:, i:i + _TILE * rows:_TILE] for i in range(_WINDOW)])
    by_row = tf.einsum("ij,jnhwc->inhwc", b_t, by_row)
    by_both = tf.stack([by_row[:, :, :, j:j + _TILE * columns:_TILE] for j in range(_WINDOW)])
    by_both = tf.einsum("ij,jknhwc->kinhwc", b_t, by_both)
    return tf.reshape(by_both, [_WINDOW * _WINDOW, -1, channels])


@tf.function(jit_compile=True)
def _transform_kernel(kernel):
    """[3, 3, C, K] -> [36, C, K]: G g G^T."""
    g = tf.constant(_G)
    transformed = tf.einsum("ia,jb,abck->ijck", g, g, kernel)
    return tf.reshape(transformed, [_WINDOW * _WINDOW, *kernel.shape[2:]])


@tf.function(jit_compile=True)
def _transform_output(products, height, width):
    """[36, N * tiles, K] -> [N, H, W, K]: A^T m A for every tile, tiles
    placed side by side and the padding's outputs cut off."""
    rows, columns = _tiles(height), _tiles(width)
    filters = products.shape[-1]
    products = tf.reshape(products, [_WINDOW, _WINDOW, -1, rows, columns, filters])
    a_t = tf.constant(_A_T)
    outputs = tf.einsum("pi,qj,ijnhwk->nhpwqk", a_t, a_t, products)
    outputs = tf.reshape(outputs, [-1, _TILE * rows, _TILE * columns, filters])
    return outputs[:, :height, :width]


def conv2d_3x3(images, kernel):
    """The "same" stride-1 convolution of float32 NHWC `images` with a
    [3, 3, C, K] `kernel`, by Winograd F(4x4, 3x3)."""
    height, width = images.shape[1:3]
    products = tf.linalg.matmul(_transform_input(images), _transform_kernel(kernel))
    return _transform_output(products, height, width)


def _eligible(layer):
    return (
        isinstance(layer, keras.layers.Conv2D)
        and tuple(layer.kernel_size) == (3, 3)
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.padding == "same"
        and layer.groups == 1
        and layer.data_format == "channels_last"
        and layer.compute_dtype == "float32"
    )


def _tiles_fit(height, width):
    # Where the 4x4 tiles overhang the map, the padding's products cost what
    # the algorithm saves: at 227 pixels (13x13 maps, tiled as 16x16) the
    # paper model's step was as fast either way; at 224 (d2l's 12x12) it was
    # 1.19x faster; at 67 pixels (3x3 maps) 0.83x.
    return height % _TILE == 0 and width % _TILE == 0 and min(height, width) >= 2 * _TILE


def _winograd_op(layer):
    def convolution_op(inputs, kernel):
        if _tiles_fit(*inputs.shape[1:3]):
            return conv2d_3x3(inputs, tf.convert_to_tensor(kernel))
        return type(layer).convolution_op(layer, inputs, kernel)

    return convolution_op


@contextlib.contextmanager
def convolutions(model):
    """Within the block, `model`'s float32 3x3 "same" stride-1 Conv2D layers
    compute by Winograd F(4x4, 3x3) on a CPU wherever their input is a whole
    number of 4x4 tiles, at least 8x8; a `tf.function` traced inside keeps
    that graph. The layers' weights and configs do not change, and the block
    restores their own convolution on leaving. Yields the layers it set."""
    if keras.backend.backend() != "tensorflow" or tf.config.list_logical_devices("GPU"):
        yield []
        return
    layers = [layer for layer in model.layers if _eligible(layer)]
    for layer in layers:
        layer.convolution_op = _winograd_op(layer)
    try:
        yield layers
    finally:
        for layer in layers:
            del layer.convolution_op
