"""The distributed train step: gradients are all-reduced, weight decay is the paper's."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_keras import AlexNet
from pipeline.training import optimizers
from pipeline.training import precision
from pipeline.training import train_steps
from pipeline.config import TrainConfig

GLOBAL_BATCH = 8


def _one_step(strategy, weight_decay=0.0, jit_compile=False, optimizer=None, steps=1):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(steps * GLOBAL_BATCH, 67, 67, 1)).astype("float32")
    labels = np.arange(steps * GLOBAL_BATCH, dtype="int32") % 3
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = AlexNet(variant="d2l", num_classes=3, input_shape=(67, 67, 1), dropout_rate=0.0)
        optimizer = optimizer or keras.optimizers.SGD(0.05, momentum=0.9)
        optimizer.build(model.trainable_variables)
    before = [v.numpy().copy() for v in model.trainable_variables]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(GLOBAL_BATCH)
    step = train_steps.make_train_step(
        model, optimizer, strategy, GLOBAL_BATCH, weight_decay, jit_compile
    )
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    for _ in range(steps):
        loss_sum, correct, count = step(iterator)
    deltas = [v.numpy() - b for v, b in zip(model.trainable_variables, before)]
    return float(loss_sum), float(count), deltas, before


def test_two_replicas_equal_one_replica_on_the_same_global_batch():
    single_loss, single_count, single, before = _one_step(tf.distribute.get_strategy())
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    pair_loss, pair_count, pair, pair_before = _one_step(mirrored)
    for start, other_start in zip(before, pair_before):
        np.testing.assert_array_equal(start, other_start)
    assert single_count == pair_count == GLOBAL_BATCH
    assert pair_loss == pytest.approx(single_loss, rel=1e-5)
    for one, two in zip(single, pair):
        assert np.abs(one).max() > 0
        # Had each replica applied only its own half-batch gradient, the update
        # would differ from the single-device one by far more than this.
        np.testing.assert_allclose(two, one, rtol=1e-2, atol=1e-3 * np.abs(one).max())


def test_weight_decay_goes_through_the_gradient_of_the_kernels_only():
    strategy = tf.distribute.get_strategy()
    _, _, plain, before = _one_step(strategy, weight_decay=0.0)
    _, _, decayed, _ = _one_step(strategy, weight_decay=0.5)
    # SGD's first step moves a weight by -lr * grad; the L2 term adds
    # -lr * weight_decay * w to kernels and nothing to biases.
    model = AlexNet(variant="d2l", num_classes=3, input_shape=(67, 67, 1))
    names = [v.path for v in model.trainable_variables]
    for name, p, d, w in zip(names, plain, decayed, before):
        expected = -0.05 * 0.5 * w if name.endswith("kernel") else np.zeros_like(w)
        np.testing.assert_allclose(d - p, expected, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("devices", [1, 2])
def test_the_fused_momentum_update_equals_keras_sgd(devices):
    """MomentumSGD's one-kernel update gives SGD's weights bit for bit, over
    steps with a decaying learning rate, on one device and on two replicas."""
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(devices)])
    schedule = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=3)
    results = {}
    for name, kind in (("keras", keras.optimizers.SGD), ("fused", optimizers.MomentumSGD)):
        with strategy.scope():
            optimizer = kind(schedule, momentum=0.9)
        _, _, deltas, _ = _one_step(strategy, weight_decay=5e-4, optimizer=optimizer, steps=3)
        momenta = [m.numpy() for m in optimizer.momentums]
        results[name] = deltas, momenta
    for keras_values, fused_values in zip(*(results[name] for name in ("keras", "fused"))):
        for expected, actual in zip(keras_values, fused_values):
            assert np.abs(expected).max() > 0
            np.testing.assert_array_equal(actual, expected)


def test_momentum_sgd_keeps_sgds_path_for_nesterov():
    strategy = tf.distribute.get_strategy()
    _, _, expected, _ = _one_step(
        strategy, optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), steps=2
    )
    _, _, actual, _ = _one_step(
        strategy, optimizer=optimizers.MomentumSGD(0.05, momentum=0.9, nesterov=True), steps=2
    )
    for e, a in zip(expected, actual):
        np.testing.assert_array_equal(a, e)


def test_the_pipeline_trains_with_the_fused_update():
    variable = keras.Variable(np.ones(4, "float32"))
    optimizer = optimizers.make_optimizer(
        TrainConfig(optimizer="sgd", learning_rate=0.01), 10, [variable]
    )
    assert type(optimizer) is optimizers.MomentumSGD
    assert optimizer.momentum == 0.9
    apply = tf.function(lambda: optimizer.apply_gradients([(tf.ones(4), variable)]))
    ops = {op.type for op in apply.get_concrete_function().graph.get_operations()}
    assert "ResourceApplyKerasMomentum" in ops


def test_xla_step_matches_the_plain_step():
    strategy = tf.distribute.get_strategy()
    loss, _, plain, _ = _one_step(strategy)
    xla_loss, _, compiled, _ = _one_step(strategy, jit_compile=True)
    assert xla_loss == pytest.approx(loss, rel=1e-4)
    for p, c in zip(plain, compiled):
        np.testing.assert_allclose(c, p, rtol=1e-2, atol=1e-3 * np.abs(p).max())


def test_mixed_precision_without_a_gpu_is_bfloat16_and_warns_where_emulated(caplog):
    precision.set_global_options(
        TrainConfig(mixed_precision=True), tf.distribute.get_strategy()
    )
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    warned = "no bfloat16 instructions" in caplog.text
    assert warned == (precision.cpu_has_bfloat16() is False)


def test_a_float32_run_hints_at_bfloat16_where_the_cpu_computes_it(caplog):
    caplog.set_level(logging.INFO, logger="pipeline")
    # A float32 run after a bfloat16 one in the same process is float32.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    precision.set_global_options(TrainConfig(), tf.distribute.get_strategy())
    assert keras.mixed_precision.global_policy().name == "float32"
    hinted = "This CPU computes bfloat16 natively" in caplog.text
    assert hinted == bool(precision.cpu_has_bfloat16())


def test_xla_with_bfloat16_on_a_cpu_warns(caplog):
    precision.set_global_options(
        TrainConfig(mixed_precision=True, jit_compile=True), tf.distribute.get_strategy()
    )
    assert "XLA's bfloat16 kernels" in caplog.text


def test_bfloat16_support_is_read_from_the_cpu_flags(tmp_path):
    (tmp_path / "sapphire").write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    (tmp_path / "epyc").write_text("flags\t\t: fpu avx2 fma\n")
    assert precision.cpu_has_bfloat16(str(tmp_path / "sapphire")) is True
    assert precision.cpu_has_bfloat16(str(tmp_path / "epyc")) is False
    assert precision.cpu_has_bfloat16(str(tmp_path / "missing")) is None


def test_the_eval_step_traces_once_for_every_batch_size():
    model = AlexNet(variant="d2l", num_classes=3, input_shape=(67, 67, 1))
    images = np.random.default_rng(0).normal(size=(11, 67, 67, 1)).astype("float32")
    labels = np.arange(11, dtype="int32") % 3
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    eval_step = train_steps.make_eval_step(model)

    metrics = train_steps.evaluate_dataset(eval_step, dataset)

    assert eval_step.experimental_get_tracing_count() == 1
    logits = model.predict(images, verbose=0)
    expected = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    assert metrics["loss"] == pytest.approx(float(np.mean(expected)), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))
