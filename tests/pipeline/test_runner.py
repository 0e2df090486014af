"""`python -m pipeline.run` end to end, as a user runs it: in a subprocess."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import testlib
from pipeline.cli import main as cli
from pipeline import runner
from pipeline.serving import runtimes
from pipeline.training import models
from pipeline.training import precision
from pipeline.config import DataConfig
from pipeline.config import ModelConfig

# Small and quick: the smallest input the paper's AlexNet takes, few steps.
TINY = ["--image-size", "67", "--batch-size", "16", "--steps-per-epoch", "3"]


def run_pipeline(tmp_path, digits_dir, *flags, env=None, check=True):
    command = [
        sys.executable, "-m", "pipeline.run",
        "--ingest-dir", digits_dir,
        "--export-dir", str(tmp_path / "models"),
        *flags,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env=testlib.child_env(**(env or {})),
        timeout=900, cwd=tmp_path,
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_history(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as file:
        return list(csv.DictReader(file))


def assert_tensorboard_matches_history(run_dir):
    """TensorBoard shows each epoch of `history.csv` once, at step epoch - 1
    (Keras' step is the epoch from 0)."""
    rows = read_history(run_dir)
    for split, prefix in (("train", ""), ("validation", "val_")):
        scalars = testlib.tensorboard_scalars(run_dir / "logs" / split)
        for name in ("loss", "accuracy"):
            assert scalars[f"epoch_{name}"] == {
                int(row["epoch"]) - 1: pytest.approx(float(row[prefix + name]), rel=1e-6)
                for row in rows
            }


def checkpoint_values(run_dir):
    """Every variable of the run's last checkpoint: weights, optimizer slots, epoch."""
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints"))
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        # What the run's Checkpoint object counts of its own saves, not of training.
        if name not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")
    }


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--strategy", "multiworker"], "TF_CONFIG"),
        (["--strategy", "mirrored", "--cpu-replicas", "2", "--batch-size", "15"],
         "does not split evenly over 2 replicas"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--image-size", "40"], "smaller than the 67x67 pixels"),
        (["--dataset", "folder:/no/such/folder"], "/no/such/folder"),
        (["--strategy", "default", "--cpu-replicas", "2"], "--cpu-replicas only applies"),
        (["--dropout-rate", "1.0"], "--dropout-rate must be in [0, 1)"),
        (["--checkpoint-every-steps", "0"],
         "--checkpoint-every-steps must be a positive number of steps"),
        (["--checkpoint-every-minutes", "-5"],
         "--checkpoint-every-minutes must be a positive number of minutes"),
        (["--data-service", "localhost"], "--data-service must be a dispatcher address"),
        # Port 1 (tcpmux) is served nowhere these days: the connection is refused.
        (["--data-service", "grpc://127.0.0.1:1"],
         "no tf.data service dispatcher answers at --data-service"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, digits_dir, capsys, flags, message):
    argv = ["--ingest-dir", digits_dir, "--output-dir", str(tmp_path / "run"),
            "--export-dir", str(tmp_path / "models"), *flags]
    if flags[:2] == ["--dataset", "folder:/no/such/folder"]:
        argv = argv[2:]
    assert cli.main("run", argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("python -m pipeline.run: error: ")
    assert message in error and "\n" not in error
    assert not (tmp_path / "models").exists()


def test_the_command_line_reports_errors_without_a_traceback(tmp_path, digits_dir):
    for flags, message in (
        (["--optimizer", "lamb"], "--optimizer must be one of sgd, adam"),
        (["--strategy", "multiworker"], "TF_CONFIG"),
    ):
        result = run_pipeline(tmp_path, digits_dir, *flags, check=False)
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_mirrored_run_writes_everything_a_user_expects(tmp_path, digits_dir):
    run_dir = tmp_path / "run"
    result = run_pipeline(
        tmp_path, digits_dir, "--strategy", "mirrored", "--cpu-replicas", "2",
        "--epochs", "2", "--output-dir", str(run_dir), *TINY,
    )
    assert "Epoch 1/2" in result.stdout and "Epoch 2/2" in result.stdout
    assert "val_accuracy" in result.stdout and "images/s" in result.stdout
    assert "Test accuracy:" in result.stdout
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["image_size"] == [67, 67]
    assert config["model"]["channels"] == 1
    assert config["train"]["strategy"] == "mirrored"
    rows = read_history(run_dir)
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy",
                             "learning_rate", "images_per_second"]
    assert all(float(row["images_per_second"]) > 0 for row in rows)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["blessed"] is True
    assert metrics["export_path"] == str(tmp_path / "models" / "1")
    assert (tmp_path / "models" / "1" / "saved_model.pb").exists()
    assert (run_dir / "training_curves.png").stat().st_size > 10_000
    train_scalars = testlib.tensorboard_scalars(run_dir / "logs" / "train")
    assert {tag: sorted(steps) for tag, steps in train_scalars.items()} == {
        tag: [0, 1] for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate",
                                "epoch_images_per_second")
    }
    assert_tensorboard_matches_history(run_dir)
    assert (run_dir / "checkpoints" / "checkpoint").exists()


@pytest.mark.slow
def test_a_run_exports_litert_and_onnx_files_of_the_served_network(
    tmp_path, digits, digits_dir
):
    run_dir = tmp_path / "run"
    result = run_pipeline(tmp_path, digits_dir, "--strategy", "mirrored", "--cpu-replicas", "2",
                          "--epochs", "1", "--output-dir", str(run_dir), *TINY,
                          "--export-format", "litert", "--export-format", "onnx",
                          "--export-format", "litert_int8", "--export-format", "onnx_int8")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for export_format, file_name in runtimes.FILE_NAMES.items():
        assert metrics[f"{export_format}_path"] == str(run_dir / file_name)
    assert metrics["keras_path"] is None
    assert not [name for name in os.listdir(run_dir) if name.startswith(".tmp")]

    # Each file, in its own runtime, answers as the run's TF Serving export.
    encoded = testlib.encoded_split(digits, "test")[0][:8]
    served = testlib.ServingSession(metrics["export_path"])
    expected = served.run({"image_bytes": np.array(encoded)})["probabilities"]
    served.close()
    # The run's own input (its initialisation's pixel scale), as pipeline.run built it.
    image_spec = models.build_model(ModelConfig(image_size=(67, 67), channels=1), 10).image_spec
    images = testlib.preprocessed(encoded, image_spec)
    for export_format in ("litert", "onnx"):
        logits = testlib.RUNTIMES[export_format](metrics[f"{export_format}_path"], images)
        np.testing.assert_allclose(tf.nn.softmax(logits), expected,
                                   atol=testlib.RUNTIME_TOLERANCE, err_msg=export_format)

    # The int8 files' test accuracy in their runtimes, as the run reports it.
    # One tiny epoch: the model is barely trained, so this checks the figure,
    # not quantization's quality (test_runtimes does).
    images, labels = testlib.split_arrays(digits, "test", image_spec)
    assert set(metrics["int8_test_accuracy"]) == set(runtimes.QUANTIZED)
    for export_format in runtimes.QUANTIZED:
        logits = testlib.RUNTIMES[export_format](metrics[f"{export_format}_path"], images)
        assert metrics["int8_test_accuracy"][export_format] == pytest.approx(
            np.mean(logits.argmax(axis=1) == labels))
        accuracy = metrics["int8_test_accuracy"][export_format]
        path = run_dir / runtimes.FILE_NAMES[export_format]
        assert f"{export_format} test accuracy: {accuracy:.4f} ({path}, in its runtime)" \
            in result.stdout


@pytest.mark.slow
def test_killed_run_resumes_exactly_where_it_stopped(tmp_path, digits_dir):
    run_dir = tmp_path / "run"
    flags = ["--ingest-dir", digits_dir, "--export-dir", str(tmp_path / "models"),
             "--output-dir", str(run_dir), "--epochs", "3", "--seed", "7",
             "--checkpoint-every-steps", "2", *TINY]
    # Killed in epoch 2 after its history row is written but before its
    # checkpoint: the history is ahead of the checkpoints, whose newest is
    # the step checkpoint after step 4 of the run (epoch 2, step 1 of 3).
    marker = str(tmp_path / "paused")
    with testlib.Children(tmp_path) as children:
        children.start("killed", testlib.paused_command(
            "run", "pipeline.training.history:write", 2, marker, *flags,
        ), cwd=tmp_path, env=testlib.child_env())
        children.wait_for_file(marker, timeout=600)
    assert [int(row["epoch"]) for row in read_history(run_dir)] == [1, 2]
    checkpoint = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert os.path.basename(checkpoint) == "ckpt-1"
    assert sorted(os.listdir(run_dir / "checkpoints" / "steps"))[-1] == "ckpt-4.index"

    command = [sys.executable, "-m", "pipeline.run", *flags]

    def rerun(*more_flags, command=command):
        return subprocess.run(command + list(more_flags), capture_output=True, text=True,
                              timeout=900, cwd=tmp_path, env=testlib.child_env())

    # Resumed at step 2 of epoch 2, it gets SIGTERM after step 3 of epoch 2
    # (its second step), as a preempted pod does: it validates epoch 2, saves
    # at the next step boundary (after step 1 of epoch 3) and exits with the
    # status that asks for a restart.
    preempted = rerun(command=testlib.sigterm_command(
        "run", "pipeline.training.checkpoints:RunCheckpoints.after_step", 2, *flags))
    assert preempted.returncode == 138, preempted.stderr[-3000:]
    assert "Epoch 1/3" not in preempted.stdout and "Epoch 2/3" in preempted.stdout
    assert preempted.stderr.strip().splitlines()[-1] == (
        "python -m pipeline.run: error: stopped by SIGTERM after step 1 of epoch 3, saved in "
        f"{run_dir}/checkpoints/steps; run the same command to resume there (exit status "
        "138: preempted)")
    assert "Traceback" not in preempted.stderr
    assert [int(row["epoch"]) for row in read_history(run_dir)] == [1, 2]

    result = rerun()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from" in result.stderr and "steps/ckpt-7" in result.stderr
    assert "Epoch 2/3" not in result.stdout and "Epoch 3/3" in result.stdout
    # Each epoch is in the history once.
    assert [int(row["epoch"]) for row in read_history(run_dir)] == [1, 2, 3]
    # The killed run had logged epoch 2 (step 1) to TensorBoard before its
    # checkpoint; the resumed run logged it again, and TensorBoard shows the
    # newer one, as in the history.
    assert [step for tag, step, _ in testlib.tensorboard_events(run_dir / "logs" / "train")
            if tag == "epoch_loss"] == [0, 1, 1, 2]
    assert_tensorboard_matches_history(run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from_epoch"] == 2
    # A finished run keeps its epochs' checkpoints, not the steps'.
    assert not (run_dir / "checkpoints" / "steps").exists()
    # The same data order, augmentation and dropout as a run never killed: the
    # same weights and optimizer state, to the bit, and the same history.
    run_pipeline(tmp_path, digits_dir, "--output-dir", str(tmp_path / "unbroken"),
                 "--epochs", "3", "--seed", "7", *TINY)
    resumed, unbroken = checkpoint_values(run_dir), checkpoint_values(tmp_path / "unbroken")
    assert resumed.keys() == unbroken.keys() and len(resumed) >= 48
    for name, value in resumed.items():
        np.testing.assert_array_equal(value, unbroken[name], err_msg=name)
    for mine, theirs in zip(read_history(run_dir), read_history(tmp_path / "unbroken")):
        del mine["images_per_second"], theirs["images_per_second"]
        assert mine == theirs

    # Run again, the run is complete: nothing is trained or pushed again.
    versions = sorted(os.listdir(tmp_path / "models"))
    again = rerun()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Epoch" not in again.stdout and "is a complete run of 3 epochs" in again.stderr
    assert sorted(os.listdir(tmp_path / "models")) == versions

    # Other settings are refused, each named, and the run is kept as it was.
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    other = rerun("--normalization", "batchnorm", "--learning-rate", "0.01", "--epochs", "2")
    assert other.returncode == 2
    error = other.stderr.splitlines()[-1]
    assert error.startswith("python -m pipeline.run: error: ")
    assert "Traceback" not in other.stderr
    for change in ("--normalization None -> \"batchnorm\"", "--learning-rate 0.0003 -> 0.01",
                   "--epochs 3 -> 2", "new --output-dir"):
        assert change in error
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before

    # A larger --epochs extends the run by the epochs it adds.
    longer = rerun("--epochs", "4")
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "Epoch 3/4" not in longer.stdout and "Epoch 4/4" in longer.stdout
    assert [int(row["epoch"]) for row in read_history(run_dir)] == [1, 2, 3, 4]
    assert_tensorboard_matches_history(run_dir)
    # The 3-epoch model's test accuracy, and the 4-epoch one's; the complete
    # run started again evaluated nothing.
    assert testlib.tensorboard_scalars(run_dir / "logs" / "test")["epoch_accuracy"].keys() == {2, 3}


@pytest.mark.slow
def test_seeded_runs_end_with_identical_weights(tmp_path, digits_dir):
    weights = []
    for name in ("first", "second"):
        run_dir = tmp_path / name
        run_pipeline(tmp_path, digits_dir, "--seed", "7", "--epochs", "1",
                     "--output-dir", str(run_dir), "--force-push", *TINY)
        weights.append(checkpoint_values(run_dir))
    # 16 weights and 16 Adam slots of each kind, at least.
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) >= 48
    for name, value in weights[0].items():
        np.testing.assert_array_equal(value, weights[1][name], err_msg=name)


def _worker_commands(tmp_path, digits_dir, free_port, *flags):
    """Each worker's command line and environment: the same command for both,
    as a Kubernetes spec gives every pod, and its own TF_CONFIG."""
    workers = [f"localhost:{free_port()}", f"localhost:{free_port()}"]
    command = [
        "--strategy", "multiworker", "--ingest-dir", digits_dir,
        "--export-dir", str(tmp_path / "models"), "--output-dir", str(tmp_path / "run"), *flags,
    ]
    for index in range(2):
        tf_config = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        yield index, command, testlib.child_env(TF_CONFIG=tf_config)


@pytest.mark.slow
def test_a_preempted_worker_makes_every_worker_save_the_same_step(tmp_path, digits_dir,
                                                                  free_port):
    """Two workers on localhost, one --output-dir: the chief's files in it, the
    other worker's beside them, in workers/worker-1."""
    flags = ["--epochs", "3", "--seed", "5", *TINY]
    run_dirs = [tmp_path / "run", tmp_path / "run" / "workers" / "worker-1"]
    # Worker 1 gets SIGTERM after its 4th step (epoch 2, step 1): TensorFlow's
    # handler tells worker 0, both save the same step and exit with 138.
    with testlib.Children(tmp_path) as children:
        for index, command, env in _worker_commands(tmp_path, digits_dir, free_port, *flags):
            if index == 1:
                command = testlib.sigterm_command(
                    "run", "pipeline.training.checkpoints:RunCheckpoints.after_step", 4,
                    *command)
            else:
                command = [sys.executable, "-m", "pipeline.run", *command]
            children.start(f"preempted{index}", command, cwd=tmp_path, env=env)
        statuses = [children.processes[f"preempted{index}"].wait(timeout=600)
                    for index in range(2)]
        assert statuses == [138, 138], [children.output(f"preempted{i}")[-2000:]
                                        for i in range(2)]
        saved = [sorted(os.listdir(run_dir / "checkpoints" / "steps"))
                 for run_dir in run_dirs]
        assert saved[0] == saved[1] and saved[0][-1] == "ckpt-6.index"
        assert "stopped by SIGTERM after step 3 of epoch 2" in children.output("preempted0")
    for run_dir in run_dirs:
        assert [row["epoch"] for row in read_history(run_dir)] == ["1"]

    # Started again with the same command (and new ports, as a restarted job gets).
    with testlib.Children(tmp_path) as children:
        for index, command, env in _worker_commands(tmp_path, digits_dir, free_port, *flags):
            children.start(f"worker{index}", [sys.executable, "-m", "pipeline.run", *command],
                           cwd=tmp_path, env=env)
        children.wait(timeout=900)
        outputs = [children.output(f"worker{index}") for index in range(2)]
    histories = [read_history(run_dir) for run_dir in run_dirs]
    for output, rows in zip(outputs, histories):
        assert "steps/ckpt-6 (epoch 2, step 3 of 3 done)" in output
        assert "Epoch 1/3" not in output and "Epoch 3/3" in output
        assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    for mine, theirs in zip(*histories):
        # Both workers saw the all-reduced loss of the same global batches (the
        # reduction may add in another order) and validated the same weights
        # on the whole validation split.
        assert float(mine["loss"]) == pytest.approx(float(theirs["loss"]), rel=1e-6)
        assert float(mine["val_loss"]) == pytest.approx(float(theirs["val_loss"]), rel=1e-6)
    # Every step was trained once: the optimizer counted 3 epochs of 3 steps.
    assert checkpoint_values(run_dirs[0])[
        "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 9
    metrics = [json.loads((run_dir / "metrics.json").read_text()) for run_dir in run_dirs]
    assert metrics[0]["resumed_from_epoch"] == metrics[1]["resumed_from_epoch"] == 1
    assert metrics[0]["test_accuracy"] == metrics[1]["test_accuracy"]
    # The worker's checkpoints were its own to resume from; the finished run
    # removed them. Only the chief exports.
    assert (run_dirs[0] / "checkpoints" / "checkpoint").exists()
    assert not (run_dirs[1] / "checkpoints").exists()
    assert sorted(os.listdir(tmp_path / "models")) == ["1"]
    assert metrics[1]["export_path"] is None


@pytest.mark.slow
@pytest.mark.skipif(not precision.cpu_has_bfloat16(),
                    reason="this CPU has no bfloat16 instructions: TensorFlow emulates them, "
                           "14x slower")
def test_bfloat16_trains_to_the_accuracy_of_float32(tmp_path, digits_dir):
    """`--mixed-precision` on a CPU with bfloat16 instructions: with the same
    seed and epochs, bfloat16 reaches float32's test accuracy, within three
    points. Three, because that is the noise of this measurement: the seed
    moves a run's accuracy on the 194 test digits by up to a point (measured,
    the default recipe, 3 epochs, seeds 1-3: float32 0.948, 0.948, 0.948;
    bfloat16 0.954, 0.943, 0.938), and runs of 6 epochs of the previous
    default spread by 2.5 points; a bfloat16 path that is broken (unscaled
    float16-style underflow, a bfloat16 export) loses far more than that. The
    default's cosine decay settles the last epoch; three epochs and one seed,
    not more: this is the suite's slowest test."""
    accuracies = {}
    for dtype, flags in (("float32", []), ("bfloat16", ["--mixed-precision"])):
        run_pipeline(tmp_path, digits_dir, "--epochs", "3", "--seed", "1",
                     "--output-dir", dtype, "--no-ten-crop",
                     "--export-dir", str(tmp_path / dtype / "models"), *flags)
        metrics = json.loads((tmp_path / dtype / "metrics.json").read_text())
        accuracies[dtype] = metrics["test_accuracy"]
    # The run's metrics are those of what it serves: the float32 export, not
    # the bfloat16 model it trained.
    served = runner.evaluate_export(metrics["export_path"], DataConfig(
        ingest_dir=digits_dir), "test", str(tmp_path / "served"), ten_crop=False)
    assert served["confusion_matrix"] == metrics["confusion_matrix"]
    assert accuracies["float32"] > 0.9, accuracies
    assert accuracies["bfloat16"] >= accuracies["float32"] - 0.03, accuracies


@pytest.mark.slow
def test_the_export_refuses_what_the_runs_ingest_refused(tmp_path, digits):
    """A run ingested under --max-pixels 5000 exports a version that answers a
    100x100 image (between 5,000 and the default 50,000,000) as invalid, and
    says so in its alexnet_keras.json."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--max-pixels", "5000", "--epochs", "1",
         "--no-ten-crop", "--output-dir", str(run_dir), "--export-dir", "models", *TINY],
        capture_output=True, text=True, env=testlib.child_env(), timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    version_dir = tmp_path / "models" / "1"
    with open(version_dir / "assets.extra" / "alexnet_keras.json") as file:
        assert json.load(file)["image_limits"] == {"max_pixels": 5000, "max_aspect_ratio": 20}
    small, _ = testlib.digit_image(digits, 0, (60, 60), 1)
    large, _ = testlib.digit_image(digits, 0, (100, 100), 1)
    session = testlib.ServingSession(str(version_dir))
    try:
        outputs = session.run({"image_bytes": [testlib.encode(small, "png"),
                                               testlib.encode(large, "png")]})
    finally:
        session.close()
    assert outputs["valid"].tolist() == [True, False]
    assert outputs["error"][1].decode() == "over 5,000 pixels"


@pytest.mark.slow
def test_the_two_gpu_network_trains_resumes_exports_and_fine_tunes(tmp_path, digits_dir):
    """paper_2gpu through the pipeline: a run, the same run extended (resumed
    from its checkpoint), served as exported, then fine-tuned from."""
    flags = ["--variant", "paper_2gpu", "--seed", "3", "--no-ten-crop", *TINY]
    run_pipeline(tmp_path, digits_dir, "--output-dir", "two_gpu", "--epochs", "1", *flags)
    resumed = run_pipeline(tmp_path, digits_dir, "--output-dir", "two_gpu", "--epochs", "2",
                           *flags)
    assert "Resuming from" in resumed.stdout + resumed.stderr
    assert [row["epoch"] for row in read_history(tmp_path / "two_gpu")] == ["1", "2"]
    versions = sorted(os.listdir(tmp_path / "models"))
    session = testlib.ServingSession(str(tmp_path / "models" / versions[-1]))
    try:
        image = testlib.encode(np.zeros((30, 40, 1), np.uint8), "png")
        outputs = session.run({"image_bytes": [image]})
    finally:
        session.close()
    assert outputs["valid"].tolist() == [True] and outputs["probabilities"].shape == (1, 10)
    run_pipeline(tmp_path, digits_dir, "--output-dir", "tuned", "--epochs", "1",
                 "--init-from", "two_gpu", "--freeze", "conv5", *flags)
    metrics = json.loads((tmp_path / "tuned" / "metrics.json").read_text())
    assert metrics["warm_start"]["loaded"] == ["conv1", "conv2", "conv3", "conv4", "conv5",
                                               "fc6", "fc7", "fc8"]


@pytest.mark.slow
def test_early_stopping_stops_a_run_and_the_run_stays_stopped(tmp_path, digits_dir):
    """At a rate too small to move the validation loss by 1e-4, patience 1
    stops the run after its second epoch; the same command then trains nothing
    and exports nothing more."""
    flags = ["--learning-rate", "1e-12", "--early-stopping", "1", "--epochs", "5",
             "--no-ten-crop", "--output-dir", "run", *TINY]
    first = run_pipeline(tmp_path, digits_dir, *flags)
    assert "training stops after epoch 2" in first.stderr
    assert [row["epoch"] for row in read_history(tmp_path / "run")] == ["1", "2"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped_early_after_epoch"] == 2 and metrics["export_path"]
    again = run_pipeline(tmp_path, digits_dir, *flags)
    assert "stopped early after epoch 2: nothing is left to train" in again.stderr
    assert "is a complete run, stopped early after epoch 2" in again.stderr
    assert [row["epoch"] for row in read_history(tmp_path / "run")] == ["1", "2"]
    assert sorted(os.listdir(tmp_path / "models")) == ["1"]


def test_a_keras_callback_that_sets_stop_training_ends_the_loop(digits_dir):
    import keras

    from pipeline.config import ModelConfig
    from pipeline.config import TrainConfig
    from pipeline.data import ingested_dataset
    from pipeline.training import loop
    from pipeline.training import models
    from pipeline.training import optimizers

    ingested = ingested_dataset.IngestedDataset.load(digits_dir)
    train_config = TrainConfig(epochs=4, steps_per_epoch=1, batch_size=16, seed=0)
    model = models.build_model(ModelConfig(image_size=(67, 67), channels=1), 10)
    optimizer = optimizers.make_optimizer(train_config, 1, model.trainable_variables)
    # No validation loss improves by 100: Keras' own EarlyStopping stops after epoch 2.
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=100)
    logs = loop.fit(model, optimizer, tf.distribute.get_strategy(), train_config,
                    DataConfig(), ingested, 0, [stop])
    assert len(logs) == 2 and stop.stopped_epoch == 1
