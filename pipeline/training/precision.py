"""Numeric precision: the process's Keras policy for a run, and the float32
copy every export is made from.
"""

import logging

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


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
                     "(docs/performance.md)")
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
