import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from matplotlib import image as matplotlib_image
from sklearn import metrics as sklearn_metrics

import testlib
from pipeline.cli import main as cli
from pipeline.data import preprocess_ops
from pipeline.evaluation import metrics as evaluation
from pipeline.errors import PipelineError


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
    metrics = evaluation._metrics("test", labels, probabilities, ["a", "b", "c"])
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
    assert "test_ten_crop_accuracy" not in metrics
    # The ten-crop probabilities get their own accuracy; the rest is the central crop's.
    with_ten_crop = evaluation._metrics("test", labels, probabilities, ["a", "b", "c"],
                                        ten_crop=(labels, np.eye(3)[[0, 0, 1, 1, 2, 2]]))
    assert with_ten_crop["test_ten_crop_accuracy"] == 1.0
    assert with_ten_crop["test_accuracy"] == pytest.approx(4 / 6)
    assert with_ten_crop["confusion_matrix"] == metrics["confusion_matrix"]
    with pytest.raises(
        PipelineError, match="3 class probabilities but the dataset has 4"
    ):
        evaluation._metrics("test", labels, probabilities, ["a", "b", "c", "d"])


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

    metrics = evaluation.evaluate_encoded(predict_fn, ingested, str(tmp_path))
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


def test_ten_crop_accuracy_is_the_paper_test_computed_by_hand(trained_metrics, digits,
                                                              trained_model):
    metrics, _ = trained_metrics
    encoded, labels = testlib.encoded_split(digits, "test")
    spec = trained_model.image_spec
    averaged = []
    for image in encoded:
        patches = preprocess_ops.ten_crops(preprocess_ops.decode_image(image, spec.channels), spec)
        averaged.append(tf.nn.softmax(trained_model(patches, training=False)).numpy().mean(0))
    averaged = np.asarray(averaged)
    assert metrics["test_ten_crop_accuracy"] == pytest.approx(
        sklearn_metrics.accuracy_score(labels, averaged.argmax(1)))
    assert metrics["test_ten_crop_top5_accuracy"] == pytest.approx(
        sklearn_metrics.top_k_accuracy_score(labels, averaged, k=5, labels=range(10)))
    assert metrics["test_ten_crop_accuracy"] > 0.9
    # The central crop's figures are still the central crop's.
    central = testlib.keras_probabilities(trained_model, encoded)
    assert metrics["test_accuracy"] == pytest.approx(
        sklearn_metrics.accuracy_score(labels, central.argmax(1)))


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
    # And the ten-crop test through serving_ten_crop scores what Keras scored.
    assert metrics["test_ten_crop_accuracy"] == pytest.approx(
        keras_metrics["test_ten_crop_accuracy"])
    assert metrics["test_ten_crop_top5_accuracy"] == pytest.approx(
        keras_metrics["test_ten_crop_top5_accuracy"])
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
        "--ingest-dir", ingested.directory, "--output-dir", "out", "--no-ten-crop",
    ])
    assert exit_code == 0
    assert not (tmp_path / "data").exists()  # nothing ingested again
    with open(tmp_path / "out" / "evaluation.json") as file:
        metrics = json.load(file)
    assert metrics["test_accuracy"] == pytest.approx(trained_metrics[0]["test_accuracy"])
    assert "test_ten_crop_accuracy" not in metrics  # --no-ten-crop


def test_cli_names_a_missing_export(tmp_path, capsys):
    exit_code = cli.main(
        "evaluate", ["--saved-model", str(tmp_path / "nothing"), "--dataset", "digits"]
    )
    assert exit_code == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m pipeline.evaluate: error: ")
    assert str(tmp_path / "nothing") in error and error.count("\n") == 1


def _random_predictions(classes, examples, seed=0):
    """Labels, and probabilities that are right for half the examples."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, examples)
    probabilities = rng.random((examples, classes), dtype=np.float32)
    probabilities[np.arange(examples // 2), labels[:examples // 2]] = 2.0
    return labels, probabilities / probabilities.sum(axis=1, keepdims=True)


def test_beyond_imagenets_class_count_the_matrix_is_kept_as_its_cells():
    labels, probabilities = _random_predictions(1001, 3000)
    names = [f"class {index}" for index in range(1001)]
    many = evaluation._metrics("test", labels, probabilities, names)
    assert "confusion_matrix" not in many
    dense = sklearn_metrics.confusion_matrix(labels, probabilities.argmax(1),
                                             labels=range(1001))
    true, predicted = np.nonzero(dense)
    assert many["confusion_matrix_cells"] == [
        [int(t), int(p), int(dense[t, p])] for t, p in zip(true, predicted)]
    imagenet = evaluation._metrics("test", labels % 1000, probabilities[:, :1000],
                                   names[:1000])
    assert np.asarray(imagenet["confusion_matrix"]).shape == (1000, 1000)


def test_the_picture_of_many_classes_shows_the_most_frequent_confusions():
    labels, probabilities = _random_predictions(200, 2000, seed=1)
    predictions = probabilities.argmax(1)
    # 7 taken for 3 five times: the most frequent confusion.
    labels[:5], predictions[:5] = 3, 7
    names = [f"class {index}" for index in range(200)]
    matrix, shown, title = evaluation._drawn_matrix(labels, predictions, names)
    assert title == "Confusion matrix of the 50 classes most often confused, of 200"
    assert len(shown) == 50 and matrix.shape == (50, 50)
    assert matrix[shown.index("class 3"), shown.index("class 7")] == np.sum(
        (labels == 3) & (predictions == 7))
    dense = sklearn_metrics.confusion_matrix(labels, predictions, labels=range(200))
    indices = [names.index(name) for name in shown]
    np.testing.assert_array_equal(matrix, dense[np.ix_(indices, indices)])
    few, few_names, _ = evaluation._drawn_matrix(labels % 10, predictions % 10, names[:10])
    assert few.shape == (10, 10) and few_names == names[:10]


def test_the_logged_table_of_many_classes_is_the_lowest_recalls():
    labels, probabilities = _random_predictions(300, 3000, seed=2)
    metrics = evaluation._metrics("test", labels, probabilities,
                                  [f"class {index}" for index in range(300)])
    table = evaluation._table("test", metrics).splitlines()
    assert table[1] == "the 10 classes of lowest recall, of 300 (all in metrics.json)"
    recalls = [float(line.split()[-2]) for line in table[3:]]
    assert len(recalls) == 10 and recalls == sorted(recalls)
    # Printed to three decimals.
    tenth = np.sort([row["recall"] for row in metrics["per_class"].values()])[9]
    assert recalls[-1] <= tenth + 5e-4


@pytest.mark.slow
def test_ten_thousand_classes_report_in_bounded_memory(tmp_path):
    """metrics, pictures and JSON of 5,000 test images of 10,000 classes, in a
    process of its own: measured 384 MB of peak growth, 0.7 MB of JSON, 5 s."""
    script = f"""
import json, resource, types, sys
sys.path[:0] = {[testlib.REPO, os.path.dirname(__file__),
                 os.path.dirname(os.path.dirname(__file__))]!r}
from test_metrics import _random_predictions
from pipeline.evaluation import metrics
labels, probabilities = _random_predictions(10_000, 5_000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
names = types.SimpleNamespace(class_names=[f"class {{index}}" for index in range(10_000)])
result = metrics._report("test", labels, probabilities, names, metrics._Misclassified(),
                         {str(tmp_path)!r})
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(grown, len(json.dumps(result)))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=testlib.child_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    grown_mb, json_bytes = (float(value) for value in result.stdout.split()[-2:])
    assert grown_mb < 1000 and json_bytes < 2e6
    assert_png(tmp_path / "confusion_matrix.png")
