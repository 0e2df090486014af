"""Where a resumed run starts, what a step checkpoint holds, and the run
directory of each task of a cluster."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline.errors import ConfigError
from pipeline.errors import PipelineError
from pipeline.training import checkpoints
from pipeline.training import distribute


@pytest.mark.parametrize("saved,expected", [
    ([[0, 0], [0, 0]], 0),  # a new run
    ([[3, 5], [3, 5]], 5),  # killed between checkpoints
    ([[5, 7], [3, 5]], 5),  # worker 1 killed before saving 7
    ([[7, 9], [3, 5]], 0),  # nothing in common: start again
    ([[3, 5]], 5),
])
def test_workers_resume_from_the_newest_checkpoint_all_of_them_hold(saved, expected):
    assert checkpoints.newest_common(saved) == expected


def _run_checkpoints(directory, steps_per_epoch=3, **intervals):
    weight = tf.Variable([1.0, 2.0])
    return weight, checkpoints.RunCheckpoints(
        {"weight": weight}, str(directory), steps_per_epoch, tf.distribute.get_strategy(),
        **intervals)


def test_a_run_resumes_from_its_newest_checkpoint_of_either_kind(tmp_path):
    weight, saver = _run_checkpoints(tmp_path, every_steps=2)
    assert saver.resume() == checkpoints.Position(0, 0)
    for global_step in range(1, 6):  # epoch 1, then 2 steps of epoch 2
        weight.assign_add([1.0, 1.0])
        saver.after_step(global_step, (global_step * 0.5, global_step, 16.0 * global_step),
                         last_of_epoch=global_step % 3 == 0)
        if global_step == 3:
            saver.save_epoch(1)
    assert sorted(os.listdir(tmp_path / "steps")) == [
        "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
        "ckpt-4.data-00000-of-00001", "ckpt-4.index"]

    weight, resumed = _run_checkpoints(tmp_path, every_steps=2)
    # Step 4 (epoch 2, step 1) is newer than epoch 1's end (step 3).
    assert resumed.resume() == checkpoints.Position(1, 1)
    np.testing.assert_array_equal(weight.numpy(), [5.0, 6.0])
    assert resumed.sums.values() == (2.0, 4.0, 64.0)

    # The epoch-end checkpoint comes after the step checkpoint of its last step.
    resumed.after_step(6, (3.0, 6.0, 96.0), last_of_epoch=True)
    resumed._save_step()
    assert _run_checkpoints(tmp_path)[1].resume() == checkpoints.Position(1, 3)
    resumed.save_epoch(2)
    assert _run_checkpoints(tmp_path)[1].resume() == checkpoints.Position(2, 0)


def test_a_checkpoint_of_another_model_is_refused_in_one_line(tmp_path):
    weight, saver = _run_checkpoints(tmp_path)
    saver.save_epoch(1)
    other = checkpoints.RunCheckpoints(
        {"weight": tf.Variable([1.0, 2.0, 3.0])}, str(tmp_path), 3,
        tf.distribute.get_strategy())
    with pytest.raises(PipelineError, match="is of another model or optimizer"):
        other.resume()


def test_a_half_written_checkpoint_is_removed_and_never_resumed(tmp_path):
    _, saver = _run_checkpoints(tmp_path)
    saver.save_epoch(1)
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "ckpt-5_temp_0123").mkdir()
    (tmp_path / "ckpt-2_temp_4567").mkdir()
    checkpoints.remove_partial(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index", "steps"]
    assert os.listdir(tmp_path / "steps") == []


def test_checkpoints_fall_due_by_steps_and_by_time(tmp_path):
    _, by_steps = _run_checkpoints(tmp_path / "a", every_steps=4)
    assert [step for step in range(1, 13) if by_steps._due(step)] == [4, 8, 12]
    _, by_time = _run_checkpoints(tmp_path / "b", every_minutes=1)
    assert not by_time._due(1)
    by_time._last_save -= 61
    assert by_time._due(2)


@pytest.mark.parametrize("raw,task", [
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}',
     distribute.Task("worker", 0, chief=True)),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}',
     distribute.Task("worker", 1, chief=False)),
    ('{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", '
     '"index": 0}}', distribute.Task("worker", 0, chief=False)),
    ('{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", '
     '"index": 0}}', distribute.Task("chief", 0, chief=True)),
])
def test_the_task_is_read_from_tf_config(raw, task):
    assert distribute.cluster_task(raw) == task


@pytest.mark.parametrize("raw", [
    "{not json", '{"cluster": {"worker": ["a:1"]}}', '{"task": {"type": "worker"}}',
    '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
    '{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', '[1]',
    '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": -1}}',
    '{"cluster": {"worker": ["a:1"]}, "task": "worker"}',
])
def test_a_tf_config_that_names_no_task_is_one_line(raw):
    with pytest.raises(ConfigError, match="TF_CONFIG must be JSON naming the cluster") as error:
        distribute.cluster_task(raw)
    assert "\n" not in str(error.value)


def test_each_task_writes_beside_the_chief_from_one_output_dir(tmp_path, monkeypatch):
    cluster = {"worker": ["a:1", "b:1", "c:1"]}
    run = str(tmp_path / "run")

    def output_dir(index, strategy="multiworker"):
        monkeypatch.setenv("TF_CONFIG", json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        return distribute.task_output_dir(run, strategy)

    assert output_dir(0) == run
    assert output_dir(2) == os.path.join(run, "workers", "worker-2")
    assert output_dir(2, strategy="mirrored") == run
    # A worker that was given its own --output-dir before, and left its
    # checkpoints there, resumes there.
    _, saver = _run_checkpoints(os.path.join(run, "checkpoints"))
    saver.save_epoch(1)
    assert output_dir(1) == run
    os.makedirs(os.path.join(run, "workers", "worker-1"))
    assert output_dir(1) == os.path.join(run, "workers", "worker-1")
