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
