"""A diverging run, and a checkpoint that cannot be written, stop in one line,
with nothing evaluated, checkpointed or exported from broken weights; the same
command says the same again."""

import os
import subprocess
import sys

import numpy as np
import pytest

import testlib
from pipeline.evaluation import metrics
from pipeline.errors import PipelineError


@pytest.mark.slow
def test_a_diverging_run_stops_in_one_line_and_loses_nothing(tmp_path):
    served = tmp_path / "models" / "1"
    served.mkdir(parents=True)
    (served / "saved_model.pb").write_bytes(b"an earlier version, left alone")
    command = [sys.executable, "-m", "pipeline.run", "--optimizer", "sgd",
               "--learning-rate", "1e4", "--lr-schedule", "constant", "--warmup-epochs", "0",
               "--epochs", "2", "--steps-per-epoch", "3",
               "--batch-size", "16", "--seed", "0", "--output-dir", "run",
               "--export-dir", "models"]
    errors = []
    for _ in range(2):
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                                env=testlib.child_env(), timeout=600)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        errors.append(result.stderr.strip().splitlines()[-1])
    # SGD at 1e4 breaks the weights in the first epoch (measured: the
    # validation loss is NaN after it), on every CPU within the two epochs.
    assert errors[0].startswith("python -m pipeline.run: error: training diverged ")
    assert errors[0].endswith(
        "at learning rate 10000; nothing was evaluated or exported, and the checkpoints "
        "keep the last epoch that ended finite; lower --learning-rate and start a new "
        "--output-dir")
    assert errors[1] == errors[0]  # the same command says the same again
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists()
    checkpoints = run / "checkpoints"
    assert not checkpoints.exists() or not any(
        name.startswith("ckpt-2") for name in os.listdir(checkpoints))
    assert sorted(os.listdir(tmp_path / "models")) == ["1"]
    assert (served / "saved_model.pb").read_bytes() == b"an earlier version, left alone"


def test_non_finite_probabilities_never_reach_scikit_learn():
    probabilities = np.full((4, 3), 1 / 3)
    probabilities[2, 1] = np.nan
    with pytest.raises(PipelineError, match=r"NaN or infinite on 1 of the 4 test images"):
        metrics._metrics("test", np.array([0, 1, 2, 0]), probabilities, ["a", "b", "c"])


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_temp(tmp_path):
    """A file-size limit (RLIMIT_FSIZE: writes past 50 MB fail with EFBIG, as
    on a full disk) stops the first epoch's checkpoint half-way; the run says
    so in one line, leaves no ckpt-1_temp, and the same command without the
    limit completes."""
    command = [sys.executable, "-m", "pipeline.run", "--epochs", "1", "--steps-per-epoch",
               "2", "--batch-size", "16", "--image-size", "67", "--no-ten-crop",
               "--output-dir", "run", "--export-dir", "models"]
    status, line = testlib.run_on_a_full_disk(command, tmp_path, 50 << 20)
    assert status == 2, line
    assert line.startswith("python -m pipeline.run: error: cannot save the checkpoint of "
                           "epoch 1 in run/checkpoints (")
    assert "File too large" in line and line.endswith(
        "free space there and run the same command again: it resumes from the last saved "
        "checkpoint")
    assert os.listdir(tmp_path / "run" / "checkpoints") == []
    # A temp directory from a save killed outright goes at the next start.
    (tmp_path / "run" / "checkpoints" / "ckpt-1_temp").mkdir()
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                          env=testlib.child_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any("_temp" in name for name in os.listdir(tmp_path / "run" / "checkpoints"))
    assert (tmp_path / "run" / "metrics.json").exists()
