"""The benchmark commands run end to end and report what they measured.

They are smoke runs at tiny sizes: speeds are the benchmarks' output, never
asserted here.
"""

import json
import os
import re
import subprocess
import sys

import keras
import pytest

from benchmarks import convolutions
from benchmarks import profile


_IMPORT_CHECK = """
import os, sys
import benchmarks.convolutions, benchmarks.data_service, benchmarks.input_pipeline
import benchmarks.profile
import benchmarks.recipes, benchmarks.runtimes, benchmarks.scaling, benchmarks.serving
import benchmarks.train
assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ, "importing set TF_ENABLE_ONEDNN_OPTS"
assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ, "importing set TF_CPP_MIN_LOG_LEVEL"
heavy = sorted({"pipeline", "tensorflow", "keras"} & set(sys.modules))
assert not heavy, f"importing the benchmarks imported {heavy}"
from benchmarks import common
common.prepare_process()
assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
"""


def test_importing_a_benchmark_sets_nothing_until_prepare_process():
    # A fresh process with neither variable set: this one has TensorFlow loaded
    # and its environment set up by conftest.
    env = {name: value for name, value in os.environ.items()
           if name not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    result = subprocess.run([sys.executable, "-c", _IMPORT_CHECK], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(
    "node,op_type,expected",
    [
        ("alexnet_paper_1/conv2_1/Relu", "_MklNativeFusedConv2D", ("conv2", "forward")),
        ("gradient_tape/alexnet_paper_1/conv2_1/convolution/Conv2DBackpropFilter",
         "_MklNativeConv2DBackpropFilterWithBias", ("conv2", "grad weights")),
        ("gradient_tape/alexnet_paper_1/conv2_1/convolution/Conv2DBackpropInput",
         "_MklNativeConv2DBackpropInput", ("conv2", "grad input")),
        ("gradient_tape/alexnet_paper_1/conv3_1/ReluGrad", "ReluGrad", ("conv3", "grad input")),
        ("gradient_tape/alexnet_paper_1/fc6_1/MatMul/MatMul", "_MklMatMul", ("fc6", "grad input")),
        ("gradient_tape/alexnet_paper_1/fc6_1/MatMul/MatMul_1", "_MklMatMul",
         ("fc6", "grad weights")),
        ("alexnet_paper_1/lrn1_1/LRN", "LRN", ("lrn1", "forward")),
        ("gradient_tape/alexnet_paper_1/lrn1_1/LRNGrad", "LRNGrad", ("lrn1", "grad input")),
        ("sgd/Mul_12", "Mul", ("optimizer", "update")),
        ("momentum_sgd/update_0_10/ResourceApplyKerasMomentum", "ResourceApplyKerasMomentum",
         ("optimizer", "update")),
        ("IteratorGetNext", "IteratorGetNext", ("input", "other")),
        ("sparse_categorical_crossentropy/Sum", "Sum", ("loss and other", "other")),
    ],
)
def test_ops_are_attributed_to_their_layer_and_pass(node, op_type, expected):
    assert profile.classify(node, op_type) == expected


def _rows(output):
    """{row name: total ms} from the breakdown table."""
    rows = {}
    for line in output.splitlines():
        match = re.match(r"^(\w[\w ]*?)\s{2,}.*?(\d+\.\d)\s+(\d+\.\d)%$", line)
        if match:
            rows[match.group(1)] = float(match.group(2))
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_profile_breaks_a_real_step_down_by_layer(tmp_path, capsys, precision):
    logdir = tmp_path / "trace"
    flags = ["--mixed-precision"] if precision == "bfloat16" else []
    assert profile.main(["--steps", "1", "--warmup-steps", "1", "--batch-size", "2",
                         "--images", "30", "--logdir", str(logdir), *flags]) == 0
    output = capsys.readouterr().out
    assert f"(227, 227, 3), {precision}, batch 2" in output
    # The process's policy is back to what it was.
    assert keras.mixed_precision.global_policy().name == "float32"
    rows = _rows(output)
    layers = ["conv1", "lrn1", "pool1", "conv2", "lrn2", "pool2", "conv3", "conv4",
              "conv5", "pool5", "fc6", "fc7", "fc8", "optimizer"]
    assert all(rows.get(layer, 0) > 0 for layer in layers), rows
    assert rows["all ops"] >= sum(rows[layer] for layer in layers) - 0.5
    # The trace stays where TensorBoard's Profile tab reads it.
    assert list(logdir.rglob("*.xplane.pb"))
    assert re.search(r"Step wall time \d+ ms", output)


def test_convolution_shapes_and_flops_are_the_models():
    layers = convolutions.conv_layers("paper", (227, 227, 3))
    assert [layer.name for layer in layers] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    # conv1: 55x55 outputs of 96 filters, each 11x11x3 multiply-adds; conv2 keeps 27x27.
    assert layers[0] == ("conv1", (227, 227, 3), (55, 55, 96), (11, 11, 3, 96), 4, "valid",
                         55 * 55 * 96 * 11 * 11 * 3)
    assert layers[1] == ("conv2", (27, 27, 96), (27, 27, 256), (5, 5, 96, 256), 1, "same",
                         27 * 27 * 256 * 5 * 5 * 96)


@pytest.mark.slow
def test_convolution_benchmark_times_every_pass_beside_pytorch(capsys):
    assert convolutions.main(["--variant", "d2l", "--precision", "float32",
                              "--batch-size", "2", "--repeats", "1"]) == 0
    output = capsys.readouterr().out
    assert re.search(r"^d2l AlexNet \(224, 224, 1\), float32, batch 2; matmul peak \d+ GFLOP/s$",
                     output, re.M), output
    tf_total = torch_total = 0.0
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        cells = next(line for line in output.splitlines() if line.startswith(layer)).split()
        if layer == "conv1":
            # No input gradient: conv1's input is the data.
            assert cells[5] == "-"
            cells = cells[:5] + cells[6:]
        # GFLOP, then (ms, share of peak, PyTorch ms) per pass.
        assert len(cells) == 2 + 3 * (2 if layer == "conv1" else 3)
        passes = [cells[index:index + 3] for index in range(2, len(cells), 3)]
        assert all(float(ms) > 0 and share.endswith("%") and float(torch_ms) > 0
                   for ms, share, torch_ms in passes)
        tf_total += sum(float(ms) for ms, _, _ in passes)
        torch_total += sum(float(torch_ms) for _, _, torch_ms in passes)
    # d2l's conv2 at batch 2: 26x26 outputs of 256 filters, 5x5x96 each.
    conv2 = next(line for line in output.splitlines() if line.startswith("conv2"))
    assert float(conv2.split()[1]) == pytest.approx(2 * 2 * 26 * 26 * 256 * 5 * 5 * 96 / 1e9,
                                                    abs=0.05)
    total = re.search(r"^All passes: (\d+) ms, \d+% of the peak; at most (\d+\.\d) images/s",
                      output, re.M)
    assert float(total.group(1)) == pytest.approx(tf_total, abs=1)
    assert float(total.group(2)) == pytest.approx(2 / float(total.group(1)) * 1000, rel=0.05)
    ratio = re.search(r"^PyTorch: (\d+) ms; PyTorch / TensorFlow (\d+\.\d\d)x$", output, re.M)
    assert float(ratio.group(1)) == pytest.approx(torch_total, abs=1)
    assert float(ratio.group(2)) == pytest.approx(torch_total / tf_total, rel=0.05, abs=0.02)


def _run(*command):
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_training_benchmark_prints_every_row():
    # Its own process: it splits the CPU for a two-replica MirroredStrategy,
    # whose collectives must not meet the test process's other strategies.
    output = _run("benchmarks.train", "--steps", "1", "--warmup-steps", "1",
                  "--batch-size", "2", "--images", "30", "--no-xla", "--no-torch-compile",
                  "--precision", "float32", "--precision", "bfloat16")
    peaks = re.search(r"matmul peak float32 (\d+) GFLOP/s, bfloat16 (\d+) GFLOP/s", output)
    assert float(peaks.group(1)) > 0 and float(peaks.group(2)) > 0
    assert re.search(r"; flags: \S+", output)
    for row, precision in (
        ("paper (227, 227, 3) Keras, XLA off", "float32"),
        ("paper (227, 227, 3) Keras, XLA off", "bfloat16"),
        ("d2l (224, 224, 1) Keras, XLA off", "float32"),
        ("d2l (224, 224, 1) Keras step, ready tensors", "bfloat16"),
        ("d2l (224, 224, 1) PyTorch 2.13 eager", "bfloat16"),
        ("paper_2gpu (227, 227, 3) Keras, XLA off", "bfloat16"),
        ("paper_2gpu (227, 227, 3) PyTorch 2.13 eager", "float32"),
        ("paper (227, 227, 3) Keras, --cpu-replicas 2", "float32"),
    ):
        line = next(line for line in output.splitlines()
                    if line.startswith(row) and line[len(row):].split()[0] == precision)
        images_per_second, gflops = (float(value) for value in line[len(row):].split()[1:3])
        assert images_per_second > 0 and gflops > 0
        # Every row has its ratio to the best PyTorch reference of its precision.
        assert re.search(r"\d+\.\d\dx$", line)
    for precision in ("float32", "bfloat16"):
        assert re.search(rf"^paper_2gpu against paper, {precision}, XLA off: \d+\.\d\dx the "
                         "images/s$", output, re.M), output
    assert re.search(r"Inference, batch 2, float32: paper \d+\.\d images/s, paper_2gpu "
                     r"\d+\.\d images/s, d2l \d+\.\d images/s", output)
    assert re.search(r"batch 1: \d+ ms, batch 2: \d+ ms", output)


@pytest.mark.slow
def test_input_pipeline_benchmark_prints_its_ratios():
    output = _run("benchmarks.input_pipeline", "--images", "32", "--steps", "2",
                  "--batch-size", "4", "--pipeline-batches", "3", "--resume-step", "5")
    pipeline = float(re.search(r"input pipeline alone.*?(\d+\.\d)$", output, re.M).group(1))
    fed = float(re.search(r"training fed by the pipeline.*?(\d+\.\d)$", output, re.M).group(1))
    ratio = float(re.search(r"pipeline / pipeline-fed training\s+(\d+\.\d)x", output).group(1))
    assert pipeline > 0 and fed > 0
    assert ratio == pytest.approx(pipeline / fed, rel=0.02, abs=0.06)
    for row in ("first batch of an epoch (s)", "first batch resumed at step 5 (s)",
                "decoding those 5 steps' batches (s)"):
        assert float(re.search(rf"{re.escape(row)}\s+(\d+\.\d\d)$", output, re.M).group(1)) > 0


@pytest.mark.slow
def test_ingest_benchmark_prints_its_rates():
    output = _run("benchmarks.ingest", "--images", "20")
    assert re.search(r"^CPU: .+, \d+ cores$", output, re.M)
    match = re.search(r"^20 JPEGs of 500x375, \d+ KB each: \d+\.\d+ s, (\d+\.\d) images/s, "
                      r"(\d+\.\d) MB/s$", output, re.M)
    assert match and float(match.group(1)) > 0 and float(match.group(2)) > 0, output


@pytest.mark.slow
def test_scaling_benchmark_compares_two_workers_with_one():
    output = _run("benchmarks.scaling", "--image-size", "67", "--batch-size", "4",
                  "--steps", "2", "--warmup-steps", "1", "--all-reduce", "ring")
    # The paper model at 67x67: 21.6 million weights (its first dense layer
    # shrinks with the input).
    assert re.search(r"^gradients all-reduced per step: 21,622,154 float32 = 86 MB$",
                     output, re.M), output
    rows = {int(line.split()[0]): [float(value) for value in line.split()[1:4]]
            for line in output.splitlines() if re.match(r"^\s+[12]\s", line)}
    bandwidth = float(re.search(r"^\s+2\s.*\s(\d+\.\d+)$", output, re.M).group(1))
    # Step seconds and images/s for both; a cluster of one all-reduces nothing.
    assert set(rows) == {1, 2} and all(row[0] > 0 and row[1] > 0 for row in rows.values())
    assert rows[2][2] > 0 and bandwidth > 0
    assert re.search(r"^\s+1\s.*\s-$", output, re.M), output
    efficiency = float(re.search(r"2 workers against 1: (\d+\.\d+)$", output, re.M).group(1))
    assert efficiency == pytest.approx(
        (rows[2][1] / 2) / rows[1][1], rel=0.05, abs=0.01)


@pytest.mark.slow
def test_serving_benchmark_prints_every_batch_and_the_rest_load():
    output = _run("benchmarks.serving", "--image-size", "67", "--calls", "3", "--clients", "2")
    assert re.search(r"^CPU: .+, \d+ cores; paper AlexNet at 67x67x3", output, re.M), output
    lines = output.splitlines()
    tables = [index for index, line in enumerate(lines) if line.split()[:1] == ["batch"]]
    assert len(tables) == 2, output
    # serving_default against the bare forward pass, then serving_ten_crop
    # against serving_default.
    for table, batches in ((tables[0], (1, 8, 32, 64)), (tables[1], (1, 8))):
        rows = lines[table + 1:table + 1 + len(batches)]
        assert [int(row.split()[0]) for row in rows] == list(batches), output
        for row in rows:
            values = row.split()[1:]
            served, median, p99, reference, ratio = (float(value) for value in values[:5])
            assert served > 0 and 0 < median <= p99 and reference > 0
            assert ratio == pytest.approx(served / reference, rel=0.02, abs=0.01)
            if table == tables[0]:  # and the share of the request outside the model
                assert float(values[5].rstrip("%")) == pytest.approx(
                    100 * (1 - served / reference), abs=2)
    assert "ten-crop img/s" in lines[tables[1]]
    for clients in (1, 2):
        assert re.search(rf"^REST, {clients} client\(s\), 8 images per request: \d+\.\d "
                         r"images/s, median \d+ ms, p99 \d+ ms$", output, re.M), output
    stages = lines[lines.index("One image, stage by stage (median ms):") + 1:]
    times = {line[:54].strip(): float(line[54:]) for line in stages}
    assert list(times) == ["read the header", "decode", "decode and preprocess",
                           "header, decode and preprocess, isolated by tf.data",
                           "serving_default", "bare forward pass"], output
    assert all(milliseconds > 0 for milliseconds in times.values()), output


@pytest.mark.slow
def test_runtimes_benchmark_prints_each_file_against_its_float32_form():
    output = _run("benchmarks.runtimes", "--image-size", "67", "--calls", "2")
    assert re.search(r"^CPU: .+, \d+ cores; paper AlexNet at 67x67x3", output, re.M), output
    lines = output.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("file "))
    rows = {line.split()[0]: [float(value) for value in line.split()[1:]]
            for line in lines[header + 1:header + 5]}
    assert list(rows) == ["model.tflite", "model.onnx", "model_int8.tflite", "model_int8.onnx"]
    for name, reference in (("model_int8.tflite", "model.tflite"),
                            ("model_int8.onnx", "model.onnx")):
        size, size_ratio, batch1, ratio1, batch32, ratio32 = rows[name]
        assert rows[reference][1::2] == [1.0, 1.0, 1.0]
        assert size_ratio == pytest.approx(size / rows[reference][0], abs=0.01)
        # int8 weights: about a quarter of the bytes (a fact of the file, not a timing).
        assert 0.2 < size_ratio < 0.3
        assert ratio1 == pytest.approx(batch1 / rows[reference][2], rel=0.02, abs=0.01)
        assert ratio32 == pytest.approx(batch32 / rows[reference][4], rel=0.02, abs=0.01)


@pytest.mark.slow
def test_recipes_benchmark_prints_each_runs_accuracies_side_by_side(tmp_path):
    output = _run("benchmarks.recipes", "--epochs", "1", "--set", "steps-per-epoch=2",
                  "--set", f"ingest-dir={tmp_path / 'digits'}", "--keep", str(tmp_path))
    assert re.search(r"^Recipes on .+, \d+ cores; seed 1, 1 epochs", output, re.M), output
    lines = output.splitlines()
    header = lines.index("digits: validation accuracy after each epoch")
    assert lines[header + 1].split() == ["epoch", "previous_default", "default"]
    rows = {line.split()[0] + (" ref" if line.startswith("vs ref") else ""): line.split()
            for line in lines[header + 2:header + 6]}
    # The figures are the runs' own, as they wrote them.
    for column, name in ((1, "previous_default"), (2, "default")):
        run_dir = tmp_path / f"{name}-digits"
        with open(run_dir / "history.csv") as file:
            val_accuracy = float(file.read().splitlines()[1].split(",")[4])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert float(rows["1"][column]) == pytest.approx(val_accuracy, abs=5e-5)
        assert float(rows["test"][column]) == pytest.approx(metrics["test_accuracy"], abs=5e-5)
        assert rows["images"][column] == "194"
    assert float(rows["vs ref"][2 + 1]) == pytest.approx(
        float(rows["test"][2]) - float(rows["test"][1]), abs=2e-4)


def test_data_service_benchmark_compares_the_service_with_local_preprocessing():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.data_service", "--steps", "2", "--batch-size", "4",
         "--image-size", "67"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    local, service = (next(line for line in lines if line.startswith(name))
                      for name in ("local ", "service, 2 workers "))
    # The service's workers spent CPU on the images, and local preprocessing none.
    assert float(local.split()[-1]) == 0.0 and float(service.split()[-1]) > 0.0
    assert re.search(r"^service / local: images/s x[\d.]+, trainer CPU per image x[\d.]+$",
                     result.stdout, re.M)
