"""The pipeline's settings: frozen dataclasses, one per stage, validated once.

`pipeline.cli` turns flags into a `RunConfig` (each flag sets the field of the
same name: `--batch-size` is `TrainConfig.batch_size`); it is written to the
run directory as `config.json` and each stage receives only its own part.
Errors name settings as `name=value` or `` `name` ``, which the command line
shows as its flags.
"""

import dataclasses
import json
import re

from alexnet_keras import alexnet

STRATEGIES = ("default", "one_device", "mirrored", "multiworker", "tpu")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "plateau", "cosine")
ALL_REDUCES = ("auto", "ring", "nccl")
EXPORT_FORMATS = ("saved_model", "keras", "litert", "onnx")
TUNERS = ("random", "hyperband", "bayesian")
# `freeze` may hold any layer up to fc7: fc8, the classifier, always trains.
FREEZABLE_LAYERS = alexnet.WEIGHT_LAYERS[:-1]


class PipelineError(Exception):
    """A problem the user caused and can fix: a bad flag, path, file or dataset.

    Its message is one line that names the thing and the fix; the command line
    prints it, with settings named as flags, and exits with status 2 instead of
    a traceback.
    """


class ConfigError(PipelineError, ValueError):
    """A setting a user gave is invalid."""


def first_line(error):
    """The line of an error, or of an error message, that says what went wrong.

    TensorFlow wraps an op's error in lines such as "Graph execution error:",
    "Detected at node ..." and "[[{{node ...}}]]" and decorates it with
    "{{function_node ...}}" and "[Op:...]": those say where, not what.
    """
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", text)
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    for line in lines:
        if not (line.endswith(":") or line.startswith(("<", "[[", "Detected at node"))):
            return line
    if lines:
        return lines[0]
    return type(error).__name__ if isinstance(error, BaseException) else "no details"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from, and what the input pipeline adds to them."""

    dataset: str = "digits"
    data_dir: str | None = None
    ingest_dir: str | None = None
    strict: bool = False
    # Passes a 45 MP camera photo (8256x5504, 130 MB decoded) and stops a
    # 400 KB PNG that decodes to gigabytes.
    max_pixels: int = 50_000_000
    label_offset: int = 0
    class_names: str | None = None
    cache: str | None = None
    pca_noise: bool = False

    def __post_init__(self):
        if self.max_pixels < 1:
            raise ConfigError(
                f"`max_pixels` must be positive. Received: max_pixels={self.max_pixels}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Arguments of `alexnet_keras.AlexNet`.

    `image_size` is (height, width) and `channels` the input channels; `None`
    in either means "the dataset's and variant's own", which
    `pipeline.model_factory` resolves when it builds the model. The pixel scale
    is the variant's and travels with the model (`AlexNet.image_spec`).
    """

    variant: str = "paper"
    dropout_rate: float = 0.5
    normalization: str | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None

    def __post_init__(self):
        if self.image_size is not None and (
            len(self.image_size) != 2 or min(self.image_size) < 1
        ):
            raise ConfigError(
                f"`image_size` must be (height, width). Received: image_size={self.image_size}"
            )
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"`channels` must be 1 or 3. Received: channels={self.channels}")
        if self.variant not in alexnet.VARIANTS:
            raise ConfigError(
                f"`variant` must be one of {', '.join(alexnet.VARIANTS)}. "
                f"Received: variant={self.variant!r}"
            )
        if self.normalization not in (None, *alexnet.NORMALIZATIONS):
            raise ConfigError(
                f"`normalization` must be one of {', '.join(alexnet.NORMALIZATIONS)}. "
                f"Received: normalization={self.normalization!r}"
            )
        if not 0 <= self.dropout_rate < 1:
            raise ConfigError(
                f"`dropout_rate` must be in [0, 1). Received: dropout_rate={self.dropout_rate!r}"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the model is trained: strategy, optimisation and the run directory."""

    strategy: str = "default"
    cpu_replicas: int | None = None
    # MultiWorkerMirroredStrategy's collectives: the implementation, and the
    # size of the packs gradients are all-reduced in (0: TensorFlow chooses).
    all_reduce: str = "auto"
    all_reduce_pack_mb: float = 0
    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    seed: int | None = None
    mixed_precision: bool = False
    jit_compile: bool = False
    # float32 3x3 convolutions by Winograd F(4x4, 3x3) in the train step on a
    # CPU, where their maps are whole 4x4 tiles (pipeline.winograd).
    winograd: bool = True
    output_dir: str = "runs/latest"
    # A warm start: the first weights from a .keras file, a run directory or
    # an export, and the layers up to `freeze` kept fixed.
    init_from: str | None = None
    freeze: str | None = None

    def __post_init__(self):
        checks = (
            (self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}"),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule",
             f"must be one of {', '.join(LR_SCHEDULES)}"),
            (self.epochs >= 1, "epochs", "must be at least 1"),
            (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch",
             "must be at least 1"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.learning_rate > 0, "learning_rate", "must be positive"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.cpu_replicas is None or self.cpu_replicas >= 1, "cpu_replicas",
             "must be at least 1"),
            (self.all_reduce in ALL_REDUCES, "all_reduce",
             f"must be one of {', '.join(ALL_REDUCES)}"),
            (self.all_reduce_pack_mb >= 0, "all_reduce_pack_mb", "must be >= 0"),
        )
        for ok, name, requirement in checks:
            if not ok:
                raise ConfigError(
                    f"`{name}` {requirement}. Received: {name}={getattr(self, name)!r}"
                )
        if self.strategy != "multiworker" and (
            self.all_reduce != "auto" or self.all_reduce_pack_mb
        ):
            raise ConfigError(
                "`all_reduce` and `all_reduce_pack_mb` set the collectives of "
                f"strategy='multiworker', not {self.strategy!r}"
            )
        if self.freeze is not None and self.freeze not in FREEZABLE_LAYERS:
            raise ConfigError(
                f"`freeze` must be one of {', '.join(FREEZABLE_LAYERS)}. "
                f"Received: freeze={self.freeze!r}"
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
    (`export_formats`: `.keras`, LiteRT, ONNX)."""

    export_dir: str = "saved_models/alexnet"
    bless_tolerance: float = 0.01
    min_accuracy: float = 0.0
    force_push: bool = False
    export_formats: tuple[str, ...] = ("saved_model",)

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

    tuner: str | None = None
    max_trials: int = 10
    tune_epochs: int = 3
    tune_dir: str | None = None
    tune_space: str | None = None
    hparams: str | None = None

    def __post_init__(self):
        if self.tuner not in (None, *TUNERS):
            raise ConfigError(
                f"`tuner` must be one of {', '.join(TUNERS)}. Received: tuner={self.tuner!r}"
            )
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

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    tune: TuneConfig = TuneConfig()

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text, source="the config"):
        """The `RunConfig` that `to_json` (or a run's `config.json`) wrote:
        `RunConfig.from_json(config.to_json()) == config`. Top-level entries
        that are not sections (`config.json`'s "ingested") are ignored."""
        try:
            recorded = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source} is not JSON ({error}); pass a run's config.json") from None
        sections = {field.name: field.type for field in dataclasses.fields(cls)}
        if not isinstance(recorded, dict) or not set(sections) & set(recorded):
            raise ConfigError(f"{source} holds no settings; pass a run's config.json")
        parts = {}
        for name, section_class in sections.items():
            settings = recorded.get(name, {})
            known = {field.name for field in dataclasses.fields(section_class)}
            unknown = sorted(set(settings) - known)
            if unknown:
                raise ConfigError(
                    f"{source} has settings this version does not know: "
                    f"{', '.join(f'{name}.{key}' for key in unknown)}; remove them"
                )
            # JSON has no tuples: image_size and export_formats come back as lists.
            parts[name] = section_class(**{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in settings.items()
            })
        return cls(**parts)
