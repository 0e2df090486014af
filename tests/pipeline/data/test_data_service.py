"""Input preprocessing on tf.data service: a dispatcher and two workers as
separate processes on localhost, started as a cluster would start them."""

import collections
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import testlib
from alexnet_keras import image_spec as image_spec_lib
from pipeline.config import DataConfig
from pipeline.data import input_pipeline
from pipeline.data import service

SPEC = image_spec_lib.ImageSpec(*testlib.IMAGE_SIZE, testlib.CHANNELS)


def _service_command(*args):
    return [sys.executable, "-m", "pipeline.data.service", *args]


def _start(children, name, port, *args):
    children.start(name, _service_command(*args, "--port", str(port)),
                   env=testlib.child_env())
    service.check_reachable(f"localhost:{port}", wait_seconds=120)


@pytest.fixture()
def dispatcher(tmp_path, free_port):
    """A dispatcher process; yields its address and the `Children` to add workers to."""
    port = free_port()
    with testlib.Children(tmp_path) as children:
        _start(children, "dispatcher", port, "dispatcher")
        yield f"localhost:{port}", children


def _start_worker(children, name, dispatcher_address, port):
    _start(children, name, port, "worker", "--dispatcher", dispatcher_address,
           "--worker-address", "localhost")


def _cpu_seconds(children, *names):
    """User and system CPU time of the named children so far, from /proc."""
    total = 0
    for name in names:
        with open(f"/proc/{children.processes[name].pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def test_one_epoch_through_the_service_reads_every_training_example_once(
        dispatcher, digits, free_port):
    address, children = dispatcher
    for name in ("worker0", "worker1"):
        _start_worker(children, name, address, free_port())
    data_config = DataConfig(data_service=f"grpc://{address}")
    workers_before = [_cpu_seconds(children, name) for name in ("worker0", "worker1")]
    batches = input_pipeline.distribute_dataset(
        tf.distribute.get_strategy(), digits, "train", SPEC, 1, training=True,
        data_config=data_config, seed=3, repeat=True)
    labels = collections.Counter(int(label[0]) for _, label in batches)
    expected = collections.Counter(int(label) for _, label in digits.records("train"))
    # One pass, each example once: a repeat would run past the end.
    assert labels == expected and sum(labels.values()) == digits.num_examples("train")
    # Both workers did a share of the work (the dispatcher dealt each a shard
    # file): decoding and cropping hundreds of images took each a tenth of a
    # second or more of CPU (measured 0.15 to 0.83 s), where an idle worker
    # takes a few ms; a tf.data shuffle of the files left one idle.
    spent = [_cpu_seconds(children, name) - before
             for name, before in zip(("worker0", "worker1"), workers_before)]
    assert min(spent) > 0.05, spent


def test_the_service_preprocesses_as_the_local_pipeline(dispatcher, digits, free_port):
    address, children = dispatcher
    _start_worker(children, "worker0", address, free_port())
    local, remote = (
        next(iter(input_pipeline.make_dataset(
            digits, "train", SPEC, 8, training=True, seed=3,
            data_config=DataConfig(data_service=data_service))))
        for data_service in (None, f"grpc://{address}"))
    # One worker reading one pass: the same order, crops and flips as here.
    np.testing.assert_allclose(remote[0].numpy(), local[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(remote[1].numpy(), local[1].numpy())


@pytest.mark.parametrize("address,message", [
    ("localhost", "must be a dispatcher address, grpc://HOST:PORT"),
    ("http://localhost:80", "must be a dispatcher address, grpc://HOST:PORT"),
    ("grpc://localhost:99999", "must be a dispatcher address, grpc://HOST:PORT"),
    ("grpc://127.0.0.1:1", "no tf.data service dispatcher answers at data_service="),
])
def test_a_bad_or_absent_dispatcher_is_one_line(address, message):
    with pytest.raises(service.ConfigError, match=message.replace(".", r"\.")) as error:
        service.check_reachable(address)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("args,message", [
    (["worker", "--port", "5051"], "the following arguments are required: --dispatcher"),
    (["worker", "--dispatcher", "nowhere"], "expected HOST:PORT, got 'nowhere'"),
    (["dispatcher", "--port", "70000"], "expected a port number, got '70000'"),
])
def test_the_command_refuses_bad_arguments_in_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_status:
        service.main(args)
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_lost_service_worker_stops_the_run_to_be_resumed(tmp_path, dispatcher, digits_dir,
                                                           free_port):
    address, children = dispatcher
    _start_worker(children, "worker0", address, free_port())
    run_dir = tmp_path / "run"
    # 31 steps of 46 are the 1426 training digits: the epoch needs every one.
    command = [sys.executable, "-m", "pipeline.run", "--ingest-dir", digits_dir,
               "--export-dir", str(tmp_path / "models"), "--output-dir", str(run_dir),
               "--image-size", "67", "--batch-size", "46", "--epochs", "1",
               "--checkpoint-every-steps", "2", "--data-service", f"grpc://{address}",
               "--data-service-timeout", "10", "--no-ten-crop"]
    run = children.start("run", command, cwd=tmp_path, env=testlib.child_env())
    children.wait_for_file(str(run_dir / "checkpoints" / "steps" / "ckpt-2.index"),
                           timeout=600)
    # The only worker that holds the epoch's shards dies; another one comes.
    _start_worker(children, "worker1", address, free_port())
    children.processes["worker0"].kill()
    assert run.wait(timeout=600) == 138
    last_line = children.output("run").strip().splitlines()[-1]
    assert last_line.startswith(f"error: no training step finished in 10 s with the tf.data "
                                f"service at grpc://{address} (a service worker lost")
    assert last_line.endswith("run the same command to resume from the last checkpoint "
                              "(exit status 138)")

    resumed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                             env=testlib.child_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming inside epoch 1 with a data service" in resumed.stderr
    assert os.path.exists(run_dir / "metrics.json")
