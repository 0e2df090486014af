"""Reading an export as data (`read_weights`, `read_export_info`): the Keras
model's exact weights by name, and a one-line refusal, with nothing run, of
whatever else a version directory may hold."""

import json
import os
import shutil

import numpy as np
import pytest
from tensorflow.core.protobuf import saved_model_pb2

import crafted_models
import testlib
from alexnet_keras import AlexNet
from pipeline.errors import PipelineError
from pipeline.serving import builder
from pipeline.storage import saved_models


def refusal(version_dir):
    """The message `read_weights(version_dir)` refuses it with, checked to be one line."""
    with pytest.raises(PipelineError) as error:
        saved_models.read_weights(str(version_dir))
    message = str(error.value)
    assert "\n" not in message
    return message


def test_an_export_holds_the_keras_models_weights_by_name(trained_export, fitted_weights,
                                                          digits):
    model = testlib.digits_model(fitted_weights)

    weights = saved_models.read_weights(trained_export)

    for weight in model.weights:
        np.testing.assert_array_equal(weights[weight.path], weight.numpy(), weight.path)
    # Besides them, only the states of the two dropout layers' seed generators.
    others = set(weights) - {weight.path for weight in model.weights}
    assert len(others) == 2 and all(name.endswith("/seed_generator_state") for name in others)
    assert saved_models.read_export_info(trained_export) == {
        "config": model.get_config(), "class_names": list(digits.class_names),
        "image_limits": {"max_pixels": 50_000_000, "max_aspect_ratio": 20}}


def test_an_export_on_another_file_system_is_read_too(tmp_path):
    model = AlexNet(variant="paper", num_classes=3, input_shape=(67, 67, 3))
    version_dir = builder.export_saved_model(model, ["a", "b", "c"], f"ram://{tmp_path}/alexnet")

    weights = saved_models.read_weights(version_dir)

    for weight in model.weights:
        np.testing.assert_array_equal(weights[weight.path], weight.numpy(), weight.path)
    assert saved_models.read_export_info(version_dir)["class_names"] == ["a", "b", "c"]


@pytest.mark.parametrize("kind, message", [
    ("tf2", "is not a SavedModel this package exported: it holds no variables"),
    ("tf1", "is not a SavedModel this package exported: a TF1 graph"),
])
def test_a_savedmodel_that_runs_code_when_loaded_is_refused_unrun(tmp_path, kind, message):
    path, marker = crafted_models.dangerous(kind, str(tmp_path / kind))

    assert refusal(path) == f"{path} {message}" + (
        ", without TF2's object graph" if kind == "tf1" else "")
    assert saved_models.read_export_info(path) is None
    assert not os.path.exists(marker)


def test_the_variables_of_a_savedmodel_are_read_without_running_it(tmp_path):
    path = str(tmp_path / "tf2")
    kernel = np.arange(6, dtype=np.float32).reshape(2, 3)
    crafted_models.writes_on_load_tf2(path, f"{path}.marker", [("conv1/kernel", kernel)])

    weights = saved_models.read_weights(path)

    assert list(weights) == ["conv1/kernel"]
    np.testing.assert_array_equal(weights["conv1/kernel"], kernel)
    assert not os.path.exists(f"{path}.marker")


def test_two_values_under_one_name_are_refused(tmp_path):
    path = str(tmp_path / "tf2")
    crafted_models.writes_on_load_tf2(path, f"{path}.marker", [
        ("fc8/bias", np.zeros(3, np.float32)), ("fc8/bias", np.ones(3, np.float32))])
    assert refusal(path).endswith("it holds two different values for fc8/bias")


@pytest.fixture()
def export_copy(tmp_path, trained_export):
    """A copy of the trained export, the test's own to damage."""
    path = tmp_path / "1"
    shutil.copytree(trained_export, path)
    return path


def test_what_is_not_a_savedmodel_is_named(export_copy):
    graph = export_copy / "saved_model.pb"
    graph.write_bytes(b"\xff" * 100)
    assert refusal(export_copy) == f"{graph} is not a SavedModel: it does not parse as one"
    os.remove(graph)
    assert refusal(export_copy) == f"{export_copy} is not a SavedModel: it has no saved_model.pb"
    # A FIFO would block a reader that opened it: it is refused, not read.
    os.mkfifo(graph)
    assert refusal(export_copy) == f"{graph} is not a regular file"
    os.remove(graph)
    with open(graph, "wb") as file:
        file.truncate(saved_models.MAX_GRAPH_BYTES + 1)
    assert refusal(export_copy) == (f"{graph} is over {saved_models.MAX_GRAPH_BYTES:,} "
                                    "bytes, not a file this package wrote")


def test_a_savedmodel_without_a_serving_graph_is_named(export_copy):
    graph = export_copy / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(graph.read_bytes())
    saved_model.meta_graphs[0].meta_info_def.tags[:] = ["train"]
    graph.write_bytes(saved_model.SerializeToString())
    assert refusal(export_copy) == (f"{export_copy} is not a SavedModel for serving: no "
                                    "MetaGraph is tagged serve")


def test_missing_or_damaged_variables_are_named(export_copy):
    variables = export_copy / "variables"
    (data,) = variables.glob("variables.data-*")
    data.write_bytes(data.read_bytes()[:1000])
    assert refusal(export_copy).startswith(f"{export_copy} is not a complete SavedModel: ")
    shutil.rmtree(variables)
    assert refusal(export_copy).startswith(f"cannot read {variables}/variables.index ")


def test_sizes_are_bounded_before_anything_is_read(export_copy, monkeypatch):
    # The bounds are lowered under the digits model's size (86 MB, held twice;
    # fc7's kernel has 4096 x 4096 elements) rather than gigabytes written.
    monkeypatch.setattr(saved_models, "MAX_TENSOR_ELEMENTS", 4096 * 4096 - 1)
    assert refusal(export_copy) == (
        f"{export_copy} is not a SavedModel this package exported: fc7/kernel has shape "
        f"[4096, 4096], over {4096 * 4096 - 1:,} elements")
    monkeypatch.setattr(saved_models, "MAX_TENSOR_ELEMENTS", 2**31)
    # The variables' data files, and apart from them the shapes in the index
    # (which a crafted index could make larger than its data).
    monkeypatch.setattr(saved_models, "MAX_TOTAL_BYTES", 2**20)
    assert refusal(export_copy) == (f"{export_copy} holds over {2**20:,} bytes of variables, "
                                    "not an export of this package")
    monkeypatch.setattr(saved_models, "MAX_GRAPH_BYTES", 2**30)
    assert refusal(export_copy).startswith(
        f"{export_copy} is not a SavedModel this package exported: its variables hold ")
    assert refusal(export_copy).endswith(f" bytes, over {2**20:,}")


@pytest.mark.parametrize("content, message", [
    (b"\xff{", "is not JSON in UTF-8"),
    (b"[" * 100_000, "is not JSON in UTF-8"),
    (json.dumps({"config": {}, "class_names": [1, 2]}).encode(),
     "does not hold a model's config and class names"),
    (b" " * (saved_models.MAX_INFO_BYTES + 1), "is over 4,194,304 bytes"),
])
def test_export_info_that_is_not_ours_is_named(export_copy, content, message):
    path = export_copy / saved_models.EXPORT_INFO_FILE
    path.write_bytes(content)
    with pytest.raises(PipelineError) as error:
        saved_models.read_export_info(str(export_copy))
    assert str(error.value).startswith(f"{path} {message}")
