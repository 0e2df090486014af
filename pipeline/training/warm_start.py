"""Warm starts: a new run's first weights from an earlier model, and layers held fixed.

    python -m pipeline.run --dataset folder:flowers --init-from runs/digits --freeze conv5

`--init-from` takes a `.keras` file, a run directory (its newest checkpoint),
a SavedModel this package exported (a version directory, or its base directory
for the newest version), whose weights are read from its checkpoint without
loading it (which would run code it holds), or a torchvision AlexNet state
dict (`.pth`, such as the published ImageNet `alexnet-owt-7be5be79.pth`; read
as tensors only, for `--variant torchvision`). Every layer is loaded by name; fc8 is left new when
the class counts differ, which is how a model trained on one dataset is
fine-tuned on another. `--freeze` keeps the layers up to the one it names
fixed (BatchNormalization among them then uses its moving statistics).
"""

import dataclasses
import json
import logging
import os

import keras
import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow.core.protobuf import trackable_object_graph_pb2

from alexnet_keras import alexnet
from alexnet_keras import torchvision_weights
from pipeline import config as config_lib
from pipeline import json_values
from pipeline.errors import first_line
from pipeline.training import models
from pipeline.storage import saved_models
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

_HEAD = alexnet.WEIGHT_LAYERS[-1]


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """What `load` did: the source, and the layers it loaded or left new, by name."""

    source: str
    loaded: tuple[str, ...]
    new: tuple[str, ...]


def _from_keras_file(path):
    model = models.load_model_file(path, "init_from")
    weights = {weight.path: keras.ops.convert_to_numpy(weight) for weight in model.weights}
    return weights, model.variant, (model.initializer, model.pixel_scale)


def _from_saved_model(path):
    # Read as data, never loaded: loading runs code a SavedModel holds.
    version_dir = saved_models.resolve_saved_model(path)
    try:
        info = saved_models.read_export_info(version_dir)
        weights = saved_models.read_weights(version_dir)
    except PipelineError as error:
        raise PipelineError(f"`init_from` {error}; pass a .keras file, a run directory or "
                            "a SavedModel this package exported") from None
    # Exports older than alexnet_keras.json do not record the variant: only
    # the shapes are checked then.
    config = info["config"] if info else {}
    pixels = (config.get("initializer"), config["pixel_scale"]) if "pixel_scale" in config else None
    return weights, config.get("variant"), pixels


def _from_torch_state_dict(path):
    try:
        state = torchvision_weights.read_state_dict(path)
        torchvision_weights.check_state_dict(state, path)
    except ValueError as error:
        raise PipelineError(f"`init_from` {error}") from None
    weights = {}
    for layer, (kernel, bias) in torchvision_weights.keras_weights(state).items():
        weights[f"{layer}/kernel"], weights[f"{layer}/bias"] = kernel, bias
    return weights, "torchvision", None


def _from_run_dir(path):
    checkpoint = tf.train.latest_checkpoint(os.path.join(path, "checkpoints"))
    config_path = os.path.join(path, "config.json")
    fix = "pass a run directory, a .keras file or a SavedModel"
    if checkpoint is None or not tf.io.gfile.exists(config_path):
        raise PipelineError(
            f"`init_from` {path} is a directory without a run's checkpoints and "
            f"config.json; {fix}"
        )
    # The run's config.json, checked as --config is.
    recorded = json_values.parse_object(json_values.read_text(config_path, "init_from", fix),
                                        config_path, fix)
    if "model" not in recorded:
        raise PipelineError(f"`init_from` {config_path} has no `model` settings; {fix}")
    # Only the model's settings matter here (another version's other sections
    # may differ), and "ingested", which marks a run's record.
    settings = config_lib.sections_from_json(json.dumps({
        key: recorded[key] for key in ("model", "ingested") if key in recorded
    }), config_path)["model"]
    # The checkpoint knows layers by position, which the run's variant and
    # normalization fix; its image size and class count only change shapes,
    # which are read from the checkpoint: the source is built at the smallest
    # size, so a config.json naming a huge image allocates nothing.
    size = alexnet.minimum_input_size(settings.variant)
    source = alexnet.AlexNet(
        variant=settings.variant, num_classes=1,
        input_shape=(size, size, settings.channels or 3),
        normalization=settings.normalization,
    )
    try:
        reader = tf.train.load_checkpoint(checkpoint)
        shapes = reader.get_variable_to_shape_map()
        elements = sum(int(np.prod(shape)) for shape in shapes.values())
        if elements > saved_models.MAX_TOTAL_BYTES // 4:
            raise PipelineError(f"`init_from` {checkpoint} holds {elements:,} values, more "
                                f"than any AlexNet; {fix}")
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))

        def children(node_id):
            return {child.local_name: child.node_id for child in graph.nodes[node_id].children}

        # The checkpoint holds the model as its "model" object; each layer is
        # an operation of it, by position, and each weight a child of that.
        operations = children(children(children(0)["model"])["_operations"])
        weights = {}
        for index, layer in enumerate(source.layers):
            if str(index) not in operations:
                continue
            for name, node_id in children(operations[str(index)]).items():
                for attribute in graph.nodes[node_id].attributes:
                    # Keras keeps a kernel as `_kernel` (behind its LoRA property).
                    weights[f"{layer.name}/{name.lstrip('_')}"] = reader.get_tensor(
                        attribute.checkpoint_key
                    )
    except (tf.errors.OpError, IndexError, KeyError, ValueError, message.DecodeError) as error:
        raise PipelineError(f"`init_from` {checkpoint} cannot be read as a run's checkpoint "
                            f"({first_line(error)[:200]}); {fix}") from None
    initializer = settings.initializer or alexnet.default_initializer(settings.variant)
    return weights, settings.variant, (
        initializer, alexnet.default_pixel_scale(settings.variant, initializer))


def source_weights(path):
    """Every weight of the model at `path`, as `{"<layer>/<weight>": array}`,
    its AlexNet variant and its `(initializer, pixel_scale)`, each where the
    source records it (else None)."""
    if str(path).endswith(".keras"):
        if not tf.io.gfile.exists(path):
            raise PipelineError(f"`init_from` {path} does not exist; pass an existing "
                                ".keras file")
        return _from_keras_file(path)
    if str(path).endswith((".pth", ".pt")):
        return _from_torch_state_dict(path)
    if not tf.io.gfile.isdir(path):
        raise PipelineError(
            f"`init_from` {path} is neither a .keras file, a .pth state dict nor a "
            "directory; pass a .keras file, torchvision's .pth, a run directory or a SavedModel"
        )
    if tf.io.gfile.exists(os.path.join(path, "checkpoints")):
        return _from_run_dir(path)
    return _from_saved_model(path)


def load(model, path, source=None):
    """Sets `model`'s weights from the model at `path`, layer by layer.

    fc8 stays as initialised when its shape differs (another class count);
    any other layer that is missing or of another shape raises `PipelineError`
    naming the first one, since the source is then another architecture.
    `source` is `source_weights(path)` when the caller already read it (a
    search loads the same source into every trial).
    """
    weights, variant, pixels = source or source_weights(path)
    if variant is not None and variant != model.variant:
        # At some input sizes every shape matches, but the variants scale
        # pixels differently and only "paper" has LRN.
        raise PipelineError(
            f"`init_from` {path} is a {variant!r} AlexNet and this run trains a "
            f"{model.variant!r} one; use variant={variant!r} or another source"
        )
    if pixels is not None and not np.allclose(pixels[1], model.pixel_scale):
        # Weights learnt on 0-255 pixels are wrong on [-1, 1] ones.
        initializer = pixels[0] or alexnet.default_initializer(model.variant)
        raise PipelineError(
            f"`init_from` {path} takes pixels scaled by {np.round(pixels[1], 6)} (initializer="
            f"{initializer!r}) and this run's model by {np.round(model.pixel_scale, 6)} "
            f"(initializer={model.initializer!r}); use initializer={initializer!r}, "
            "as the source did"
        )
    loaded, new = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        values = [weights.get(weight.path) for weight in layer.weights]
        fits = [value is not None and tuple(value.shape) == tuple(weight.shape)
                for weight, value in zip(layer.weights, values)]
        if all(fits):
            layer.set_weights(values)
            loaded.append(layer.name)
        elif layer.name == _HEAD:
            new.append(layer.name)
        else:
            weight, value = next((weight, value) for weight, value, fit
                                 in zip(layer.weights, values, fits) if not fit)
            found = "no such weight" if value is None else f"shape {tuple(value.shape)}"
            raise PipelineError(
                f"`init_from` {path} does not fit this model: {weight.path} has "
                f"{found} there and shape {tuple(weight.shape)} here; start from a model "
                "of the same `variant`, `normalization`, `channels` and `image_size`"
            )
    log.info("Initialised from %s: loaded %s%s", path, ", ".join(loaded),
             f"; new: {', '.join(new)} (another number of classes)" if new else "")
    return WarmStart(str(path), tuple(loaded), tuple(new))


def freeze(model, up_to):
    """Makes the layers of `model` up to the one named `up_to` (included) not
    trainable; call it before the optimizer is built."""
    names = [layer.name for layer in model.layers]
    if up_to not in names:
        raise PipelineError(
            f"`freeze` {up_to} is not a layer of this {model.variant!r} AlexNet; use one of "
            f"{', '.join(name for name in alexnet.WEIGHT_LAYERS[:-1] if name in names)}")
    for layer in model.layers[:names.index(up_to) + 1]:
        layer.trainable = False
    log.info("Frozen: the layers up to %s", up_to)
