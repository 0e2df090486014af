"""The model, built one way for the tuner, the trainer and the tests.

    model = build_model(resolve(model_config, ingested), ingested.num_classes)
"""

import dataclasses
import os
import zipfile

import keras

from alexnet_keras import AlexNet
from alexnet_keras import alexnet
from pipeline.errors import ConfigError
from pipeline.errors import PipelineError
from pipeline.errors import first_line

# A .keras AlexNet is about 250 MB; a file much larger is not one.
_MAX_MODEL_FILE_BYTES = 4 << 30

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
        initializer=model_config.initializer,
    )


def load_model_file(path, setting):
    """The AlexNet in a `.keras` file, read in Keras' safe mode (no Lambda
    layers, no unregistered classes: nothing in the file runs), or one
    `PipelineError` naming `setting`, the file and what it is not."""
    expected = "pass a .keras file of an AlexNet (one a run saved, or a converted one)"
    if not str(path).endswith(".keras"):
        raise PipelineError(f"`{setting}` {path} is not a .keras file; {expected}")
    if not os.path.isfile(path):
        raise PipelineError(f"`{setting}` {path} is not a file; {expected}")
    if os.path.getsize(path) > _MAX_MODEL_FILE_BYTES:
        raise PipelineError(f"`{setting}` {path} is over {_MAX_MODEL_FILE_BYTES:,} bytes; "
                            f"{expected}")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
        raise PipelineError(
            f"`{setting}` {path} cannot be read as a Keras model ({first_line(error)[:200]}); "
            f"{expected}"
        ) from None
    if not isinstance(model, AlexNet):
        raise PipelineError(f"`{setting}` {path} holds a {type(model).__name__}, not an "
                            f"AlexNet; {expected}")
    return model
