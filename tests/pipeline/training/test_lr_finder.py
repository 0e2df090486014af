"""Learning-rate warm-up and schedules, and the range test (`--find-lr`)."""

import csv
import math

import numpy as np
import pytest
import tensorflow as tf

from pipeline.cli import main as cli
from pipeline.config import TrainConfig
from pipeline.training import lr_finder
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


def test_the_suggestion_is_a_tenth_of_the_lowest_points_rate():
    learning_rates = [10 ** (-7 + index / 10) for index in range(60)]
    # Falls from 2.3 to its lowest, 0.5, at index 40 (rate 1e-3), then rises.
    smoothed = [2.3 - 1.8 * min(index, 40) / 40 + max(0, index - 40) * 0.3
                for index in range(60)]
    assert lr_finder.suggest(learning_rates, smoothed) == pytest.approx(1e-4)
    # The first ten points are noise: a low one there is not the minimum.
    smoothed[3] = 0.1
    assert lr_finder.suggest(learning_rates, smoothed) == pytest.approx(1e-4)
    # A loss that never falls below its start suggests nothing.
    assert lr_finder.suggest(learning_rates, [2.3 + index for index in range(60)]) is None


def test_the_range_test_stops_when_the_loss_diverges():
    set_rates = []
    losses = iter([2.0] * 20 + [1.0] * 10 + [100.0] * 70)
    test = lr_finder.range_test(lambda: next(losses), set_rates.append, 1e-6, 1.0, 100)
    assert len(test.learning_rates) < 100 and test.losses[-1] == 100.0
    assert set_rates[0] == 1e-6 and set_rates == list(test.learning_rates)
    ratios = np.diff(np.log(test.learning_rates))
    np.testing.assert_allclose(ratios, math.log(1e6) / 99)
    nan_at_five = iter([2.0, 2.0, 2.0, 2.0, 2.0, float("nan")])
    assert len(lr_finder.range_test(lambda: next(nan_at_five), set_rates.append).losses) == 5


@pytest.mark.slow
def test_find_lr_on_digits_suggests_a_rate_that_trains(tmp_path, digits_dir, capsys):
    """The range test of Adam on the digits, through the command line: a
    hundred rates from 1e-7 up (fewer when the loss blows up), its table and
    picture in the run directory, nothing trained; the suggestion lies where
    Adam trains AlexNet (1e-5 to 1e-2)."""
    run_dir = tmp_path / "run"
    assert cli.main("run", ["--find-lr", "--ingest-dir", digits_dir, "--initializer", "he",
                            "--output-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    with open(run_dir / "lr_find.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    rates_tried = [float(row["learning_rate"]) for row in rows]
    smoothed = [float(row["smoothed_loss"]) for row in rows]
    assert rates_tried[0] == pytest.approx(1e-7) and 30 < len(rows) <= 100
    # It ran until the loss passed four times its lowest, or to the end.
    assert smoothed[-1] > 4 * min(smoothed) or len(rows) == 100
    suggestion = lr_finder.suggest(rates_tried, smoothed)
    assert 1e-5 <= suggestion <= 1e-2
    assert f"Suggested learning rate: {suggestion:.2g}" in out
    assert (run_dir / "lr_find.png").stat().st_size > 10_000
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
