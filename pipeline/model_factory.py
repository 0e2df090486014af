"""The model and its optimizer, built one way for the tuner, the trainer and the tests.

    model = build_model(resolve(model_config, ingested), ingested.num_classes)
"""

import dataclasses
import logging

import keras
import tensorflow as tf

from alexnet_keras import AlexNet
from alexnet_keras import alexnet
from pipeline.config import ConfigError

log = logging.getLogger(__name__)

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
    return dataclasses.replace(
        model_config, image_size=tuple(image_size),
        channels=model_config.channels or ingested.channels,
    )


def build_model(model_config, num_classes):
    """The AlexNet a resolved `ModelConfig` describes; it carries its `image_spec`."""
    return AlexNet(
        variant=model_config.variant,
        num_classes=num_classes,
        input_shape=(*model_config.image_size, model_config.channels),
        dropout_rate=model_config.dropout_rate,
        normalization=model_config.normalization,
    )


def float32_copy(model):
    """`model`, or a float32 copy with its weights if it computes in another
    dtype (trained under `mixed_precision`).

    Every export goes through it: a bfloat16 SavedModel would compute in
    bfloat16 on serving machines that may have to emulate it (14x slower
    without avx512_bf16), the LiteRT converter keeps bfloat16 ops only as
    TensorFlow ops its runtime lacks, and ONNX Runtime refuses bfloat16
    convolutions.
    """
    if model.dtype_policy.compute_dtype == "float32":
        return model
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = model.from_config(model.get_config())
    finally:
        keras.config.set_dtype_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


@keras.saving.register_keras_serializable(package="pipeline")
class MomentumSGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` whose momentum update is one TensorFlow kernel.

    SGD's update (`m = momentum * m - lr * g; w += m`) is five ops per
    variable with three temporaries the size of the weights, 60 M of them
    in AlexNet. `ResourceApplyKerasMomentum` is the same formula in one pass:
    the same weights bit for bit, half the update's time, and the paper's
    training step 1.3% faster on a 2-core CPU (README, Performance).
    Nesterov momentum, no momentum, sparse gradients and the other Keras
    backends take SGD's own path.
    """

    def update_step(self, gradient, variable, learning_rate):
        if (
            self.nesterov
            or not self.momentum
            or isinstance(gradient, tf.IndexedSlices)
            or keras.backend.backend() != "tensorflow"
        ):
            return super().update_step(gradient, variable, learning_rate)
        if isinstance(variable, keras.Variable):
            variable = variable.value
        momentum = self.momentums[self._get_variable_index(variable)]
        dtype = variable.dtype
        # Inside the strategy's update, each handle is this device's copy.
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=momentum.value.handle,
            lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype),
            use_locking=False,
            use_nesterov=False,
        )


def make_optimizer(train_config, steps_per_epoch, variables):
    """SGD with the paper's momentum 0.9, or Adam, with the chosen schedule,
    built for `variables`.

    Call it in the strategy's scope: under MirroredStrategy the optimizer's
    slots must be created there, not later inside a replica's step.
    """
    learning_rate = train_config.learning_rate
    if train_config.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=train_config.epochs * steps_per_epoch
        )
    if train_config.optimizer == "sgd":
        optimizer = MomentumSGD(learning_rate, momentum=0.9)
    else:
        optimizer = keras.optimizers.Adam(learning_rate)
    if train_config.mixed_precision and keras.mixed_precision.global_policy().name == (
        "mixed_float16"
    ):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer


def steps_per_epoch(train_config, ingested, replicas):
    """Full global batches per epoch, capped by `steps_per_epoch`."""
    global_batch_size = train_config.batch_size
    if global_batch_size % replicas:
        raise ConfigError(
            f"batch_size={global_batch_size} does not divide evenly over {replicas} "
            f"replicas; use a multiple of {replicas}"
        )
    num_train = ingested.num_examples("train")
    steps = num_train // global_batch_size
    if steps < 1:
        raise ConfigError(
            f"batch_size={global_batch_size} is larger than the {num_train} training "
            "examples; use a smaller batch"
        )
    return min(steps, train_config.steps_per_epoch or steps)


def set_global_options(train_config, strategy):
    """Process-wide settings a run needs before it builds anything."""
    if train_config.seed is not None:
        # Same seed, same data order, same initial weights and same kernels: two
        # single-replica runs end with identical weights.
        keras.utils.set_random_seed(train_config.seed)
        tf.config.experimental.enable_op_determinism()
    set_precision(train_config, strategy)


def set_precision(train_config, strategy):
    """Sets Keras' global precision policy for `train_config` (float32, or
    `mixed_precision`'s float16 on GPUs and bfloat16 elsewhere), and says
    where this machine makes the other choice faster or the chosen one slow."""
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if not train_config.mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
        if not on_gpu and cpu_has_bfloat16():
            # Opt-in, not the default: a run's numbers would depend on which of
            # the project's machines it ran on.
            log.info("This CPU computes bfloat16 natively: --mixed-precision (mixed_precision="
                     "True) trains 1.7x faster on it at 224-227 pixels, to the same accuracy "
                     "(README, Performance)")
        return
    # float16 needs loss scaling and a GPU; CPUs and TPUs compute bfloat16.
    keras.mixed_precision.set_global_policy("mixed_float16" if on_gpu else "mixed_bfloat16")
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    if train_config.jit_compile and not on_gpu and not on_tpu:
        log.warning(
            "`jit_compile` with `mixed_precision` on a CPU: XLA's bfloat16 kernels "
            "trained the paper model at 21.5 images/s against 39.1 without XLA on an "
            "AVX-512 CPU with bfloat16 instructions (d2l: 25.7 against 55.0); drop "
            "`jit_compile`"
        )
    if not on_gpu and not on_tpu and cpu_has_bfloat16() is False:
        log.warning(
            "`mixed_precision`: without a GPU this is bfloat16, and this CPU has no "
            "bfloat16 instructions (avx512_bf16 or amx_bf16), so TensorFlow emulates "
            "them: the paper model trained 14x slower than in float32 on such a CPU "
            "(1.3 against 18.4 images/s). Drop `mixed_precision` on this machine."
        )


def cpu_has_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX), from
    Linux's CPU flags; None where they cannot be read."""
    try:
        with open(cpuinfo) as file:
            flags = set(file.read().split())
    except OSError:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16"})
