"""The learning-rate range test (`--find-lr`)."""

import csv
import math

import numpy as np
import pytest

from pipeline.cli import main as cli
from pipeline.training import lr_finder


def test_the_suggestion_is_a_tenth_of_the_lowest_points_rate():
    learning_rates = [10 ** (-7 + index / 10) for index in range(60)]
    # Falls from 2.3 to its lowest, 0.5, at index 40 (rate 1e-3), then rises.
    smoothed = [2.3 - 1.8 * min(index, 40) / 40 + max(0, index - 40) * 0.3
                for index in range(60)]
    test = lr_finder.RangeTest(tuple(learning_rates), (), tuple(smoothed),
                               lr_finder.lowest_point(smoothed))
    assert test.lowest == 40 and test.suggestion == pytest.approx(1e-4)
    # The first ten points are noise: a low one there is not the minimum.
    smoothed[3] = 0.1
    assert lr_finder.lowest_point(smoothed) == 40
    # A loss that never falls below its start suggests nothing.
    assert lr_finder.lowest_point([2.3 + index for index in range(60)]) is None
    assert lr_finder.RangeTest((1.0,), (2.3,), (2.3,), None).suggestion is None


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
    lowest = lr_finder.lowest_point(smoothed)
    suggestion = rates_tried[lowest] / 10
    assert 1e-5 <= suggestion <= 1e-2
    assert f"Suggested learning rate: {suggestion:.2g}" in out
    assert (run_dir / "lr_find.png").stat().st_size > 10_000
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
