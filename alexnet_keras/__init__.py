"""alexnet_keras: AlexNet (Krizhevsky et al. 2012) as a Keras 3 model."""

from alexnet_keras.adaptive_average_pooling import AdaptiveAveragePooling
from alexnet_keras.alexnet import AlexNet
from alexnet_keras.alexnet import minimum_input_size
from alexnet_keras.grouped_conv2d import GroupedConv2D
from alexnet_keras.image_spec import ImageSpec
from alexnet_keras.local_response_normalization import LocalResponseNormalization

__all__ = [
    "AdaptiveAveragePooling",
    "AlexNet",
    "GroupedConv2D",
    "ImageSpec",
    "LocalResponseNormalization",
    "minimum_input_size",
]
