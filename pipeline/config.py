"""The pipeline's settings: frozen dataclasses, one per stage, validated once.

Every fact about a setting is declared once, on its field (`setting`): its
default, whether it shapes a run (a resumed run must keep it), whether the
tuner may search it and TensorBoard's HParams dashboard shows it, and its
command-line flag and help. The resume check (`shaping_settings`), the tuner
(`tunable_settings`), the HParams writer (`logged_settings`) and the command
line read them from here, so a new setting is one field.

`pipeline.cli` turns flags into a `RunConfig` (each flag sets the field of the
same name: `--batch-size` is `TrainConfig.batch_size`); it is written to the
run directory as `config.json`, read back only through `RunConfig.from_json`,
and each stage receives only its own part. Errors name settings as
`name=value` or `` `name` ``, which the command line shows as its flags.
"""

import dataclasses
import json
import os
import time

from alexnet_keras import alexnet
from pipeline import json_values
from pipeline.errors import ConfigError
from pipeline.settings import check_choice
from pipeline.settings import setting

STRATEGIES = ("default", "one_device", "mirrored", "multiworker", "tpu")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "plateau", "cosine")
ALL_REDUCES = ("auto", "ring", "nccl")
EXPORT_FORMATS = ("saved_model", "keras", "litert", "onnx", "litert_int8", "onnx_int8")
TUNERS = ("random", "hyperband", "bayesian")
# `freeze` may hold any layer up to fc7: fc8, the classifier, always trains.
FREEZABLE_LAYERS = alexnet.WEIGHT_LAYERS[:-1]
# A config file larger than this is not a config.
MAX_CONFIG_BYTES = json_values.MAX_BYTES


def _timestamped_run_dir():
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from, and what the input pipeline adds to them."""

    dataset: str = setting(
        "digits", shapes_run=True, ingest=True,
        help="digits, tfds:<name>, folder:<path> or tfrecord:<glob>")
    data_dir: str | None = setting(
        shapes_run=False, ingest=True,
        help="TFDS data_dir: where tfds: datasets are (or get) prepared")
    ingest_dir: str | None = setting(
        shapes_run=False, ingest=True,
        help="where the ingested shards and manifest.json are or go "
             "(default: data/<dataset slug>, e.g. data/digits)")
    strict: bool = setting(
        False, shapes_run=False, ingest=True,
        help="stop at the first corrupt or non-image file instead of skipping it")
    # Passes a 45 MP camera photo (8256x5504, 130 MB decoded) and stops a
    # 400 KB PNG that decodes to gigabytes.
    max_pixels: int = setting(
        50_000_000, shapes_run=False, ingest=True,
        help="skip images with more pixels than this, read from their headers before "
             "decoding (and images of extreme aspect ratio)")
    label_offset: int = setting(
        0, shapes_run=True, ingest=True,
        help="tfrecord: subtract from every label (1 for 1-based sets like ImageNet)")
    class_names: str | None = setting(
        shapes_run=True, ingest=True,
        help="tfrecord: a comma-separated list, or a file with one name per line")
    cache: str | None = setting(
        shapes_run=False, help="cache decoded examples: 'memory' or a file path")
    pca_noise: bool = setting(
        False, shapes_run=True, help="the paper's PCA colour augmentation (colour data)")
    data_service: str | None = setting(
        shapes_run=False,
        help="grpc://HOST:PORT of a tf.data service dispatcher (alexnet-data-service): read, "
             "decode and augment the training split on its workers")
    data_service_timeout: float = setting(
        600.0, shapes_run=False,
        help="seconds without a batch from the data service (a lost worker stalls its job) "
             "before the run stops with exit status 138, to be resumed")

    def __post_init__(self):
        for name in ("max_pixels", "data_service_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"`{name}` must be positive. Received: {name}={getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Arguments of `alexnet_keras.AlexNet`.

    `image_size` is (height, width) and `channels` the input channels; `None`
    in either means "the dataset's and variant's own", which
    `pipeline.training.models` resolves when it builds the model. The pixel
    scale is the variant's and travels with the model (`AlexNet.image_spec`).
    """

    variant: str = setting("paper", shapes_run=True, logged=True, choices=alexnet.VARIANTS)
    dropout_rate: float = setting(0.5, shapes_run=True, tunable=True)
    normalization: str | None = setting(
        shapes_run=True, tunable=True, choices=alexnet.NORMALIZATIONS,
        help="the variant's own when not given (lrn for paper, none for d2l)")
    # He by default: the paper's own leaves the signal to its biases, and SGD
    # at its rate then stays at chance on small sets (docs/training.md). None
    # is the variant's own, as for `AlexNet`.
    initializer: str | None = setting(
        "he", shapes_run=True, logged=True, choices=alexnet.INITIALIZERS,
        help="he: He normal, zero biases, pixels in [-1, 1]; paper: the paper's N(0, 0.01) "
             "with biases of 1, pixels at the 0-255 scale; glorot: d2l's")
    image_size: tuple[int, int] | None = setting(
        shapes_run=True,
        help="SIZE or HEIGHT,WIDTH; when not given: 67 for digits, else the variant's "
             "227 or 224")
    channels: int | None = setting(
        shapes_run=True, choices=("1", "3"),
        help="model input channels; the dataset's own when not given")

    def __post_init__(self):
        # The architecture's own checks, made before anything is ingested; the
        # class count is the data's, checked when the model is built.
        try:
            alexnet.check_arguments(self.variant, 1, self.dropout_rate, self.normalization,
                                    self.initializer)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.image_size is not None and (
            len(self.image_size) != 2 or min(self.image_size) < 1
        ):
            raise ConfigError(
                f"`image_size` must be (height, width). Received: image_size={self.image_size}"
            )
        check_choice("channels", self.channels, (None, 1, 3))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the model is trained: strategy, optimisation and the run directory."""

    strategy: str = setting("default", shapes_run=False, choices=STRATEGIES)
    cpu_replicas: int | None = setting(
        shapes_run=False,
        help="split the CPU into N logical devices for --strategy mirrored (without GPUs)")
    # MultiWorkerMirroredStrategy's collectives: the implementation, and the
    # size of the packs gradients are all-reduced in (0: TensorFlow chooses).
    all_reduce: str = setting(
        "auto", shapes_run=False, choices=ALL_REDUCES,
        help="--strategy multiworker's collective implementation (auto: NCCL on GPUs, "
             "ring otherwise)")
    all_reduce_pack_mb: float = setting(
        0.0, shapes_run=False,
        help="all-reduce gradients in packs of this many MB (0: TensorFlow's choice)")
    # Compared apart by the resume check: a larger one extends a run.
    epochs: int = setting(10, shapes_run=False)
    steps_per_epoch: int | None = setting(
        shapes_run=True, help="cap on training steps per epoch")
    batch_size: int = setting(
        32, shapes_run=True, tunable=True, help="global batch size, split over the replicas")
    optimizer: str = setting("adam", shapes_run=True, tunable=True, choices=OPTIMIZERS)
    momentum: float = setting(
        0.9, shapes_run=True,
        help="SGD's momentum (the paper's 0.9; 0: plain SGD, as d2l); Adam ignores it")
    # The default recipe (recipes/default.json): Adam at 3e-4 after half an
    # epoch of warm-up, then a cosine decay; measured against the earlier
    # default (Adam 1e-4, constant, the paper's initialisation) in docs/training.md.
    learning_rate: float = setting(3e-4, shapes_run=True, tunable=True)
    weight_decay: float = setting(
        0.0, shapes_run=True, tunable=True, help="L2 on the kernels (the paper: 5e-4)")
    lr_schedule: str = setting(
        "cosine", shapes_run=True, logged=True, choices=LR_SCHEDULES,
        help="cosine: down to 0 at the last step; plateau: the paper's divide-by-10 when "
             "validation loss stalls; constant")
    warmup_epochs: float = setting(
        0.5, shapes_run=True,
        help="raise the learning rate linearly from 0 over this many epochs (fractions "
             "allowed) before the schedule")
    seed: int | None = setting(
        shapes_run=True, help="make a single-replica run reproducible")
    mixed_precision: bool = setting(
        False, shapes_run=True, help="float16 on GPUs, bfloat16 on CPUs and TPUs")
    jit_compile: bool = setting(
        False, shapes_run=False, help="compile the training step with XLA")
    # float32 3x3 convolutions by Winograd F(4x4, 3x3) in the train step on a
    # CPU, where their maps are whole 4x4 tiles (pipeline.training.winograd).
    winograd: bool = setting(
        True, shapes_run=False,
        help="on by default: 3x3 convolutions in the train step by Winograd F(4x4,3x3) "
             "(float32 on CPUs, maps of whole 4x4 tiles); --no-winograd computes them "
             "directly")
    # Beside the checkpoint of every epoch's end, and the one a preempted run
    # saves: with long epochs (ImageNet's ~10,000 steps) a kill loses no more.
    checkpoint_every_steps: int | None = setting(
        shapes_run=False, help="also checkpoint every N training steps inside an epoch")
    checkpoint_every_minutes: float = setting(
        30.0, shapes_run=False,
        help="also checkpoint inside an epoch when this long has passed since the last save")
    output_dir: str = setting(
        shapes_run=False, default_factory=_timestamped_run_dir,
        help="run directory (runs/<timestamp> when not given); rerun with the same one "
             "to resume")
    # A warm start: the first weights from a .keras file, a run directory, an
    # export or a torchvision .pth, and the layers up to `freeze` kept fixed.
    init_from: str | None = setting(
        shapes_run=True,
        help="start from the weights of a .keras file, a run directory, an exported "
             "SavedModel or torchvision's AlexNet .pth; fc8 is new if the class count differs")
    freeze: str | None = setting(
        shapes_run=True, choices=FREEZABLE_LAYERS,
        help="with --init-from: keep the layers up to this one fixed")
    early_stopping: int | None = setting(
        shapes_run=True,
        help="stop when the validation loss has not improved for this many epochs (the "
             "last epoch's weights are evaluated and exported)")

    def __post_init__(self):
        checks = (
            (self.epochs >= 1, "epochs", "must be at least 1"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch",
             "must be at least 1"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.learning_rate > 0, "learning_rate", "must be positive"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (0 <= self.warmup_epochs < self.epochs, "warmup_epochs",
             f"must be >= 0 and less than epochs={self.epochs}"),
            (self.cpu_replicas is None or self.cpu_replicas >= 1, "cpu_replicas",
             "must be at least 1"),
            (self.all_reduce_pack_mb >= 0, "all_reduce_pack_mb", "must be >= 0"),
            (self.early_stopping is None or self.early_stopping >= 1, "early_stopping",
             "must be at least 1"),
            (self.checkpoint_every_steps is None or self.checkpoint_every_steps >= 1,
             "checkpoint_every_steps", "must be a positive number of steps"),
            (self.checkpoint_every_minutes > 0, "checkpoint_every_minutes",
             "must be a positive number of minutes"),
        )
        for ok, name, requirement in checks:
            if not ok:
                raise ConfigError(
                    f"`{name}` {requirement}. Received: {name}={getattr(self, name)!r}"
                )
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("all_reduce", self.all_reduce, ALL_REDUCES)
        check_choice("freeze", self.freeze, (None, *FREEZABLE_LAYERS))
        if self.strategy != "multiworker" and (
            self.all_reduce != "auto" or self.all_reduce_pack_mb
        ):
            raise ConfigError(
                "`all_reduce` and `all_reduce_pack_mb` set the collectives of "
                f"strategy='multiworker', not {self.strategy!r}"
            )
        if self.freeze and not self.init_from:
            raise ConfigError("`freeze` keeps loaded layers fixed: give `init_from` too")
        if self.jit_compile and (self.cpu_replicas or 1) > 1:
            raise ConfigError(
                "`jit_compile` fails with `cpu_replicas` above 1 (XLA cannot place a "
                "step over several logical CPUs); drop one of them"
            )


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Blessing, export for TF Serving, and the other files a run writes
    (`export_formats`: `.keras`, LiteRT, ONNX, their int8 forms)."""

    export_dir: str = setting(
        "saved_models/alexnet", shapes_run=False,
        help="TF Serving base path; versions go in numbered subdirectories")
    bless_tolerance: float = setting(
        0.01, shapes_run=False,
        help="push if test accuracy >= the served version's (and the best kept "
             "version's) minus this")
    min_accuracy: float = setting(
        0.0, shapes_run=False, help="push only at or above this test accuracy (0: no floor)")
    force_push: bool = setting(
        False, shapes_run=False, help="export even if the model is worse than the served one")
    ten_crop: bool = setting(
        True, shapes_run=False,
        help="also report the paper's ten-crop test accuracy (corner and centre patches "
             "and their reflections, softmaxes averaged: ten forward passes per test image); "
             "blessing compares the central crop's")
    export_formats: tuple[str, ...] = setting(
        ("saved_model",), shapes_run=False, flag="--export-format", choices=EXPORT_FORMATS,
        help="saved_model (always); keras: model.keras, litert: model.tflite (LiteRT), "
             "onnx: model.onnx (needs pip install -e \".[export]\"), litert_int8, onnx_int8: "
             "model_int8.tflite, model_int8.onnx (int8, calibrated on training images), "
             "in the run directory, the last four the bare network; repeatable")

    def __post_init__(self):
        unknown = set(self.export_formats) - set(EXPORT_FORMATS)
        if unknown:
            raise ConfigError(
                f"`export_formats` must be among {', '.join(EXPORT_FORMATS)}. "
                f"Received: {', '.join(sorted(unknown))}"
            )
        if not 0 <= self.min_accuracy <= 1:
            raise ConfigError(
                f"`min_accuracy` must be in [0, 1]. Received: min_accuracy={self.min_accuracy}"
            )
        if self.bless_tolerance < 0:
            raise ConfigError(
                f"`bless_tolerance` must be >= 0. Received: bless_tolerance={self.bless_tolerance}"
            )


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """The hyperparameter search that may precede training."""

    tuner: str | None = setting(
        shapes_run=False, flag="--tune", choices=TUNERS,
        help="search hyperparameters first, then train with the best")
    max_trials: int = setting(10, shapes_run=False, help="trials of a random or bayesian search")
    tune_epochs: int = setting(
        3, shapes_run=False, help="epochs per trial (Hyperband: the most a trial gets)")
    tune_dir: str | None = setting(
        shapes_run=False,
        help="keras-tuner's directory (<output-dir>/tuning when not given); reuse it to "
             "resume a search, share it across machines")
    tune_space: str | None = setting(
        shapes_run=False, help="JSON file replacing entries of the search space")
    hparams: str | None = setting(
        shapes_run=False,
        help="best_hparams.json of an earlier search: train with it, no search")

    def __post_init__(self):
        check_choice("tuner", self.tuner, (None, *TUNERS))
        if self.max_trials < 1 or self.tune_epochs < 1:
            raise ConfigError(
                "`max_trials` and `tune_epochs` must be at least 1. Received: "
                f"max_trials={self.max_trials}, tune_epochs={self.tune_epochs}"
            )
        if self.tuner and self.hparams:
            raise ConfigError("`tuner` searches for hyperparameters and `hparams` gives "
                              "them: use one or the other")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one `python -m pipeline.run` does."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    tune: TuneConfig = dataclasses.field(default_factory=TuneConfig)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text, source="the config"):
        """The `RunConfig` that `to_json` (or a run's `config.json`) wrote:
        `RunConfig.from_json(config.to_json()) == config`. A partial config
        (a recipe) keeps the defaults of what it leaves out; top-level entries
        that are not sections are refused, but for `config.json`'s "ingested"
        and a recipe's "about" (a description, ignored). Each value is
        checked for its type and range by the same code that checks a flag."""
        return cls(**sections_from_json(text, source))


# The sections of a `RunConfig`, by name: what the command line, the JSON reader
# and the settings' lists go through.
SECTIONS = {field.name: field.type for field in dataclasses.fields(RunConfig)}
# Top-level entries of a config file that are not settings: what a run's
# config.json records of its data, and a recipe's description.
NOT_SETTINGS = ("ingested", "about")


def _as_recorded_then(recorded):
    """A run's `config.json` (it records "ingested") written before a setting
    existed reads back as the run it was: its variant's own initialisation,
    no warm-up."""
    model, train = recorded.get("model", {}), recorded.get("train", {})
    if "ingested" in recorded and isinstance(model, dict) and isinstance(train, dict):
        variant = model.get("variant", ModelConfig.variant)
        if variant in alexnet.VARIANTS:
            recorded["model"] = {"initializer": alexnet.default_initializer(variant), **model}
            recorded["train"] = {"warmup_epochs": 0.0, **train}
    return recorded


def sections_from_json(text, source):
    """`{section name: config}` for the sections a `config.json` (or a partial
    one) sets, each value checked; raises `ConfigError` naming `source`."""
    recorded = _as_recorded_then(
        json_values.parse_object(text, source, "pass a run's config.json"))
    if not set(SECTIONS) & set(recorded):
        raise ConfigError(f"{source} holds no settings; pass a run's config.json")
    return json_values.sections(recorded, SECTIONS, source, NOT_SETTINGS)


def _settings_where(key):
    return {
        section: tuple(field.name for field in dataclasses.fields(config_class)
                       if field.metadata[key])
        for section, config_class in SECTIONS.items()
    }


def shaping_settings():
    """`{section: names}` of the settings a resumed run must keep."""
    return _settings_where("shapes_run")


def tunable_settings():
    """`{section: names}` of the settings the tuner may search."""
    return _settings_where("tunable")


def logged_settings():
    """`{section: names}` of the settings TensorBoard's HParams dashboard shows."""
    return _settings_where("logged")
