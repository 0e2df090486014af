import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import crafted_models
import testlib
from alexnet_keras import AlexNet
from pipeline.cli import main as cli
from pipeline.serving import blessing
from pipeline.serving import builder
from pipeline.evaluation import metrics as evaluation
from pipeline.storage import saved_models
from pipeline.data import ingest
from pipeline.config import DataConfig


def copy_of_the_export(trained_export, tmp_path):
    """A base directory whose newest version (1) is the trained model."""
    base = tmp_path / "alexnet"
    shutil.copytree(trained_export, base / "1")
    return str(base)


def test_the_first_model_is_always_blessed(tmp_path, digits):
    ingested = digits
    result = blessing.bless(
        0.1, str(tmp_path / "alexnet"), ingested, 0.01, False
    )
    assert result == blessing.Blessing(True, result.reason, 0.1, None, None)
    assert "first model" in result.reason


def test_a_worse_model_is_not_pushed_unless_forced(
    tmp_path, digits, trained_metrics, trained_export, fitted_weights
):
    ingested = digits
    export_dir = copy_of_the_export(trained_export, tmp_path)
    worse = testlib.worse_model(fitted_weights)
    candidate = evaluation.evaluate(worse, ingested, str(tmp_path / "run"))
    assert candidate["test_accuracy"] < 0.2

    result = blessing.bless(
        candidate["test_accuracy"], export_dir, ingested, 0.01, False
    )
    assert result.blessed is False
    assert result.baseline_version == 1
    # The served version, measured now through its own signature, scores what the
    # trained Keras model scored.
    assert result.baseline_accuracy == pytest.approx(
        trained_metrics[0]["test_accuracy"]
    )
    assert (
        "below version 1's" in result.reason and "`force_push`" in result.reason
    )
    assert saved_models.versions(export_dir) == [1]

    forced = blessing.bless(
        candidate["test_accuracy"], export_dir, ingested, 0.01, True
    )
    assert forced.blessed is True and "forced" in forced.reason
    assert forced.baseline_accuracy == result.baseline_accuracy
    pushed = builder.export_saved_model(
        worse, list(ingested.class_names), export_dir
    )
    assert os.path.basename(pushed) == "2"


def test_tolerance_decides_near_ties(
    tmp_path, digits, trained_metrics, trained_export
):
    ingested = digits
    export_dir = copy_of_the_export(trained_export, tmp_path)
    baseline = trained_metrics[0]["test_accuracy"]
    equal = blessing.bless(baseline, export_dir, ingested, 0.0, False)
    assert equal.blessed is True
    slightly_worse = blessing.bless(
        baseline - 0.005, export_dir, ingested, 0.01, False
    )
    assert slightly_worse.blessed is True
    assert (
        blessing.bless(
            baseline - 0.02, export_dir, ingested, 0.01, False
        ).blessed
        is False
    )


def test_an_export_for_other_classes_is_not_compared(
    tmp_path, digits, capsys, monkeypatch
):
    ingested = digits
    monkeypatch.chdir(tmp_path)  # the command line ingests into ./data/digits
    export_dir = str(tmp_path / "alexnet")
    other = AlexNet(variant="paper", num_classes=3, input_shape=(67, 67, 3))
    builder.export_saved_model(other, ["cat", "dog", "fox"], export_dir)

    result = blessing.bless(0.9, export_dir, ingested, 0.01, False)
    assert result.blessed is False and result.baseline_accuracy is None
    assert "cannot be compared" in result.reason
    forced = blessing.bless(0.9, export_dir, ingested, 0.01, True)
    assert forced.blessed is True and "forced" in forced.reason

    exit_code = cli.main(
        "evaluate", ["--saved-model", export_dir, "--dataset", "digits", "--output-dir", "out"]
    )
    assert exit_code == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m pipeline.evaluate: error: ")
    assert "has 3 classes but digits has 10" in error and error.count("\n") == 1


def _other_kind(version_dir):
    """A SavedModel of another kind: its serving_default takes float features."""
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.serve = tf.function(lambda x: {"y": x * module.scale},
                               input_signature=[tf.TensorSpec([None, 4], tf.float32, "x")])
    tf.saved_model.save(module, version_dir, signatures={"serving_default": module.serve})


def test_a_baseline_that_cannot_be_scored_is_named_and_never_crashes(
    tmp_path, digits, trained_metrics, trained_export
):
    export_dir = copy_of_the_export(trained_export, tmp_path)
    good = trained_metrics[0]["test_accuracy"]
    _other_kind(os.path.join(export_dir, "2"))
    # A half-copied version: its variables and assets.extra, no saved_model.pb.
    for part in ("variables", "assets.extra"):
        shutil.copytree(os.path.join(trained_export, part), os.path.join(export_dir, "3", part))
    for newest, problem in (
        (2, f"not an alexnet-keras export: {export_dir}/2 has no "
            "assets.extra/alexnet_keras.json"),
        (3, f"not an alexnet-keras export: {export_dir}/3 is not a SavedModel: it has no "
            "saved_model.pb"),
    ):
        kept = os.path.join(tmp_path, "kept")
        if newest == 2:
            shutil.move(os.path.join(export_dir, "3"), kept)
        else:
            shutil.move(kept, os.path.join(export_dir, "3"))
        result = blessing.bless(good, export_dir, digits, 0.01, False)
        assert result.blessed is False
        assert result.baseline_version == newest and result.baseline_accuracy is None
        assert result.reason.startswith(f"the served version {newest} cannot be compared: ")
        assert problem in result.reason and "`force_push`" in result.reason
        assert any(item.startswith(f"version {newest}: ") for item in result.unscored)
        # Version 1 was still scored, and is the best kept.
        assert result.best_version == 1 and result.best_accuracy == pytest.approx(good)
        forced = blessing.bless(good, export_dir, digits, 0.01, True)
        assert forced.blessed is True and forced.unscored == result.unscored


@pytest.mark.parametrize("kind", ["tf2", "tf1"])
@pytest.mark.parametrize("with_info", [False, True])
def test_a_version_that_runs_code_when_loaded_is_never_run(
    tmp_path, digits, trained_metrics, trained_export, kind, with_info
):
    export_dir = copy_of_the_export(trained_export, tmp_path)
    version_2 = os.path.join(export_dir, "2")
    _, marker = crafted_models.dangerous(kind, version_2)
    if with_info:
        # Passing itself off as an export of this package.
        shutil.copytree(os.path.join(trained_export, "assets.extra"),
                        os.path.join(version_2, "assets.extra"))
        problem = f"{version_2} is not a SavedModel this package exported"
    else:
        problem = f"{version_2} has no assets.extra/alexnet_keras.json"

    result = blessing.bless(trained_metrics[0]["test_accuracy"], export_dir, digits, 0.01,
                            False)

    assert not os.path.exists(marker)
    (unscored,) = result.unscored
    assert unscored.startswith(f"version 2: not an alexnet-keras export: {problem}")
    assert result.blessed is False and result.baseline_version == 2
    assert "the served version 2 cannot be compared: not an alexnet-keras export" in (
        result.reason)
    # The real export beside it scores what the trained Keras model scored.
    assert result.best_version == 1
    assert result.best_accuracy == pytest.approx(trained_metrics[0]["test_accuracy"])


@pytest.mark.parametrize("config, problem", [
    # A config that would need gigabytes of weights is refused unbuilt.
    ({"input_shape": [100_000, 100_000, 1]}, "weights are not its config's: fc6/kernel is "
                                             "float32 (256, 4096) there and float32 "),
    ({"input_shape": [100, 100, 1]}, "weights are not its config's: fc6/kernel"),
    ({"normalization": "batchnorm"}, "weights are not its config's: bn1/gamma is no such "
                                     "weight there"),
    ({"variant": "vgg"}, "config does not build an AlexNet (`variant` must be one of"),
    ({"dtype": {"class_name": "DTypePolicy", "config": {"name": "float64"}}},
     "config is not an AlexNet's"),
])
def test_an_export_whose_config_is_not_its_weights_is_not_scored(
    tmp_path, digits, trained_metrics, trained_export, config, problem
):
    export_dir = copy_of_the_export(trained_export, tmp_path)
    info_path = os.path.join(export_dir, "1", "assets.extra", "alexnet_keras.json")
    with open(info_path) as file:
        info = json.load(file)
    info["config"].update(config)
    with open(info_path, "w") as file:
        json.dump(info, file)

    result = blessing.bless(trained_metrics[0]["test_accuracy"], export_dir, digits, 0.01,
                            False)

    assert result.blessed is False and result.baseline_accuracy is None
    (unscored,) = result.unscored
    assert unscored.startswith(f"version 1: not an alexnet-keras export: {export_dir}/1")
    assert problem in unscored and "\n" not in unscored


def test_blessing_in_a_mixed_precision_run_leaves_its_policy_alone(
    tmp_path, digits, trained_metrics, trained_export
):
    # Versions are rebuilt in float32, as they are served, and the run's
    # policy is back in place afterwards. (On digits, bfloat16 happens to give
    # the same accuracy: only the policy tells the two apart here.)
    export_dir = copy_of_the_export(trained_export, tmp_path)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    result = blessing.bless(0.5, export_dir, digits, 0.01, False)
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert result.baseline_accuracy == pytest.approx(trained_metrics[0]["test_accuracy"])


@pytest.fixture()
def worse_version_2(tmp_path, digits, trained_export, fitted_weights):
    """A base directory holding the trained model as version 1 and, served as
    the newest, a much worse one as version 2."""
    export_dir = copy_of_the_export(trained_export, tmp_path)
    builder.export_saved_model(testlib.worse_model(fitted_weights), digits.class_names,
                               export_dir)
    return export_dir


def test_the_baseline_is_the_version_models_config_pins(
    tmp_path, digits, trained_metrics, worse_version_2
):
    export_dir = worse_version_2
    good = trained_metrics[0]["test_accuracy"]
    worse = blessing.bless(good, export_dir, digits, 0.01, False)
    assert worse.baseline_version == 2 and worse.baseline_accuracy < 0.2
    assert worse.best_version == 1 and worse.blessed is True

    (tmp_path / "models.config").write_text(
        'model_config_list { config { name: "alexnet" base_path: "/models/alexnet" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }'
    )
    pinned = blessing.bless(good, export_dir, digits, 0.01, False)
    assert pinned.baseline_version == 1
    assert pinned.baseline_accuracy == pytest.approx(good)


def test_a_chain_of_slightly_worse_models_stops_at_the_best_kept(
    digits, trained_metrics, worse_version_2
):
    export_dir = worse_version_2
    good = trained_metrics[0]["test_accuracy"]
    result = blessing.bless(good - 0.05, export_dir, digits, 0.01, False)
    assert result.blessed is False and result.baseline_version == 2
    assert f"below the best kept version 1's {good:.4f} minus the tolerance 0.01" in result.reason
    assert blessing.bless(good - 0.005, export_dir, digits, 0.01, False).blessed is True


def test_min_accuracy_is_a_floor_even_for_the_first_model(tmp_path, digits):
    export_dir = str(tmp_path / "alexnet")
    low = blessing.bless(0.5, export_dir, digits, 0.01, False, min_accuracy=0.9)
    assert low.blessed is False
    assert "test accuracy 0.5000 is below `min_accuracy` 0.9" in low.reason
    assert blessing.bless(0.95, export_dir, digits, 0.01, False, min_accuracy=0.9).blessed
    forced = blessing.bless(0.5, export_dir, digits, 0.01, True, min_accuracy=0.9)
    assert forced.blessed is True and "forced" in forced.reason


def test_the_baseline_is_scored_on_none_of_its_own_training_images(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)

    def add(names):
        for class_name in ("cat", "dog"):
            for name in names:
                pixels = rng.integers(0, 256, (8, 8, 3), np.uint8)
                os.makedirs(root / class_name, exist_ok=True)
                (root / class_name / name).write_bytes(testlib.encode(pixels, "png"))

    add([f"{index}.png" for index in range(60)])
    config = DataConfig(dataset=f"folder:{root}")
    first = ingest.ingest(config, str(tmp_path / "ingested"))
    model = AlexNet(variant="paper", num_classes=2, input_shape=(67, 67, 3))
    export_dir = str(tmp_path / "alexnet")
    builder.export_saved_model(model, first.class_names, export_dir)
    trained_on = {image for batch, _ in first.encoded_batches("train", 64) for image in batch}

    add([f"new{index}.png" for index in range(40)])
    grown = ingest.ingest(config, str(tmp_path / "ingested"))
    scored = {image for batch, _ in grown.encoded_batches("test", 64) for image in batch}
    result = blessing.bless(0.5, export_dir, grown, 0.01, False)
    assert result.baseline_version == 1 and result.baseline_accuracy is not None
    # The blessing scored version 1 on the grown ingest's test split, which
    # holds new images and none the version was trained on.
    assert len(scored) == grown.num_examples("test") > 0
    assert not scored & trained_on
    assert scored - {image for batch, _ in first.encoded_batches("test", 64) for image in batch}


def test_stray_entries_beside_the_versions_are_skipped_or_read_as_tf_serving_does(
    tmp_path, digits, trained_metrics, trained_export
):
    """`007` is TF Serving's version 7 (scored at its own path), `²` is no
    version (str.isdigit says it is), a plain file named 8 is no version but
    its name is taken, and a FIFO or non-UTF-8 models.config is passed over."""
    base = tmp_path / "alexnet"
    shutil.copytree(trained_export, base / "007")
    (base / "²").mkdir()
    (base / "8").write_text("not a version")
    assert saved_models.version_dirs(str(base)) == {7: str(base / "007")}
    assert saved_models.next_version(str(base)) == 9
    assert saved_models.resolve_saved_model(str(base)) == str(base / "007")
    for config in ("fifo", "latin-1"):
        path = tmp_path / "models.config"
        if path.exists():
            path.unlink()
        if config == "fifo":
            os.mkfifo(path)  # read, it would block forever
        else:
            path.write_bytes('model_config_list { config { name: "\xe9" } }'.encode("latin-1"))
        result = blessing.bless(0.5, str(base), digits, 0.01, False)
        assert result.baseline_version == 7
        assert result.baseline_accuracy == pytest.approx(trained_metrics[0]["test_accuracy"])
        assert not result.unscored
    version_dir = builder.export_saved_model(AlexNet(num_classes=3, input_shape=(67, 67, 3)),
                                             ["a", "b", "c"], str(base))
    assert version_dir == str(base / "9")
    assert sorted(os.listdir(base)) == ["007", "8", "9", "²"]
