"""The learning-rate range test (Smith, 2017), as fastai's `lr_find` and
PyTorch Lightning's `Tuner.lr_find` run it.

    python -m pipeline.run --find-lr --optimizer sgd --batch-size 128

From the run's own model, optimizer, batch size and augmented training data,
the rate rises exponentially from `start` to `end`, one training step each,
until the loss (smoothed as fastai smooths it) passes four times its lowest or
stops being finite. The suggestion is a tenth of the rate at the lowest
smoothed loss (fastai's rule of thumb; Lightning's steepest-slope rule
picked rates of 1e-7 on digits' noisy 100-step curves). The run
directory receives `lr_find.csv` and `lr_find.png`; nothing is trained,
checkpointed or exported.
"""

import csv
import dataclasses
import io
import logging
import math
import os

import numpy as np

from pipeline import plots
from pipeline.data import input_pipeline
from pipeline.errors import PipelineError
from pipeline.storage import atomic
from pipeline.training import models
from pipeline.training import optimizers
from pipeline.training import train_steps
from pipeline.training import warm_start

log = logging.getLogger(__name__)

# fastai's defaults: 1e-7 to 10 over 100 steps, loss smoothed with beta 0.98.
START, END, STEPS = 1e-7, 10.0, 100
_BETA = 0.98
# The test stops once the smoothed loss is this many times its lowest.
_DIVERGED = 4.0
# The first steps' smoothed loss averages a few batches' noise: the lowest
# loss is looked for after them.
_SKIP_BEGIN = 10


@dataclasses.dataclass(frozen=True)
class RangeTest:
    """The rates tried, the loss of each step and its smoothed value, the
    point of the lowest smoothed loss after the first ten (None when the loss
    never fell below its start), and the suggested rate, a tenth of its."""

    learning_rates: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    lowest: int | None

    @property
    def suggestion(self):
        return None if self.lowest is None else self.learning_rates[self.lowest] / 10


def lowest_point(smoothed):
    """Where `smoothed` is lowest, looked for from the eleventh point on (the
    rate there is already at the edge of divergence: fastai's rule suggests a
    tenth of it); None if the loss never fell below its start there."""
    if len(smoothed) <= _SKIP_BEGIN or min(smoothed[_SKIP_BEGIN:]) >= smoothed[0]:
        return None
    return _SKIP_BEGIN + int(np.argmin(smoothed[_SKIP_BEGIN:]))


def range_test(step, set_learning_rate, start=START, end=END, steps=STEPS):
    """Runs `step()` (one training step, returning its mean loss) at rates
    rising exponentially from `start` to `end`, each set by
    `set_learning_rate(rate)` first; stops early once the loss diverges."""
    factor = (end / start) ** (1 / (steps - 1))
    rates, losses, smoothed = [], [], []
    average = 0.0
    for index in range(steps):
        rate = start * factor ** index
        set_learning_rate(rate)
        loss = step()
        if not math.isfinite(loss):
            break
        average = _BETA * average + (1 - _BETA) * loss
        rates.append(rate)
        losses.append(loss)
        smoothed.append(average / (1 - _BETA ** (index + 1)))
        if index > 10 and smoothed[-1] > _DIVERGED * min(smoothed):
            break
    return RangeTest(tuple(rates), tuple(losses), tuple(smoothed), lowest_point(smoothed))


def find(strategy, model_config, train_config, data_config, ingested, run_dir,
         start=START, end=END, steps=STEPS):
    """The range test of the run `train_config` describes (its model, warm
    start, frozen layers, optimizer, weight decay and batch size); writes
    `lr_find.csv` and `lr_find.png` into `run_dir` and returns the
    `RangeTest`."""
    with strategy.scope():
        model = models.build_model(model_config, ingested.num_classes)
        if train_config.freeze:
            warm_start.freeze(model, train_config.freeze)
        # A plain rate the test sets step by step; the schedule is not used.
        optimizer = optimizers.make_optimizer(
            dataclasses.replace(train_config, learning_rate=start, lr_schedule="constant",
                                warmup_epochs=0.0),
            1, model.trainable_variables)
    if train_config.init_from:
        warm_start.load(model, train_config.init_from)
    train_step = train_steps.make_train_step(
        model, optimizer, strategy, train_config.batch_size, train_config.weight_decay,
        train_config.jit_compile, train_config.winograd,
    )
    iterator = iter(input_pipeline.distribute_dataset(
        strategy, ingested, "train", model.image_spec, train_config.batch_size,
        # Locally: a data service's job is one pass, and the test may need more.
        training=True, data_config=dataclasses.replace(data_config, data_service=None),
        seed=input_pipeline.epoch_seed(train_config.seed, 0), repeat=True,
    ))

    def step():
        loss_sum, _, count = train_step(iterator)
        return float(loss_sum) / float(count)

    def set_learning_rate(rate):
        optimizer.learning_rate = rate

    log.info("Learning-rate range test: %d steps from %g to %g at batch %d", steps, start,
             end, train_config.batch_size)
    test = range_test(step, set_learning_rate, start, end, steps)
    if len(test.learning_rates) < 3:
        raise PipelineError(
            f"the learning-rate range test diverged within {len(test.learning_rates)} steps "
            f"of {start:g}; nothing can be suggested: check the data and the model")
    rows = [{"learning_rate": rate, "loss": loss, "smoothed_loss": smooth}
            for rate, loss, smooth in zip(test.learning_rates, test.losses, test.smoothed)]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic.replace_file(os.path.join(run_dir, "lr_find.csv"), table.getvalue())
    plots.learning_rate_range(test, os.path.join(run_dir, "lr_find.png"))
    return test
