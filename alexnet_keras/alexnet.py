"""AlexNet as a Keras 3 functional model: the 2012 paper's network (one tower or
its two-GPU grouping), the d2l variant, and torchvision's ImageNet layout."""

import keras

from alexnet_keras.adaptive_average_pooling import AdaptiveAveragePooling
from alexnet_keras.grouped_conv2d import GroupedConv2D
from alexnet_keras.image_spec import EVAL_CROP_FRACTION
from alexnet_keras.image_spec import ImageSpec
from alexnet_keras.local_response_normalization import LocalResponseNormalization

VARIANTS = ("paper", "paper_2gpu", "d2l", "torchvision")
NORMALIZATIONS = ("lrn", "batchnorm", "none")
INITIALIZERS = ("paper", "he", "glorot")
# torchvision's ImageNet statistics, for pixels in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Per variant: default input, conv1 padding, the convolutions' filters and
# groups, the normalisation and initialisation it uses by default, where fc6
# and fc7's dropout sits, and how it expects 0-255 pixels: `(pixels -
# pixel_offset) * pixel_scale`, the scale being its initialisation's (below)
# unless the variant fixes it. torchvision's weights were trained on
# ImageNet's per-channel mean and standard deviation.
_PAPER = {"input_shape": (227, 227, 3), "conv1_padding": 0, "normalization": "lrn",
          "filters": (96, 256, 384, 384, 256), "groups": (1, 1, 1, 1, 1),
          "initializer": "paper", "dropout": "after", "pixel_offset": 127.5}
_VARIANT_DEFAULTS = {
    "paper": _PAPER,
    # The paper's own network: conv2, conv4 and conv5 see only the maps on
    # their own GPU, as two groups.
    "paper_2gpu": {**_PAPER, "groups": (1, 2, 1, 2, 2)},
    "d2l": {**_PAPER, "input_shape": (224, 224, 1), "conv1_padding": 1,
            "normalization": "none", "initializer": "glorot"},
    # torchvision.models.alexnet: the "one weird trick" layout, dropout before
    # fc6 and fc7, and a 6x6 adaptive average pool before the flatten.
    "torchvision": {"input_shape": (224, 224, 3), "conv1_padding": 2, "normalization": "none",
                    "filters": (64, 192, 384, 256, 256), "groups": (1, 1, 1, 1, 1),
                    "initializer": "glorot", "dropout": "before",
                    "pixel_offset": tuple(255 * mean for mean in IMAGENET_MEAN),
                    "pixel_scale": tuple(1 / (255 * std) for std in IMAGENET_STD)},
}

# (name, kernel size, stride, paper bias init); conv1 is padded per variant,
# the others "same". The paper sets biases to 1 in conv2, conv4 and conv5 "to
# accelerate the early stages of learning by providing the ReLUs with positive inputs".
_CONV_LAYERS = (
    ("conv1", 11, 4, 0.0),
    ("conv2", 5, 1, 1.0),
    ("conv3", 3, 1, 0.0),
    ("conv4", 3, 1, 1.0),
    ("conv5", 3, 1, 1.0),
)
# The layers with weights (besides BatchNormalization's), input to output.
WEIGHT_LAYERS = (*(name for name, *_ in _CONV_LAYERS), "fc6", "fc7", "fc8")
# Max-pooling (overlapping, 3x3 stride 2) follows these convolutions.
_POOLED = {"conv1": "pool1", "conv2": "pool2", "conv5": "pool5"}
# LRN follows these convolutions' ReLU, before the pool.
_LRN = {"conv1": "lrn1", "conv2": "lrn2"}


def _map_size(size, conv1_padding):
    """The spatial size of the last pooled map for an input side of `size`."""
    size = (size + 2 * conv1_padding - 11) // 4 + 1
    for _ in range(3):
        size = (size - 3) // 2 + 1
    return size


def default_input_shape(variant):
    """The variant's own input: (227, 227, 3) for "paper", (224, 224, 1) for "d2l"."""
    return _VARIANT_DEFAULTS[variant]["input_shape"]


def fixed_channels(variant):
    """Whether `variant`'s pixel statistics are per channel, so it takes only
    its own number of channels (torchvision's ImageNet mean and std: 3)."""
    return isinstance(_VARIANT_DEFAULTS[variant]["pixel_offset"], tuple)


def minimum_input_size(variant):
    """The smallest input side for which every layer of `variant` has an output."""
    padding = _VARIANT_DEFAULTS[variant]["conv1_padding"]
    size = 11 - 2 * padding
    while _map_size(size, padding) < 1:
        size += 1
    return size


def check_arguments(variant, num_classes, dropout_rate, normalization, initializer=None):
    """Raises `ValueError` naming the first argument `AlexNet` would refuse."""
    if variant not in VARIANTS:
        raise ValueError(
            f"`variant` must be one of {', '.join(VARIANTS)}. Received: variant={variant!r}"
        )
    if initializer not in (None, *INITIALIZERS):
        raise ValueError(
            f"`initializer` must be one of {', '.join(INITIALIZERS)}. "
            f"Received: initializer={initializer!r}"
        )
    if normalization not in (None, *NORMALIZATIONS):
        raise ValueError(
            f"`normalization` must be one of {', '.join(NORMALIZATIONS)}. "
            f"Received: normalization={normalization!r}"
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"`num_classes` must be a positive integer. Received: num_classes={num_classes!r}"
        )
    if not 0 <= dropout_rate < 1:
        raise ValueError(
            f"`dropout_rate` must be in [0, 1). Received: dropout_rate={dropout_rate!r}"
        )


def _checked_input_shape(variant, input_shape):
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or not all(isinstance(dim, int) and dim > 0 for dim in input_shape):
        raise ValueError(
            "`input_shape` must be (height, width, channels) with positive "
            f"integers. Received: input_shape={input_shape!r}"
        )
    smallest = minimum_input_size(variant)
    if min(input_shape[:2]) < smallest:
        raise ValueError(
            f"The {variant!r} AlexNet needs inputs of at least "
            f"{smallest}x{smallest} pixels. Received: input_shape={input_shape!r}"
        )
    return input_shape


# The initialisations, and the pixel scale each is sized for:
# - "paper": N(0, 0.01) weights, biases of 1 in conv2, conv4, conv5, fc6 and
#   fc7, for 0-255 pixels (the paper subtracts the mean pixel, no more). The
#   biases swamp the signal: at initialisation fc8's logits vary across
#   images by 0.2% of their size, so SGD first fits the class prior and, on a
#   small set, never leaves it (docs/training.md).
# - "he": He normal weights (variance 2 / fan-in), zero biases, for pixels in
#   [-1, 1]: every layer passes its input's scale on.
# - "glorot": Glorot uniform, zero biases, for pixels in [-1, 1] (d2l's).
_PIXEL_SCALES = {"paper": 1.0, "he": 1 / 127.5, "glorot": 1 / 127.5}


def default_initializer(variant):
    """The variant's own initialisation: "paper" for the paper's networks,
    "glorot" for the others."""
    return _VARIANT_DEFAULTS[variant]["initializer"]


def default_pixel_scale(variant, initializer=None):
    """The scale of centred 0-255 pixels `variant` takes under `initializer`
    (the variant's own by default): its own where it fixes one (torchvision's
    ImageNet std), else the one the initialisation is sized for."""
    defaults = _VARIANT_DEFAULTS[variant]
    return defaults.get("pixel_scale",
                        _PIXEL_SCALES[initializer or defaults["initializer"]])


def _initializers(initializer):
    """(kernel initializer factory, bias initializer factory taking the
    paper's bias) of `initializer`."""
    if initializer == "paper":
        return (
            lambda: keras.initializers.RandomNormal(mean=0.0, stddev=0.01),
            keras.initializers.Constant,
        )
    if initializer == "he":
        return keras.initializers.HeNormal, lambda value: keras.initializers.Zeros()
    return keras.initializers.GlorotUniform, lambda value: keras.initializers.Zeros()


@keras.saving.register_keras_serializable(package="alexnet_keras")
class AlexNet(keras.Model):
    """AlexNet (Krizhevsky, Sutskever & Hinton, 2012) as a functional model.

    `variant="paper"` is the paper's network at 227x227x3: conv1 96@11x11 stride 4
    with no padding, ReLU, LRN, overlapping max-pool 3/2; conv2 256@5x5, ReLU, LRN,
    pool; conv3 384@3x3, conv4 384@3x3, conv5 256@3x3, pool; fc6 and fc7 with 4096
    units and dropout 0.5; fc8 giving logits. Weights are drawn from N(0, 0.01);
    biases are 1 in conv2, conv4, conv5, fc6 and fc7 and 0 elsewhere. With 1000
    classes it has 62,378,344 parameters: one tower, every convolution seeing
    all maps of the layer before.

    `variant="paper_2gpu"` is the network exactly as the paper trained it over
    two GPUs: conv2, conv4 and conv5 see only the half of the previous layer's
    maps on their own GPU, a grouped convolution with 2 groups (conv1, conv3
    and the dense layers see everything). With 1000 classes it has 60,965,224
    parameters, Caffe's `bvlc_alexnet`.

    `variant="d2l"` is the version taught by Dive into Deep Learning and the
    tutorials derived from it: 224x224x1, conv1 padded by 1, no LRN, Glorot
    initialisation. With 10 classes it has 46,764,746 parameters.

    `variant="torchvision"` is `torchvision.models.alexnet`, the layout of its
    published ImageNet weights (`alexnet_keras.torchvision_weights` converts
    them): 64-192-384-256-256 filters, conv1 padded by 2, no LRN, a 6x6
    adaptive average pool before the flatten, dropout before fc6 and fc7, and
    ImageNet's per-channel mean and standard deviation; 61,100,840 parameters
    at 224x224x3 with 1000 classes.

    All take float inputs already normalised by the data pipeline, channels
    last, any number of channels (three for "torchvision") and any height and
    width from the variant's minimum up (67 for "paper", 65 for "d2l"), and
    return logits. The model
    carries what its input is as `model.image_spec` (an `ImageSpec`: size,
    channels, `(pixels - pixel_offset) * pixel_scale` for 0-255 pixels, and
    the evaluation crop), saved in its config, so preprocessing reads it from
    the model: `model.image_spec.preprocess(pixels)` turns 0-255 images of any
    size into its input as the serving signature does, on any backend.

    Args:
        variant: `"paper"`, `"paper_2gpu"`, `"d2l"` or `"torchvision"`.
        num_classes: int, the number of logits of fc8.
        input_shape: `(height, width, channels)`; the variant's own by default.
        dropout_rate: float in [0, 1), dropout after fc6 and fc7 (before
            them in "torchvision").
        normalization: `"lrn"` (after the ReLU of conv1 and conv2, as in the
            paper), `"batchnorm"` (between every convolution and its ReLU) or
            `"none"`; the variant's own by default.
        initializer: `"paper"` (N(0, 0.01) weights, biases of 1 in conv2,
            conv4, conv5, fc6 and fc7), `"he"` (He normal, zero biases) or
            `"glorot"` (Glorot uniform, zero biases); the variant's own by
            default ("paper" for the paper's networks, "glorot" for the
            others). It sets the default `pixel_scale`: 0-255 pixels for
            "paper", [-1, 1] for the others.
        pixel_offset: float (or one per channel) subtracted from 0-255
            pixels; the variant's own by default: 127.5 centres them, as the
            paper subtracts the mean pixel; "torchvision" subtracts
            ImageNet's mean per channel.
        pixel_scale: float (or one per channel) the centred pixels are scaled
            by; by default the initialisation's: 1 for "paper" (N(0, 0.01)
            is sized for the 0-255 scale), 1/127.5 for "he" and "glorot"
            (sized for [-1, 1]); 1/(255 * ImageNet's std) for "torchvision".
        crop_fraction: float in (0, 1], the central share of each side of an
            image that evaluation and serving keep (0.875, 224 of 256).
        class_names: optional, one name per logit, kept with the model (a
            converted ImageNet model carries ImageNet's 1000).
        **kwargs: standard `keras.Model` arguments (`name`, `dtype`, ...).

    Example:

    ```python
    model = AlexNet(variant="paper", num_classes=1000)
    logits = model(keras.random.normal((1, 227, 227, 3)))
    # Saved and loaded with its preprocessing: images are 0-255, of any height
    # and width, (batch, height, width, 3).
    model.save("model.keras")
    model = keras.saving.load_model("model.keras")
    probabilities = keras.ops.softmax(model(model.image_spec.preprocess(images)))
    ```

    Reference:
        Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
        Convolutional Neural Networks", NeurIPS 2012.
    """

    def __init__(
        self,
        variant="paper",
        num_classes=1000,
        input_shape=None,
        dropout_rate=0.5,
        normalization=None,
        initializer=None,
        pixel_offset=None,
        pixel_scale=None,
        crop_fraction=EVAL_CROP_FRACTION,
        class_names=None,
        **kwargs,
    ):
        check_arguments(variant, num_classes, dropout_rate, normalization, initializer)
        if class_names is not None:
            class_names = tuple(str(name) for name in class_names)
            if len(class_names) != num_classes:
                raise ValueError(
                    f"`class_names` must name each of the {num_classes} classes. "
                    f"Received: {len(class_names)} names"
                )
        defaults = _VARIANT_DEFAULTS[variant]
        normalization = normalization or defaults["normalization"]
        initializer = initializer or defaults["initializer"]
        input_shape = _checked_input_shape(variant, input_shape or defaults["input_shape"])
        # Checks the pixel scaling and crop_fraction before the graph is built.
        image_spec = ImageSpec(
            *input_shape,
            defaults["pixel_offset"] if pixel_offset is None else pixel_offset,
            default_pixel_scale(variant, initializer) if pixel_scale is None else pixel_scale,
            crop_fraction,
        )
        kernel_init, bias_init = _initializers(initializer)

        inputs = keras.Input(shape=input_shape, name="image")
        x = inputs
        layers = zip(_CONV_LAYERS, defaults["filters"], defaults["groups"])
        for index, ((name, kernel_size, stride, bias), filters, groups) in enumerate(
            layers, start=1
        ):
            if name == "conv1" and defaults["conv1_padding"]:
                x = keras.layers.ZeroPadding2D(defaults["conv1_padding"], name="pad1")(x)
            x = (GroupedConv2D if groups > 1 else keras.layers.Conv2D)(
                filters,
                kernel_size,
                strides=stride,
                padding="valid" if name == "conv1" else "same",
                groups=groups,
                activation=None if normalization == "batchnorm" else "relu",
                kernel_initializer=kernel_init(),
                bias_initializer=bias_init(bias),
                name=name,
            )(x)
            if normalization == "batchnorm":
                x = keras.layers.BatchNormalization(name=f"bn{index}")(x)
                x = keras.layers.ReLU(name=f"relu{index}")(x)
            if normalization == "lrn" and name in _LRN:
                x = LocalResponseNormalization(name=_LRN[name])(x)
            if name in _POOLED:
                x = keras.layers.MaxPooling2D(3, strides=2, name=_POOLED[name])(x)
        if variant == "torchvision":
            x = AdaptiveAveragePooling((6, 6), name="avgpool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        for name, bias in (("fc6", 1.0), ("fc7", 1.0)):
            dropout = keras.layers.Dropout(dropout_rate, name=f"dropout{name[-1]}")
            if defaults["dropout"] == "before":
                x = dropout(x)
            x = keras.layers.Dense(
                4096,
                activation="relu",
                kernel_initializer=kernel_init(),
                bias_initializer=bias_init(bias),
                name=name,
            )(x)
            if defaults["dropout"] == "after":
                x = dropout(x)
        # fc8 gives logits, computed in float32 so softmax and loss stay exact
        # under mixed precision.
        outputs = keras.layers.Dense(
            num_classes,
            kernel_initializer=kernel_init(),
            bias_initializer=bias_init(0.0),
            dtype="float32",
            name="fc8",
        )(x)
        kwargs.setdefault("name", f"alexnet_{variant}")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        self.variant = variant
        self.num_classes = num_classes
        self.image_shape = input_shape
        self.dropout_rate = dropout_rate
        self.normalization = normalization
        self.initializer = initializer
        self.pixel_offset = image_spec.pixel_offset
        self.pixel_scale = image_spec.pixel_scale
        self.crop_fraction = image_spec.crop_fraction
        self.class_names = class_names

    @property
    def image_spec(self):
        """The `ImageSpec` of this model's input."""
        return ImageSpec(
            *self.image_shape, self.pixel_offset, self.pixel_scale, self.crop_fraction
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "variant": self.variant,
            "num_classes": self.num_classes,
            "input_shape": list(self.image_shape),
            "dropout_rate": self.dropout_rate,
            "normalization": self.normalization,
            "initializer": self.initializer,
            "pixel_offset": self.pixel_offset,
            "pixel_scale": self.pixel_scale,
            "crop_fraction": self.crop_fraction,
            "class_names": None if self.class_names is None else list(self.class_names),
        }

    @classmethod
    def from_config(cls, config):
        # Configs saved before `crop_fraction` existed take its default.
        return cls(**config)
