"""The optimizers a run trains with: SGD with momentum (the paper's) or Adam,
under the chosen learning-rate schedule.

    optimizer = make_optimizer(train_config, steps_per_epoch, model.trainable_variables)
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="pipeline")
class MomentumSGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` whose momentum update is one TensorFlow kernel.

    SGD's update (`m = momentum * m - lr * g; w += m`) is five ops per
    variable with three temporaries the size of the weights, 60 M of them
    in AlexNet. `ResourceApplyKerasMomentum` is the same formula in one pass:
    the same weights bit for bit, half the update's time, and the paper's
    training step 1.3% faster on a 2-core CPU (docs/performance.md).
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


@keras.saving.register_keras_serializable(package="pipeline")
class DividedOnPlateau(keras.optimizers.schedules.LearningRateSchedule):
    """`peak`, reached linearly over `warmup_steps`, divided by 10 for each
    reduction the plateau schedule has made (`callbacks.Plateau.reductions`,
    a variable checkpointed with the run)."""

    def __init__(self, peak, warmup_steps, reductions):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.reductions = reductions

    def __call__(self, step):
        rate = self.peak * tf.pow(0.1, tf.cast(self.reductions, tf.float32))
        if self.warmup_steps:
            rate *= tf.minimum(1.0, tf.cast(step, tf.float32) / self.warmup_steps)
        return rate

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "reductions": int(self.reductions)}


def follows_plateau(optimizer):
    """Whether `optimizer`'s rate divides itself by `callbacks.Plateau`'s count."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return isinstance(optimizer._learning_rate, DividedOnPlateau)


def schedule(train_config, steps_per_epoch, reductions=None):
    """The learning rate: a float, or a schedule of the optimizer's step.

    Warm-up raises it linearly from 0 to `learning_rate` over
    `warmup_epochs`; then "cosine" decays it to 0 at the last step,
    "constant" keeps it, and "plateau" divides it by 10 at each of the
    plateau schedule's `reductions` (a variable; none without it). Keras'
    `CosineDecay` does the first two (its `alpha=1` is a cosine that never
    falls).
    """
    peak = train_config.learning_rate
    warmup_steps = round(train_config.warmup_epochs * steps_per_epoch)
    if train_config.lr_schedule == "plateau":
        # Without warm-up the rate is a plain variable that `callbacks.Plateau`
        # divides itself, as in runs checkpointed before warm-up existed.
        if not warmup_steps:
            return peak
        return DividedOnPlateau(peak, warmup_steps,
                                tf.constant(0) if reductions is None else reductions)
    if train_config.lr_schedule == "constant" and not warmup_steps:
        return peak
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else peak,
        decay_steps=max(train_config.epochs * steps_per_epoch - warmup_steps, 1),
        alpha=1.0 if train_config.lr_schedule == "constant" else 0.0,
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def make_optimizer(train_config, steps_per_epoch, variables, plateau_reductions=None):
    """SGD with momentum (the paper's 0.9 by default), or Adam, with the chosen schedule,
    built for `variables`.

    `plateau_reductions` is the plateau schedule's count of divisions by 10
    (`callbacks.Plateau.reductions`), read at every step.

    Call it in the strategy's scope: under MirroredStrategy the optimizer's
    slots must be created there, not later inside a replica's step.
    """
    learning_rate = schedule(train_config, steps_per_epoch, plateau_reductions)
    if train_config.optimizer == "sgd":
        optimizer = MomentumSGD(learning_rate, momentum=train_config.momentum)
    else:
        optimizer = keras.optimizers.Adam(learning_rate)
    if train_config.mixed_precision and keras.mixed_precision.global_policy().name == (
        "mixed_float16"
    ):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer
