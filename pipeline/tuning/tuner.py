"""Tuner: a keras-tuner search over the seed tutorial's exercises.

    python -m pipeline.run --tune random --max-trials 10 --tune-epochs 5

searches learning rate, optimizer, dropout, batch size, normalisation and
weight decay, writes `best_hparams.json`, `tuning_trials.png` and a table of
trials to the run directory, and each trial's TensorBoard logs and
hyperparameters to `<tune_dir>/logs/<trial>/execution0`; `pipeline.run` then
trains the final model with the winner. `hparams=best_hparams.json` reuses a
winner without a search.

Trials train with the same model builder (`models.build_model`) and the same
epoch loop (`loop.fit`) as the final model. Across machines, keras-tuner's own
chief/worker mode runs the search: the same command everywhere, with
`KERASTUNER_TUNER_ID` (`chief`, `tuner0`, ...), `KERASTUNER_ORACLE_IP`,
`KERASTUNER_ORACLE_PORT` and a shared `tune_dir`.
"""

import dataclasses
import json
import logging
import os

import keras_tuner
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import json_values
from pipeline import plots
from pipeline.data import input_pipeline
from pipeline.errors import ConfigError
from pipeline.errors import PipelineError
from pipeline.errors import TrainingDiverged
from pipeline.errors import first_line
from pipeline.storage import atomic
from pipeline.training import loop
from pipeline.training import models
from pipeline.training import optimizers
from pipeline.training import summaries
from pipeline.training import warm_start

log = logging.getLogger(__name__)

OBJECTIVE = "val_accuracy"
# The seed tutorial's exercises (learning rates 0.1 to 0.0001, dropout 0.3 to
# 0.7, batch 64 to 256, other normalisations) plus the paper's weight decay.
# A `tune_space` JSON file replaces any of these entries: a list is a choice,
# {"min", "max", "sampling": "log"|"linear", "step"} a range.
DEFAULT_SPACE = {
    "learning_rate": {"min": 1e-4, "max": 1e-1, "sampling": "log"},
    "optimizer": ["sgd", "adam"],
    "dropout_rate": {"min": 0.3, "max": 0.7, "step": 0.1},
    "batch_size": [64, 128, 256],
    "normalization": ["lrn", "batchnorm", "none"],
    "weight_decay": [0.0, 5e-4],
}


_SPACE_FIX = ("a tune_space file maps hyperparameters to a list of choices or to "
              '{"min", "max", "sampling", "step"}')
_SAMPLINGS = ("linear", "log", "reverse_log")


def _tunable_types():
    """{tunable setting: its annotation}: what a value of each must be."""
    return {field.name: field.type
            for section in config_lib.SECTIONS.values()
            for field in dataclasses.fields(section) if field.metadata["tunable"]}


def _in_range(name, value, where):
    """`value`, if its setting accepts it (the check its flag gets)."""
    section = next(section for section, names in config_lib.tunable_settings().items()
                   if name in names)
    try:
        config_lib.SECTIONS[section](**{name: value})
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return value


def _checked_entry(name, spec, source):
    """One search-space entry, each value checked as the setting's flag is."""
    kind = _tunable_types()[name]
    where = f"{source}: `{name}`"
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where} lists no choices; {_SPACE_FIX}")
        return [_in_range(name, json_values.checked(value, kind, f"{where}'s choice"), source)
                for value in spec]
    if isinstance(spec, dict) and {"min", "max"} <= set(spec):
        unknown = sorted(set(spec) - {"min", "max", "sampling", "step"})
        if unknown:
            raise ConfigError(f"{where} has unknown keys {unknown}; {_SPACE_FIX}")
        number = int if kind is int else float
        low, high = (_in_range(name, json_values.checked(spec[key], number, f"{where}'s {key}"),
                               source) for key in ("min", "max"))
        if spec.get("sampling", "linear") not in _SAMPLINGS:
            raise ConfigError(f"{where}'s sampling must be one of {', '.join(_SAMPLINGS)}. "
                              f"Received: {json.dumps(spec['sampling'])[:80]}")
        step = spec.get("step")
        if step is not None and not json_values.checked(step, number, f"{where}'s step") > 0:
            raise ConfigError(f"{where}'s step must be positive. Received: {step}")
        if not low < high or (spec.get("sampling") in ("log", "reverse_log") and low <= 0):
            raise ConfigError(f"{where} must have 0 < min < max for log sampling, and "
                              f"min < max always. Received: min={low}, max={high}")
        return {**spec, "min": low, "max": high}
    raise ConfigError(f"{where} must be a list of choices or a {{\"min\", \"max\"}} range. "
                      f"Received: {json.dumps(spec)[:80]}")


def load_space(path=None):
    """The search space: the defaults, with entries replaced from a JSON file,
    each checked (type, range, shape): `ConfigError` naming the file and the entry."""
    space = dict(DEFAULT_SPACE)
    if path is None:
        return space
    source = f"tune_space={path}"
    overrides = json_values.parse_object(
        json_values.read_text(path, "tune_space", _SPACE_FIX), source, _SPACE_FIX)
    unknown = set(overrides) - set(DEFAULT_SPACE)
    if unknown:
        raise ConfigError(
            f"{source} names unknown hyperparameters {sorted(unknown)}; "
            f"known: {', '.join(DEFAULT_SPACE)}"
        )
    space.update({name: _checked_entry(name, spec, source) for name, spec in overrides.items()})
    return space


def _space_from(space, config, tune_space):
    """The search space of trials that start from `init_from`: its weights fix
    the normalisation layers (BatchNormalization's weights, or none), so the
    default space's `normalization` entry is left out, and a `tune_space` that
    changes it is refused."""
    if "normalization" not in space:
        return space
    if space["normalization"] != DEFAULT_SPACE["normalization"]:
        raise ConfigError(
            f"tune_space={tune_space} searches `normalization`, which `init_from` "
            f"fixes to {config.train.init_from}'s; remove it from the file"
        )
    log.info("Trials start from %s: its normalization is kept, not searched",
             config.train.init_from)
    return {name: spec for name, spec in space.items() if name != "normalization"}


def _define(hp, name, spec):
    if isinstance(spec, list):
        return hp.Choice(name, spec)
    if isinstance(spec, dict) and {"min", "max"} <= set(spec):
        kind = hp.Int if name == "batch_size" else hp.Float
        return kind(name, spec["min"], spec["max"], step=spec.get("step"),
                    sampling=spec.get("sampling", "linear"))
    raise ConfigError(
        f"the search space entry {name!r} must be a list of choices or a "
        f'{{"min", "max"}} range. Received: {spec!r}'
    )


def apply_hparams(config, hparams):
    """`config` (a RunConfig) with the tunable settings `hparams` sets."""
    tunable = config_lib.tunable_settings()
    known = [name for names in tunable.values() for name in names]
    unknown = set(hparams) - set(known)
    if unknown:
        raise ConfigError(
            f"unknown hyperparameters {sorted(unknown)}; known: {', '.join(known)}"
        )
    return dataclasses.replace(config, **{
        section: dataclasses.replace(getattr(config, section), **{
            name: hparams[name] for name in names if name in hparams
        })
        for section, names in tunable.items() if names
    })


def load_hparams(path):
    """The hyperparameters of a `best_hparams.json`, each checked as its flag is."""
    fix = "pass a best_hparams.json written by `tuner`"
    source = f"hparams={path}"
    recorded = json_values.parse_object(json_values.read_text(path, "hparams", fix), source, fix)
    hparams = recorded.get("hyperparameters")
    if not isinstance(hparams, dict):
        raise ConfigError(f"{source} has no \"hyperparameters\" object; {fix}")
    kinds = _tunable_types()
    unknown = sorted(set(hparams) - set(kinds))
    if unknown:
        raise ConfigError(f"{source}: unknown hyperparameters {unknown}; "
                          f"known: {', '.join(kinds)}")
    return {name: json_values.checked(value, kinds[name], f"{source}: `{name}`")
            for name, value in hparams.items()}


class AlexNetHyperModel(keras_tuner.HyperModel):
    """Builds a trial's model and trains it with the pipeline's own loop."""

    def __init__(self, config, space, strategy, ingested):
        super().__init__(name="alexnet")
        self.config = config
        self.space = space
        self.strategy = strategy
        self.ingested = ingested
        # `init_from`'s weights, read once for every trial.
        self._source = None

    def _trial_config(self, hp):
        """The run's config with the trial's hyperparameters and its epochs (a
        Hyperband round's own, else `tune_epochs`), so that a cosine schedule
        decays over the epochs the trial trains, after a warm-up of at most
        half of them."""
        hparams = {name: _define(hp, name, spec) for name, spec in self.space.items()}
        config = apply_hparams(self.config, hparams)
        epochs = hp.values.get("tuner/epochs", self.config.tune.tune_epochs)
        # A warm-up longer than half a short trial is cut to that half.
        warmup = min(config.train.warmup_epochs, epochs / 2)
        return dataclasses.replace(
            config, train=dataclasses.replace(config.train, epochs=epochs, warmup_epochs=warmup)
        )

    def build(self, hp):
        config = self._trial_config(hp)
        steps = input_pipeline.steps_per_epoch(
            config.train, self.ingested, self.strategy.num_replicas_in_sync
        )
        model = models.build_model(
            config.model, self.ingested.num_classes
        )
        # A fine-tuning run's trials start where its final training will: from
        # `init_from`, with the `freeze` layers fixed.
        if config.train.freeze:
            warm_start.freeze(model, config.train.freeze)
        if config.train.init_from:
            if self._source is None:
                self._source = warm_start.source_weights(config.train.init_from)
            warm_start.load(model, config.train.init_from, self._source)
        # Compiled only to carry the optimizer, built here, in the tuner's strategy
        # scope.
        model.compile(optimizer=optimizers.make_optimizer(
            config.train, steps, model.trainable_variables
        ))
        return model

    def fit(self, hp, model, *args, callbacks=(), epochs=None, initial_epoch=0, **kwargs):
        config = self._trial_config(hp)
        # keras-tuner passes the same epochs that _trial_config read.
        train_config = dataclasses.replace(config.train, epochs=epochs)
        try:
            logs = loop.fit(
                model, model.optimizer, self.strategy, train_config, config.data,
                self.ingested, initial_epoch, callbacks,
            )
        except TrainingDiverged as error:
            # A rate that diverges is a finding of the search, not a failure
            # of it: the trial scores nothing, and the search goes on.
            log.warning("This trial's %s", error)
            return {OBJECTIVE: 0.0}
        return {OBJECTIVE: max(epoch[OBJECTIVE] for epoch in logs)}


def make_tuner(kind, hypermodel, strategy, tune_dir, max_trials, tune_epochs, seed=None):
    """The keras-tuner tuner `tuner=kind` means, resuming from `tune_dir`."""
    # Trials build their model in the strategy's scope (the default strategy
    # needs none); a search across machines is keras-tuner's chief/worker mode.
    distribution = None if strategy is tf.distribute.get_strategy() else strategy
    common = {
        "objective": keras_tuner.Objective(OBJECTIVE, direction="max"),
        "directory": os.path.dirname(atomic.absolute(tune_dir)),
        "project_name": os.path.basename(atomic.absolute(tune_dir)),
        "overwrite": False,
        "seed": seed,
        "distribution_strategy": distribution,
    }
    if kind == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
    if kind == "hyperband":
        # max_trials bounds nothing in Hyperband: its brackets follow from
        # max_epochs and the reduction factor.
        return keras_tuner.Hyperband(
            hypermodel, max_epochs=tune_epochs, factor=3, hyperband_iterations=1, **common
        )
    raise ValueError(
        f"`tuner` must be one of {', '.join(config_lib.TUNERS)}. Received: tuner={kind!r}"
    )


def is_tuning_worker():
    """Whether this process is a keras-tuner worker (not the chief)."""
    return os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief"


def tuned_config(config, strategy, ingested, run_dir):
    """`config` with the hyperparameters of `hparams`, or of a search when
    `tuner` is set, or as it is; None on a keras-tuner worker, whose part ends
    with the search."""
    if config.tune.hparams:
        try:
            return apply_hparams(config, load_hparams(config.tune.hparams))
        except ConfigError as error:
            # A value of the right type but out of range, as the setting checks it.
            message = str(error)
            if message.startswith(f"hparams={config.tune.hparams}"):
                raise
            raise ConfigError(f"hparams={config.tune.hparams}: {message}") from None
    if not config.tune.tuner:
        return config
    best = tune(config, strategy, ingested, run_dir)
    return None if best is None else apply_hparams(config, best)


def tune(config, strategy, ingested, run_dir):
    """Searches hyperparameters; returns the best, or None on a tuning worker.

    `config` is the whole RunConfig: its `tune` part sets the search, the rest
    is what each trial starts from. An interrupted search given the same
    `tune_dir` continues where it stopped.
    """
    tune_config = config.tune
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise ConfigError(
            "`tuner` does not run under strategy='multiworker': keras-tuner takes "
            "single-machine strategies; search across machines with its chief/worker "
            "mode (KERASTUNER_TUNER_ID, see docs/tuning.md) and any other `strategy`"
        )
    space = load_space(tune_config.tune_space)
    if config.train.init_from:
        space = _space_from(space, config, tune_config.tune_space)
    hypermodel = AlexNetHyperModel(config, space, strategy, ingested)
    tune_dir = tune_config.tune_dir or os.path.join(run_dir, "tuning")
    tuner = make_tuner(tune_config.tuner, hypermodel, strategy, tune_dir,
                       tune_config.max_trials, tune_config.tune_epochs, config.train.seed)
    # On the chief of a distributed search this serves the oracle and trains
    # nothing; on a worker or a single machine it runs trials. Each trial logs
    # to TensorBoard under the search's directory, which it shares across
    # machines and runs, and keras-tuner adds its hyperparameters for HParams.
    try:
        tuner.search(epochs=tune_config.tune_epochs, callbacks=[
            summaries.TensorBoard(os.path.join(tune_dir, summaries.LOGS))
        ])
    except RuntimeError as error:
        # keras-tuner gives up after too many failed trials (each is logged).
        raise PipelineError(
            f"the search stopped: {first_line(error)} See the trials' errors "
            "above; a batch size in the search space larger than the data is a common cause"
        ) from None
    if is_tuning_worker():
        return None
    return _report(tuner, run_dir)


def _report(tuner, run_dir):
    """Writes `best_hparams.json` and `tuning_trials.png`; returns the best values."""
    trials = [
        trial for trial in tuner.oracle.trials.values()
        if trial.status == "COMPLETED" and trial.score is not None
    ]
    if not trials:
        raise PipelineError(
            "the search completed no trial; see the log above, or give it more "
            "`max_trials` or `tune_epochs`"
        )
    trials.sort(key=lambda trial: trial.score, reverse=True)
    names = list(DEFAULT_SPACE)
    header = f"{'trial':>6} {'score':>7}  " + "  ".join(f"{name:>13}" for name in names)
    lines = [header]
    for trial in trials:
        values = trial.hyperparameters.values
        cells = "  ".join(f"{_format(values.get(name)):>13}" for name in names)
        lines.append(f"{trial.trial_id:>6} {trial.score:7.4f}  {cells}")
    log.info("%s", "\n".join(lines))

    best = trials[0]
    hparams = {
        name: value for name, value in best.hyperparameters.values.items()
        if not name.startswith("tuner/")
    }
    atomic.replace_file(os.path.join(run_dir, "best_hparams.json"), json.dumps(
        {"hyperparameters": hparams, "objective": OBJECTIVE, "score": best.score,
         "trial_id": best.trial_id, "trials": len(trials)},
        indent=2, sort_keys=True,
    ))
    in_order = sorted(trials, key=lambda trial: int(trial.trial_id))
    plots.search_scores(
        [trial.trial_id for trial in in_order], [trial.score for trial in in_order],
        OBJECTIVE, os.path.join(run_dir, "tuning_trials.png"),
    )
    return hparams


def _format(value):
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)
