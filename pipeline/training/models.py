"""The model, built one way for the tuner, the trainer and the tests.

    model = build_model(resolve(model_config, ingested), ingested.num_classes)
"""

import dataclasses

from alexnet_keras import AlexNet
from alexnet_keras import alexnet
from pipeline.errors import ConfigError

# The embedded digits are 8x8 pixels: upsampling them to 227 makes every step
# ~12x dearer for no gain in accuracy, so their default is the smallest input the
# paper's architecture takes. Other datasets default to the variant's own size.
_DATASET_IMAGE_SIZES = {"digits": (67, 67)}


def resolve(model_config, ingested):
    """`model_config` with the image size and channels left to the data filled in:
    the dataset's own channels, and the variant's input size (67 for digits)."""
    variant = model_config.variant
    image_size = model_config.image_size or _DATASET_IMAGE_SIZES.get(
        ingested.source, alexnet.default_input_shape(variant)[:2]
    )
    smallest = alexnet.minimum_input_size(variant)
    if min(image_size) < smallest:
        raise ConfigError(
            f"image_size={tuple(image_size)} is smaller than the "
            f"{smallest}x{smallest} pixels the {variant!r} AlexNet needs; use at least {smallest}"
        )
    # A variant whose pixel statistics are per channel (torchvision's) takes
    # colour; grey images are given three equal channels.
    needed = alexnet.default_input_shape(variant)[2] if alexnet.fixed_channels(variant) else None
    channels = model_config.channels or needed or ingested.channels
    if needed and channels != needed:
        raise ConfigError(f"the {variant!r} AlexNet takes {needed} channels. "
                          f"Received: channels={channels}")
    return dataclasses.replace(model_config, image_size=tuple(image_size), channels=channels)


def build_model(model_config, num_classes):
    """The AlexNet a resolved `ModelConfig` describes; it carries its `image_spec`."""
    return AlexNet(
        variant=model_config.variant,
        num_classes=num_classes,
        input_shape=(*model_config.image_size, model_config.channels),
        dropout_rate=model_config.dropout_rate,
        normalization=model_config.normalization,
    )
