"""TF Serving's base path: a SavedModel per numbered version directory.

    saved_models/alexnet/1/saved_model.pb, variables/, assets.extra/

Only directories named by an integer are versions; `resolve_saved_model`
takes a version directory or a base path (its newest version).

`read_weights` and `read_export_info` read an export of this package as data:
loading a SavedModel (`tf.saved_model.load`) runs code it holds (a TF2
model's resource initializers, a TF1 model's main op) before anything can be
checked, so a version that someone else may have put there is only parsed.
"""

import errno
import json
import os
import re
import stat

import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.core.protobuf import trackable_object_graph_pb2

from pipeline.errors import PipelineError
from pipeline.errors import first_line
from pipeline.storage import atomic

# What the export writes beside the graph to rebuild its model without running
# it: {"config": the AlexNet's Keras config, "class_names": [...],
# "image_limits": {"max_pixels", "max_aspect_ratio"}} (older exports: no limits).
EXPORT_INFO_FILE = os.path.join("assets.extra", "alexnet_keras.json")
# An export's graph is about 0.3 MB and its info a few kB (ImageNet's 1000
# class names, 30 kB); an index lists a few hundred tensors.
MAX_GRAPH_BYTES = 64 * 2**20
MAX_INFO_BYTES = 4 * 2**20
# Bounds on the variables read: the paper's AlexNet with 1000 classes has
# 62,378,344 parameters (250 MB), held twice in an export.
MAX_TENSOR_ELEMENTS = 2**31
MAX_TOTAL_BYTES = 4 * 2**30
_CHECKPOINT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"
# What the checkpoint reader raises for a damaged file: an `OpError`, or an
# `IndexError` for a data file shorter than its index says.
_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError)


def _numbered(export_dir):
    """{version: entry name} of the entries of `export_dir` TF Serving reads as
    versions: names of ASCII digits ("007" is version 7, "²" none); files too."""
    if not tf.io.gfile.isdir(export_dir):
        return {}
    numbered = {}
    for name in sorted(name.rstrip("/") for name in tf.io.gfile.listdir(export_dir)):
        if re.fullmatch(r"[0-9]{1,18}", name):
            numbered.setdefault(int(name), name)
    return numbered


def version_dirs(export_dir):
    """{version: its directory} of the numbered versions in `export_dir`,
    ascending; a file with a version's name is no version."""
    return {version: os.path.join(export_dir, name)
            for version, name in sorted(_numbered(export_dir).items())
            if tf.io.gfile.isdir(os.path.join(export_dir, name))}


def versions(export_dir):
    """The integer version numbers present in `export_dir`, ascending."""
    return list(version_dirs(export_dir))


def next_version(export_dir):
    """The number the next export takes: above every numbered entry, files and
    stray names included, so the new version's name is free."""
    return max(_numbered(export_dir), default=0) + 1


def resolve_saved_model(path):
    """A version directory as given, or the newest version of a base directory."""
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = version_dirs(path)
    if not found:
        raise PipelineError(
            f"{path} is neither a SavedModel nor a directory of numbered versions; "
            "pass a version directory such as saved_models/alexnet/1 or its parent"
        )
    return found[max(found)]


def _file_size(path, limit=None):
    """The size of the regular file at `path`, refused when it is something else
    (a FIFO would block its reader) or over `limit` bytes."""
    try:
        if atomic.is_local(path):
            status = os.stat(path)
            regular, size = stat.S_ISREG(status.st_mode), status.st_size
        else:
            status = tf.io.gfile.stat(path)
            regular, size = not status.is_directory, status.length
    except (OSError, tf.errors.OpError) as error:
        reason = getattr(error, "strerror", None) or first_line(error)
        raise PipelineError(f"cannot read {path} ({reason})") from None
    if not regular:
        raise PipelineError(f"{path} is not a regular file")
    if limit is not None and size > limit:
        raise PipelineError(f"{path} is over {limit:,} bytes, not a file this package wrote")
    return size


def _read_bounded(path, limit):
    """The bytes of the regular file at `path`, at most `limit` of them."""
    if not atomic.is_local(path):
        _file_size(path, limit)
        try:
            with tf.io.gfile.GFile(path, "rb") as file:
                data = file.read(limit + 1)
        except tf.errors.OpError as error:
            raise PipelineError(f"cannot read {path} ({first_line(error)})") from None
    else:
        try:
            data = atomic.read_regular_file(path, limit)
        except OSError as error:
            if error.errno == errno.EINVAL:
                raise PipelineError(f"{path} is not a regular file") from None
            if error.errno != errno.EFBIG:
                raise PipelineError(f"cannot read {path} ({error.strerror})") from None
            data = None
    if data is None or len(data) > limit:
        raise PipelineError(f"{path} is over {limit:,} bytes, not a file this package wrote")
    return data


def _variable_nodes(version_dir):
    """`{node id: (name, shape)}` of the variables in the object graph of the
    `serve` MetaGraph of `version_dir`'s saved_model.pb."""
    path = os.path.join(version_dir, "saved_model.pb")
    if not tf.io.gfile.exists(path):
        raise PipelineError(f"{version_dir} is not a SavedModel: it has no saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(_read_bounded(path, MAX_GRAPH_BYTES))
    except message.DecodeError:
        raise PipelineError(f"{path} is not a SavedModel: it does not parse as one") from None
    serving = [graph for graph in saved_model.meta_graphs if "serve" in graph.meta_info_def.tags]
    if not serving:
        raise PipelineError(f"{version_dir} is not a SavedModel for serving: no MetaGraph "
                            "is tagged serve")
    if not serving[0].object_graph_def.nodes:
        raise PipelineError(f"{version_dir} is not a SavedModel this package exported: a TF1 "
                            "graph, without TF2's object graph")
    nodes = {
        node_id: (node.variable.name, [dim.size for dim in node.variable.shape.dim])
        for node_id, node in enumerate(serving[0].object_graph_def.nodes)
        if node.WhichOneof("kind") == "variable"
    }
    if not nodes:
        raise PipelineError(f"{version_dir} is not a SavedModel this package exported: it "
                            "holds no variables")
    return nodes


def _open_checkpoint(version_dir):
    """A reader of `version_dir`'s variables, its files checked first."""
    prefix = os.path.join(version_dir, "variables", "variables")
    _file_size(f"{prefix}.index", MAX_GRAPH_BYTES)
    # The data files hold the tensors, bounded below, and the object graph.
    shards = tf.io.gfile.glob(f"{prefix}.data-*")
    if sum(_file_size(shard) for shard in shards) > MAX_TOTAL_BYTES + MAX_GRAPH_BYTES:
        raise PipelineError(f"{version_dir} holds over {MAX_TOTAL_BYTES:,} bytes of "
                            "variables, not an export of this package")
    try:
        # Not `tf.train.load_checkpoint`, which takes `ram://.../variables/variables`
        # for a directory (the prefix of files) and looks for a checkpoint in it.
        reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor(_CHECKPOINT_GRAPH))
    except (*_READ_ERRORS, message.DecodeError) as error:
        raise PipelineError(f"{version_dir} is not a complete SavedModel: its variables "
                            f"cannot be read ({first_line(error)})") from None
    return reader, graph


def read_weights(version_dir):
    """Every variable of the SavedModel in `version_dir` as `{"<layer>/<weight>":
    array}`, read as data: nothing in the SavedModel is run.

    Names come from the object graph of its `serve` MetaGraph (Keras names a
    layer's variables "<layer>/<weight>"), values from its checkpoint, where
    the object graph's node ids are the checkpoint's own. Sizes are checked
    before anything is read. Raises `PipelineError` naming what `version_dir`
    is not: a SavedModel, a TF2 one (a TF1 graph runs its main op when
    loaded), or within the size bounds.
    """
    nodes = _variable_nodes(version_dir)
    reader, graph = _open_checkpoint(version_dir)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    keys = {}
    for node_id, (name, shape) in nodes.items():
        attributes = graph.nodes[node_id].attributes if node_id < len(graph.nodes) else ()
        key = next((attribute.checkpoint_key for attribute in attributes
                    if attribute.name == "VARIABLE_VALUE"), None)
        if key not in shapes or shapes[key] != shape:
            raise PipelineError(f"{version_dir} is not a SavedModel this package exported: "
                                f"its checkpoint holds no value of shape {shape} for {name}")
        dtype = tf.as_dtype(dtypes[key])
        if not (dtype.is_floating or dtype.is_integer or dtype.is_bool):
            raise PipelineError(f"{version_dir} is not a SavedModel this package exported: "
                                f"{name} is a {dtype.name} variable")
        elements = 1
        for size in shape:
            elements *= size
        if elements > MAX_TENSOR_ELEMENTS:
            raise PipelineError(f"{version_dir} is not a SavedModel this package exported: "
                                f"{name} has shape {shape}, over {MAX_TENSOR_ELEMENTS:,} "
                                "elements")
        keys[key] = (name, elements * dtype.size)
    total = sum(size for _, size in keys.values())
    if total > MAX_TOTAL_BYTES:
        raise PipelineError(f"{version_dir} is not a SavedModel this package exported: its "
                            f"variables hold {total:,} bytes, over {MAX_TOTAL_BYTES:,}")
    weights = {}
    for key, (name, _) in keys.items():
        try:
            value = reader.get_tensor(key)
        except _READ_ERRORS as error:
            raise PipelineError(f"{version_dir} is not a complete SavedModel: {name} cannot "
                                f"be read ({first_line(error)})") from None
        # Keras exports track each variable twice, under the same name; a
        # SavedModel whose two copies differ is not one of them.
        if name in weights and not np.array_equal(weights[name], value, equal_nan=True):
            raise PipelineError(f"{version_dir} is not a SavedModel this package exported: "
                                f"it holds two different values for {name}")
        weights[name] = value
    return weights


def read_export_info(version_dir):
    """The `{"config": ..., "class_names": [...]}` an export of this package
    keeps in `assets.extra/alexnet_keras.json`, None if `version_dir` has
    none; `PipelineError` if it is not such a file."""
    path = os.path.join(version_dir, EXPORT_INFO_FILE)
    if not tf.io.gfile.exists(path):
        return None
    try:
        info = json.loads(_read_bounded(path, MAX_INFO_BYTES).decode("utf-8"))
    except (ValueError, RecursionError):
        raise PipelineError(f"{path} is not JSON in UTF-8") from None
    if not (isinstance(info, dict) and isinstance(info.get("config"), dict)
            and isinstance(info.get("class_names"), list)
            and all(isinstance(name, str) for name in info["class_names"])):
        raise PipelineError(f"{path} does not hold a model's config and class names")
    return info
