import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from matplotlib import image as matplotlib_image
from sklearn import metrics as sklearn_metrics

import testlib
from alexnet_keras import AlexNet
from pipeline import cli
from pipeline import evaluate
from pipeline import export
from pipeline import ingest
from pipeline.config import DataConfig
from pipeline.config import PipelineError


@pytest.fixture(scope="module")
def trained_metrics(tmp_path_factory, digits, fitted_weights):
    """evaluate() of the trained Keras model, and the run directory it wrote."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    model = testlib.digits_model(fitted_weights)
    return evaluate.evaluate(model, digits, run_dir), run_dir


def assert_png(path):
    assert os.path.getsize(path) > 1000
    picture = matplotlib_image.imread(path)
    assert picture.ndim == 3 and min(picture.shape[:2]) > 100


def test_metrics_on_a_known_case():
    labels = np.array([0, 0, 1, 1, 2, 2])
    # Predicted: 0, 1, 1, 1, 2, 0.
    probabilities = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.3, 0.6, 0.1],
            [0.1, 0.7, 0.2],
            [0.2, 0.5, 0.3],
            [0.1, 0.1, 0.8],
            [0.5, 0.1, 0.4],
        ]
    )
    metrics = evaluate._metrics("test", labels, probabilities, ["a", "b", "c"])
    assert metrics["test_accuracy"] == pytest.approx(4 / 6)
    assert "test_top5_accuracy" not in metrics
    assert metrics["num_examples"] == 6
    assert metrics["per_class"] == {
        "a": {
            "precision": pytest.approx(1 / 2),
            "recall": pytest.approx(1 / 2),
            "support": 2,
        },
        "b": {
            "precision": pytest.approx(2 / 3),
            "recall": pytest.approx(1.0),
            "support": 2,
        },
        "c": {
            "precision": pytest.approx(1.0),
            "recall": pytest.approx(1 / 2),
            "support": 2,
        },
    }
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    with pytest.raises(
        PipelineError, match="3 class probabilities but the dataset has 4"
    ):
        evaluate._metrics("test", labels, probabilities, ["a", "b", "c", "d"])


def test_evaluate_a_predict_fn_agrees_with_sklearn(tmp_path, digits):
    ingested = digits

    def scores(image_bytes):
        # Arbitrary but fixed per image: a hash of its bytes.
        digest = hashlib.sha256(image_bytes).digest()
        return np.frombuffer(digest[:10], dtype=np.uint8).astype(np.float64) + 1

    def predict_fn(image_bytes):
        rows = np.stack([scores(image) for image in image_bytes.numpy()])
        return rows / rows.sum(axis=1, keepdims=True)

    encoded, labels = testlib.encoded_split(ingested, "test")
    probabilities = predict_fn(tf.constant(encoded))
    predictions = probabilities.argmax(axis=1)

    metrics = evaluate.evaluate(predict_fn, ingested, str(tmp_path))
    assert (
        metrics["num_examples"]
        == ingested.num_examples("test")
        == len(labels)
    )
    assert metrics["test_accuracy"] == pytest.approx(
        sklearn_metrics.accuracy_score(labels, predictions)
    )
    assert metrics["test_top5_accuracy"] == pytest.approx(
        sklearn_metrics.top_k_accuracy_score(
            labels, probabilities, k=5, labels=range(10)
        )
    )
    precision, recall, _, support = sklearn_metrics.precision_recall_fscore_support(
        labels, predictions, labels=range(10), zero_division=0
    )
    assert list(metrics["per_class"]) == list(ingested.class_names)
    for index, row in enumerate(metrics["per_class"].values()):
        assert row == {
            "precision": pytest.approx(precision[index]),
            "recall": pytest.approx(recall[index]),
            "support": support[index],
        }
    np.testing.assert_array_equal(
        metrics["confusion_matrix"],
        sklearn_metrics.confusion_matrix(labels, predictions, labels=range(10)),
    )
    assert_png(tmp_path / "confusion_matrix.png")
    assert_png(tmp_path / "misclassified.png")
    # Figure 3 needs the kernels, which only a Keras model has.
    assert not (tmp_path / "conv1_kernels.png").exists()


def test_evaluate_a_keras_model(trained_metrics, digits):
    metrics, run_dir = trained_metrics
    ingested = digits
    assert metrics["test_accuracy"] > 0.9
    assert metrics["test_top5_accuracy"] >= metrics["test_accuracy"]
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10)
    assert (
        matrix.sum()
        == metrics["num_examples"]
        == ingested.num_examples("test")
    )
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["test_accuracy"])
    assert [row["support"] for row in metrics["per_class"].values()] == matrix.sum(
        axis=1
    ).tolist()
    for name in ("confusion_matrix.png", "conv1_kernels.png", "misclassified.png"):
        assert_png(os.path.join(run_dir, name))


def test_cli_measures_the_export_through_its_own_signature(
    tmp_path, monkeypatch, trained_metrics, trained_export
):
    monkeypatch.chdir(tmp_path)  # the dataset is ingested into ./data/digits
    exit_code = cli.main(
        "evaluate", [
            "--saved-model",
            os.path.dirname(trained_export),
            "--dataset",
            "digits",
            "--output-dir",
            "out",
        ]
    )
    assert exit_code == 0
    assert (tmp_path / "data" / "digits" / "manifest.json").exists()
    with open(tmp_path / "out" / "evaluation.json") as file:
        metrics = json.load(file)
    # Encoded test images through the export's in-graph decoding and
    # preprocessing score exactly what the Keras model scored on the same split.
    keras_metrics = trained_metrics[0]
    assert metrics["test_accuracy"] == pytest.approx(keras_metrics["test_accuracy"])
    assert metrics["confusion_matrix"] == keras_metrics["confusion_matrix"]
    assert metrics["saved_model"].endswith(os.path.join("alexnet", "1"))
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert_png(tmp_path / "out" / name)


def test_cli_reuses_the_ingest_dir_it_is_given(
    tmp_path, monkeypatch, digits, trained_metrics, trained_export
):
    monkeypatch.chdir(tmp_path)
    ingested = digits
    exit_code = cli.main("evaluate", [
        "--saved-model", os.path.dirname(trained_export),
        "--ingest-dir", ingested.directory, "--output-dir", "out",
    ])
    assert exit_code == 0
    assert not (tmp_path / "data").exists()  # nothing ingested again
    with open(tmp_path / "out" / "evaluation.json") as file:
        metrics = json.load(file)
    assert metrics["test_accuracy"] == pytest.approx(trained_metrics[0]["test_accuracy"])


def test_cli_names_a_missing_export(tmp_path, capsys):
    exit_code = cli.main(
        "evaluate", ["--saved-model", str(tmp_path / "nothing"), "--dataset", "digits"]
    )
    assert exit_code == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m pipeline.evaluate: error: ")
    assert str(tmp_path / "nothing") in error and error.count("\n") == 1


def copy_of_the_export(trained_export, tmp_path):
    """A base directory whose newest version (1) is the trained model."""
    base = tmp_path / "alexnet"
    shutil.copytree(trained_export, base / "1")
    return str(base)


def test_the_first_model_is_always_blessed(tmp_path, digits):
    ingested = digits
    result = evaluate.bless(
        0.1, str(tmp_path / "alexnet"), ingested, 0.01, False
    )
    assert result == evaluate.Blessing(True, result.reason, 0.1, None, None)
    assert "first model" in result.reason


def test_a_worse_model_is_not_pushed_unless_forced(
    tmp_path, digits, trained_metrics, trained_export, fitted_weights
):
    ingested = digits
    export_dir = copy_of_the_export(trained_export, tmp_path)
    worse = testlib.worse_model(fitted_weights)
    candidate = evaluate.evaluate(worse, ingested, str(tmp_path / "run"))
    assert candidate["test_accuracy"] < 0.2

    result = evaluate.bless(
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
    assert export.versions(export_dir) == [1]

    forced = evaluate.bless(
        candidate["test_accuracy"], export_dir, ingested, 0.01, True
    )
    assert forced.blessed is True and "forced" in forced.reason
    assert forced.baseline_accuracy == result.baseline_accuracy
    pushed = export.export_saved_model(
        worse, list(ingested.class_names), export_dir
    )
    assert os.path.basename(pushed) == "2"


def test_tolerance_decides_near_ties(
    tmp_path, digits, trained_metrics, trained_export
):
    ingested = digits
    export_dir = copy_of_the_export(trained_export, tmp_path)
    baseline = trained_metrics[0]["test_accuracy"]
    equal = evaluate.bless(baseline, export_dir, ingested, 0.0, False)
    assert equal.blessed is True
    slightly_worse = evaluate.bless(
        baseline - 0.005, export_dir, ingested, 0.01, False
    )
    assert slightly_worse.blessed is True
    assert (
        evaluate.bless(
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
    export.export_saved_model(other, ["cat", "dog", "fox"], export_dir)

    result = evaluate.bless(0.9, export_dir, ingested, 0.01, False)
    assert result.blessed is False and result.baseline_accuracy is None
    assert "cannot be compared" in result.reason
    forced = evaluate.bless(0.9, export_dir, ingested, 0.01, True)
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
    # A half-copied version: its variables, no saved_model.pb.
    shutil.copytree(os.path.join(trained_export, "variables"),
                    os.path.join(export_dir, "3", "variables"))
    for newest, problem in ((2, "cannot be run on the test images"),
                            (3, "cannot be run on the test images")):
        kept = os.path.join(tmp_path, "kept")
        if newest == 2:
            shutil.move(os.path.join(export_dir, "3"), kept)
        else:
            shutil.move(kept, os.path.join(export_dir, "3"))
        result = evaluate.bless(good, export_dir, digits, 0.01, False)
        assert result.blessed is False
        assert result.baseline_version == newest and result.baseline_accuracy is None
        assert result.reason.startswith(f"the served version {newest} cannot be compared: ")
        assert problem in result.reason and "`force_push`" in result.reason
        assert any(item.startswith(f"version {newest}: ") for item in result.unscored)
        # Version 1 was still scored, and is the best kept.
        assert result.best_version == 1 and result.best_accuracy == pytest.approx(good)
        forced = evaluate.bless(good, export_dir, digits, 0.01, True)
        assert forced.blessed is True and forced.unscored == result.unscored


@pytest.fixture()
def worse_version_2(tmp_path, digits, trained_export, fitted_weights):
    """A base directory holding the trained model as version 1 and, served as
    the newest, a much worse one as version 2."""
    export_dir = copy_of_the_export(trained_export, tmp_path)
    export.export_saved_model(testlib.worse_model(fitted_weights), digits.class_names,
                              export_dir)
    return export_dir


def test_the_baseline_is_the_version_models_config_pins(
    tmp_path, digits, trained_metrics, worse_version_2
):
    export_dir = worse_version_2
    good = trained_metrics[0]["test_accuracy"]
    worse = evaluate.bless(good, export_dir, digits, 0.01, False)
    assert worse.baseline_version == 2 and worse.baseline_accuracy < 0.2
    assert worse.best_version == 1 and worse.blessed is True

    (tmp_path / "models.config").write_text(
        'model_config_list { config { name: "alexnet" base_path: "/models/alexnet" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }'
    )
    pinned = evaluate.bless(good, export_dir, digits, 0.01, False)
    assert pinned.baseline_version == 1
    assert pinned.baseline_accuracy == pytest.approx(good)


def test_a_chain_of_slightly_worse_models_stops_at_the_best_kept(
    digits, trained_metrics, worse_version_2
):
    export_dir = worse_version_2
    good = trained_metrics[0]["test_accuracy"]
    result = evaluate.bless(good - 0.05, export_dir, digits, 0.01, False)
    assert result.blessed is False and result.baseline_version == 2
    assert f"below the best kept version 1's {good:.4f} minus the tolerance 0.01" in result.reason
    assert evaluate.bless(good - 0.005, export_dir, digits, 0.01, False).blessed is True


def test_min_accuracy_is_a_floor_even_for_the_first_model(tmp_path, digits):
    export_dir = str(tmp_path / "alexnet")
    low = evaluate.bless(0.5, export_dir, digits, 0.01, False, min_accuracy=0.9)
    assert low.blessed is False
    assert "test accuracy 0.5000 is below `min_accuracy` 0.9" in low.reason
    assert evaluate.bless(0.95, export_dir, digits, 0.01, False, min_accuracy=0.9).blessed
    forced = evaluate.bless(0.5, export_dir, digits, 0.01, True, min_accuracy=0.9)
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
    export.export_saved_model(model, first.class_names, export_dir)
    trained_on = {image for batch, _ in first.encoded_batches("train", 64) for image in batch}

    add([f"new{index}.png" for index in range(40)])
    grown = ingest.ingest(config, str(tmp_path / "ingested"))
    scored = {image for batch, _ in grown.encoded_batches("test", 64) for image in batch}
    result = evaluate.bless(0.5, export_dir, grown, 0.01, False)
    assert result.baseline_version == 1 and result.baseline_accuracy is not None
    # The blessing scored version 1 on the grown ingest's test split, which
    # holds new images and none the version was trained on.
    assert len(scored) == grown.num_examples("test") > 0
    assert not scored & trained_on
    assert scored - {image for batch, _ in first.encoded_batches("test", 64) for image in batch}
