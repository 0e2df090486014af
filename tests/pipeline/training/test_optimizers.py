"""The learning-rate schedules: warm-up, cosine, constant and the paper's
plateau, which divides a plain rate itself and is followed by a warmed-up one."""

import keras
import pytest
import tensorflow as tf

from pipeline.config import TrainConfig
from pipeline.training import callbacks
from pipeline.training import optimizers


def rates(train_config, steps_per_epoch, steps):
    schedule = optimizers.schedule(train_config, steps_per_epoch)
    return [float(schedule(step)) if callable(schedule) else schedule for step in steps]


def test_warm_up_then_constant_or_cosine():
    # 4 epochs of 10 steps, the first epoch a linear ramp from 0 to 0.01.
    steps = (0, 5, 10, 25, 40, 60)
    constant = TrainConfig(learning_rate=0.01, epochs=4, warmup_epochs=1, lr_schedule="constant")
    assert rates(constant, 10, steps) == pytest.approx([0, 0.005, 0.01, 0.01, 0.01, 0.01])
    cosine = TrainConfig(learning_rate=0.01, epochs=4, warmup_epochs=1, lr_schedule="cosine")
    # Then half a cosine over the 30 steps left: at step 25, 15 of them in.
    assert rates(cosine, 10, steps) == pytest.approx(
        [0, 0.005, 0.01, 0.005, 0, 0], abs=1e-9)
    # Half an epoch of warm-up is 5 steps; none leaves the rate as it was.
    half = TrainConfig(learning_rate=0.01, epochs=4, warmup_epochs=0.5, lr_schedule="constant")
    assert rates(half, 10, (0, 1, 5, 9)) == pytest.approx([0, 0.002, 0.01, 0.01])
    assert optimizers.schedule(TrainConfig(learning_rate=0.01, lr_schedule="constant",
                                           warmup_epochs=0), 10) == 0.01
    plain_cosine = TrainConfig(learning_rate=0.01, epochs=4, lr_schedule="cosine", warmup_epochs=0)
    assert rates(plain_cosine, 10, (0, 20, 40)) == pytest.approx([0.01, 0.005, 0], abs=1e-9)


def test_plateau_divides_the_warmed_up_rate_by_ten_per_reduction():
    reductions = tf.Variable(0, dtype=tf.int64)
    plateau = TrainConfig(learning_rate=0.01, epochs=4, warmup_epochs=1, lr_schedule="plateau")
    schedule = optimizers.schedule(plateau, 10, reductions)
    assert [float(schedule(step)) for step in (0, 5, 10, 30)] == pytest.approx(
        [0, 0.005, 0.01, 0.01])
    reductions.assign(2)
    assert float(schedule(30)) == pytest.approx(1e-4)
    assert float(schedule(5)) == pytest.approx(5e-5)
    # Without warm-up or a count to follow it is the plain rate.
    assert optimizers.schedule(TrainConfig(learning_rate=0.01, lr_schedule="plateau",
                                           warmup_epochs=0), 10) == 0.01


@pytest.mark.parametrize("warmup_epochs", [0.0, 1.0])
def test_the_plateau_schedule_divides_the_rate_by_ten_after_two_stalled_epochs(warmup_epochs):
    plateau = callbacks.Plateau()
    config = TrainConfig(learning_rate=0.01, epochs=10, warmup_epochs=warmup_epochs,
                         lr_schedule="plateau", optimizer="sgd")
    variable = keras.Variable(1.0)
    optimizer = optimizers.make_optimizer(config, 10, [variable], plateau.reductions)
    assert optimizers.follows_plateau(optimizer) is bool(warmup_epochs)
    optimizer.iterations.assign(20)
    for val_loss in (1.0, 0.9, 0.95, 0.95):
        plateau.update(val_loss, optimizer)
    assert int(plateau.reductions.numpy()) == 1
    assert callbacks.current_learning_rate(optimizer) == pytest.approx(1e-3)
