"""The run directory: one process at a time, resumes under their own settings
only, and the epoch every worker can resume from."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pytest

import testlib
from pipeline.storage import run_dir
from pipeline.config import ModelConfig
from pipeline.errors import PipelineError
from pipeline.config import RunConfig
from pipeline.config import TrainConfig


def test_a_second_claim_is_refused_with_the_holder_named(tmp_path):
    path = str(tmp_path / "run")
    with run_dir.claimed(path):
        with pytest.raises(PipelineError) as error:
            with run_dir.claimed(path):
                pass
    assert str(error.value) == (
        f"{path} is in use by process {os.getpid()}: two runs must not share a run "
        "directory; wait for it to end or choose another `output_dir`"
    )
    # Released on the way out.
    with run_dir.claimed(path):
        pass


def test_a_killed_holder_leaves_no_claim_behind(tmp_path):
    path = str(tmp_path / "run")
    marker = tmp_path / "claimed"
    holder = subprocess.Popen([
        sys.executable, "-c",
        "import sys, threading\n"
        "from pipeline.storage import run_dir\n"
        "with run_dir.claimed(sys.argv[1]):\n"
        "    open(sys.argv[2], 'w').close()\n"
        "    threading.Event().wait()\n",
        path, str(marker),
    ], env=testlib.child_env())
    with testlib.Children(tmp_path) as children:
        children.processes["holder"] = holder
        children.wait_for_file(str(marker), timeout=120)
        with pytest.raises(PipelineError, match=f"in use by process {holder.pid}"):
            with run_dir.claimed(path):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_dir.claimed(path):
        pass


@dataclasses.dataclass(frozen=True)
class _Ingested:
    source: str = "digits"
    fingerprint: str = "a" * 64


def test_changed_settings_name_each_change_and_allow_more_epochs():
    config = RunConfig(train=TrainConfig(epochs=4, learning_rate=1e-3))
    recorded = run_dir.record(config, _Ingested())
    assert run_dir.changed_settings(recorded, config, _Ingested()) == []
    longer = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=9))
    assert run_dir.changed_settings(recorded, longer, _Ingested()) == []

    other = RunConfig(
        model=ModelConfig(normalization="batchnorm"),
        train=TrainConfig(epochs=2, learning_rate=1e-3, batch_size=64),
    )
    assert run_dir.changed_settings(recorded, other, _Ingested(fingerprint="b" * 64)) == [
        '`normalization` None -> "batchnorm"',
        "`batch_size` 32 -> 64",
        "`epochs` 4 -> 2 (only a larger `epochs` extends a run)",
        "the data (ingest fingerprint aaaaaaaaaaaa -> bbbbbbbbbbbb)",
    ]


def test_settings_are_checked_only_against_a_begun_run(tmp_path):
    path = str(tmp_path)
    config = RunConfig(train=TrainConfig(epochs=4))
    other = RunConfig(train=TrainConfig(epochs=4, seed=3))
    # No checkpoint yet: nothing to resume, the new settings are recorded.
    assert run_dir.check_resumable(path, config, _Ingested()) is False
    assert run_dir.check_resumable(path, other, _Ingested()) is False
    assert json.loads((tmp_path / "config.json").read_text())["train"]["seed"] == 3
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-1"\n'
    )
    (tmp_path / "checkpoints" / "ckpt-1.index").write_bytes(b"")
    assert run_dir.check_resumable(path, other, _Ingested()) is True
    with pytest.raises(PipelineError, match=r"\(`seed` 3 -> None\)"):
        run_dir.check_resumable(path, config, _Ingested())
