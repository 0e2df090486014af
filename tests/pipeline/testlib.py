"""Helpers shared by the pipeline tests: plain functions, no state.

Image files (`encode`, `coloured`), the digits splits as arrays, the fc8 fit
that gives a d2l AlexNet a clear accuracy in seconds, event files read as
TensorBoard reads them (`tensorboard_scalars`, ...), `ServingSession`, which
loads an export the way TF Serving does, `RUNTIMES`, which run the other
exports in their own runtimes, and `Children`, which runs the
command line in subprocesses and always kills them. The objects made once per
session (the digits ingest, the fitted weights, the export) are fixtures in
conftest.py.
"""

import contextlib
import glob
import io
import os
import subprocess
import sys
import time

import keras
import numpy as np
import onnxruntime
import tensorflow as tf
import tensorflow_datasets as tfds
from ai_edge_litert import interpreter as litert
from PIL import Image
from sklearn.linear_model import LogisticRegression
from tensorboard.plugins.hparams import plugin_data_pb2

from alexnet_keras import AlexNet
from pipeline.data import preprocess_ops
from pipeline.data import input_pipeline
from pipeline.serving import runtimes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE_SIZE = (67, 67)
CHANNELS = 1
# Linux never hands out a pid at or above PID_MAX_LIMIT (2**22 on 64-bit
# kernels; /proc/sys/kernel/pid_max is at most that), so no process has this one.
UNUSED_PID = 2**30


def coloured(rng, channel, height, width):
    """Random dark pixels with `channel` raised by 160: an image of one colour."""
    pixels = rng.integers(20, 60, (height, width, 3), np.uint8)
    pixels[..., channel] += 160
    return pixels


def split_arrays(ingested, split, image_spec):
    """Images preprocessed for `image_spec` and labels of a split, in file order."""
    images, labels = [], []
    for batch_images, batch_labels in input_pipeline.make_dataset(
        ingested, split, image_spec, 256, training=False
    ):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


def encoded_split(ingested, split):
    """The ingested encoded images and labels of a split, in file order."""
    batches = list(ingested.encoded_batches(split, batch_size=1024))
    return (
        [image for images, _ in batches for image in images],
        np.concatenate([labels for _, labels in batches]),
    )


def digits_model(weights=None):
    """A fresh d2l AlexNet for digits at 67x67x1, with `weights` if given."""
    model = AlexNet(variant="d2l", num_classes=10, input_shape=(*IMAGE_SIZE, CHANNELS))
    if weights is not None:
        model.set_weights(weights)
    return model


def fit_weights(ingested):
    """Weights of a digits AlexNet whose fc8 is fitted to the ingested train split.

    Training the whole network to a clear accuracy takes minutes on two cores;
    fitting fc8 to the fc7 features of a random initialisation by logistic
    regression takes seconds and gives ~98% on digits. The d2l variant, because
    the paper's initialisation (biases 1, weights N(0, 0.01)) makes fc7 a
    constant plus a 1e-5 signal: a head fitted to that amplifies float32
    rounding into 1e-3 differences between batched and single predictions.
    """
    keras.utils.set_random_seed(0)
    model = digits_model()
    fit_fc8(model, ingested)
    return model.get_weights()


def fit_fc8(model, ingested):
    """Fits `model`'s fc8, in place, to its fc7 features of the train split."""
    features = keras.Model(model.inputs, model.get_layer("fc7").output)
    images, labels = split_arrays(ingested, "train", model.image_spec)
    train_features = features.predict(images, batch_size=128, verbose=0)
    mean, std = train_features.mean(axis=0), train_features.std(axis=0) + 1e-6
    classifier = LogisticRegression(max_iter=300).fit((train_features - mean) / std, labels)
    kernel = classifier.coef_.T / std[:, np.newaxis]
    bias = classifier.intercept_ - mean @ kernel
    model.get_layer("fc8").set_weights([kernel.astype("float32"), bias.astype("float32")])


def worse_model(weights):
    """The trained model with fc8's classes rotated by one: nearly always wrong."""
    model = digits_model(weights)
    kernel, bias = model.get_layer("fc8").get_weights()
    model.get_layer("fc8").set_weights([np.roll(kernel, 1, axis=1), np.roll(bias, 1)])
    return model


def encode(image, image_format):
    """`image` (HxWxC uint8) as the bytes of a `image_format` file: JPEG and PNG
    through TensorFlow, the others ("bmp", "gif", ...) through Pillow."""
    image = np.asarray(image, dtype=np.uint8)
    if image_format == "png":
        return tf.io.encode_png(image).numpy()
    if image_format == "jpeg":
        return tf.io.encode_jpeg(image, quality=95).numpy()
    buffer = io.BytesIO()
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(pixels).save(buffer, format=image_format.upper())
    return buffer.getvalue()


def digit_image(ingested, index, size, channels):
    """Test image `index` of digits, resized to `size` with `channels`: real content
    at a size and colour layout the model was not given."""
    encoded, labels = encoded_split(ingested, "test")
    image = tf.cast(preprocess_ops.decode_image(encoded[index], channels), tf.float32)
    image = tf.image.resize(image, size, method="nearest")
    return tf.cast(image, tf.uint8).numpy(), int(labels[index])


def preprocessed(encoded_images, image_spec):
    """Encoded images as a model for `image_spec` takes them: decoded and
    `preprocess_for_eval`, float32 [images, height, width, channels]."""
    return tf.stack(
        [
            preprocess_ops.preprocess_for_eval(
                preprocess_ops.decode_image(image, image_spec.channels), image_spec
            )
            for image in encoded_images
        ]
    ).numpy()


def keras_probabilities(model, encoded_images):
    """What the export must answer: decode, preprocess_for_eval, model, softmax."""
    images = preprocessed(encoded_images, model.image_spec)
    return tf.nn.softmax(model(images, training=False)).numpy()


def tensorboard_events(log_dir):
    """The summary values of the event files directly in `log_dir`, as
    (tag, step, value) in the order TensorBoard reads them: files by name
    (which begins with the time they were created), records in order."""
    events = []
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            events.extend((value.tag, event.step, value) for value in event.summary.value)
    return events


def tensorboard_scalars(log_dir):
    """{tag: {step: value}} of the scalars in `log_dir` as TensorBoard shows
    them: a step written again (by a resumed run) drops the values at and
    after it, as TensorBoard's data server preempts them."""
    scalars = {}
    for tag, step, value in tensorboard_events(log_dir):
        array = tf.make_ndarray(value.tensor)
        if array.ndim or array.dtype.kind != "f":
            continue
        series = scalars.setdefault(tag, {})
        for preempted in [earlier for earlier in series if earlier >= step]:
            del series[preempted]
        series[step] = float(array)
    return scalars


def tensorboard_images(log_dir):
    """{tag: {step: pixels}} of the images in `log_dir`."""
    images = {}
    for tag, step, value in tensorboard_events(log_dir):
        if value.metadata.plugin_data.plugin_name == "images":
            # [width, height, encoded image]
            encoded = tf.make_ndarray(value.tensor)[2]
            images.setdefault(tag, {})[step] = tf.io.decode_image(encoded).numpy()
    return images


def tensorboard_hparams(log_dir):
    """The hyperparameters {name: value} of the HParams session that
    `log_dir` starts (the newest start), None if it starts none."""
    hparams = None
    for _, _, value in tensorboard_events(log_dir):
        if value.metadata.plugin_data.plugin_name != "hparams":
            continue
        data = plugin_data_pb2.HParamsPluginData.FromString(
            value.metadata.plugin_data.content
        )
        if data.HasField("session_start_info"):
            hparams = {name: getattr(hparam, hparam.WhichOneof("kind"))
                       for name, hparam in data.session_start_info.hparams.items()}
    return hparams


# How far a probability (softmax of the logits) of the LiteRT or ONNX export may
# be from the Keras model's. Measured over the 194 digits test images with
# fitted 67x67x1 models (logits up to 19): LiteRT 9.4e-5 (paper), 2.7e-5 (d2l),
# ONNX 1.3e-5 and 1.2e-5; logits differed by at most 8.3e-4 (LiteRT, paper).
# Other float32 kernels summing in another order; about five times the largest.
RUNTIME_TOLERANCE = 5e-4


def _runner(export_format):
    return lambda path, images: runtimes.Runner(export_format, path)(images)


# Logits of a LiteRT or ONNX file, run by its runtime, by export format.
RUNTIMES = {export_format: _runner(export_format) for export_format in runtimes.FILE_NAMES}


def input_of(export_format, path):
    """`(name, shape)` of the input of the LiteRT or ONNX file at `path`; the
    shape as a list, with None for a dimension of any size."""
    if export_format.startswith("litert"):
        (image_input,) = litert.Interpreter(model_path=path).get_input_details()
        shape = image_input["shape_signature"].tolist()
        return image_input["name"], [None if size == -1 else size for size in shape]
    (image_input,) = onnxruntime.InferenceSession(
        path, providers=["CPUExecutionProvider"]).get_inputs()
    return image_input.name, [size if isinstance(size, int) else None
                              for size in image_input.shape]


class ServingSession:
    """An export loaded the way TF Serving loads it.

    TF Serving runs TensorFlow's SavedModel loader with the tag "serve" into a
    graph and a session, then feeds and fetches the tensor names a SignatureDef
    lists: no Python `tf.function` is involved, so the export must stand alone.
    """

    def __init__(self, path):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(
                self.session, ["serve"], path
            )
        self.signatures = meta_graph.signature_def

    def run(self, inputs, signature_name="serving_default"):
        signature = self.signatures[signature_name]
        feed = {signature.inputs[name].name: value for name, value in inputs.items()}
        fetches = {name: info.name for name, info in signature.outputs.items()}
        return self.session.run(fetches, feed)

    def close(self):
        self.session.close()


def child_env(**variables):
    """os.environ plus `variables`, with this checkout first on PYTHONPATH: a child
    started in a temporary directory must import the code under test, not
    whatever copy the virtualenv's editable install points at."""
    path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **variables}


def run_on_a_full_disk(command, cwd, limit_bytes):
    """`command` in `cwd` with writes past `limit_bytes` failing (RLIMIT_FSIZE:
    EFBIG, as ENOSPC on a full disk, with Python ignoring SIGXFSZ); returns
    (exit status, the last line of its stderr)."""
    import resource

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd,
                            env=child_env(), timeout=600, preexec_fn=limited)
    return result.returncode, (result.stderr.strip().splitlines() or [""])[-1]


# Runs `cli.main(<command>, <args>)`, as `python -m pipeline.<command> <args>`
# does, with <target> ("module:Class.method") replaced by a wrapper that, on its
# <calls>-th call, returns from the original, creates <marker> and then waits for
# good: the test kills the child at a known point. With <marker> "SIGTERM" it
# sends itself SIGTERM there instead, and goes on after a pause long enough for
# a thread that polls each second to see it. (`cli.main`, not runpy: runpy would
# run a second copy of the module, which the patch would not reach.)
_PAUSED_MAIN = """
import importlib, os, signal, sys, threading, time
from pipeline import environment
environment.prepare()
command, target, calls, marker, *args = sys.argv[1:]
owner_name, _, path = target.partition(":")
*parents, name = path.split(".")
owner = importlib.import_module(owner_name)
for parent in parents:
    owner = getattr(owner, parent)
original = getattr(owner, name)
done = []

def paused(*call_args, **call_kwargs):
    result = original(*call_args, **call_kwargs)
    done.append(None)
    if len(done) == int(calls) and marker == "SIGTERM":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2.5)
    elif len(done) == int(calls):
        open(marker, "w").close()
        threading.Event().wait()
    return result

setattr(owner, name, paused)
from pipeline.cli import main as cli
sys.exit(cli.main(command, args))
"""


def paused_command(command, target, calls, marker, *args):
    """A command line that runs `python -m pipeline.<command> *args` but stops for
    good right after `target` ("package.module:Class.method") has returned for the
    `calls`-th time, and says so by creating the file `marker`."""
    return [sys.executable, "-c", _PAUSED_MAIN, command, target, str(calls), marker, *args]


def sigterm_command(command, target, calls, *args):
    """A command line that runs `python -m pipeline.<command> *args` and sends
    itself SIGTERM right after `target` has returned for the `calls`-th time,
    as Kubernetes does to a pod it stops."""
    return paused_command(command, target, calls, "SIGTERM", *args)


class Children(contextlib.AbstractContextManager):
    """Child processes that are killed and reaped on the way out, whatever happens.

    Each child's output goes to a file, not a pipe: a child never blocks on a
    full pipe while the test waits on another one.
    """

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.processes = {}

    def start(self, name, command, **kwargs):
        log = open(os.path.join(self.log_dir, f"{name}.log"), "w")
        with log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        self.processes[name] = process
        return process

    def output(self, name):
        with open(os.path.join(self.log_dir, f"{name}.log")) as file:
            return file.read()

    def wait(self, timeout):
        """Waits until every child has ended, `timeout` seconds in all, or until one
        fails (its peers may then wait for it forever); asserts they all exit 0."""
        deadline = time.monotonic() + timeout
        while any(process.poll() is None for process in self.processes.values()):
            if any(process.poll() for process in self.processes.values()):
                break
            assert time.monotonic() < deadline, f"still running after {timeout} s"
            time.sleep(0.2)
        for name, process in self.processes.items():
            assert process.poll() == 0, f"{name} ({process.poll()}):\n{self.output(name)[-3000:]}"

    def wait_for_file(self, path, timeout):
        """Waits until `path` exists, while every child is still running."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} ended:\n{self.output(name)[-3000:]}"
            assert time.monotonic() < deadline, f"no {path} after {timeout} s"
            time.sleep(0.1)

    def __exit__(self, *exc_info):
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            process.wait()
        return None


def tfds_metadata(data_dir, name, split_sizes):
    """Writes the dataset_info.json a prepared dataset would have, so that
    tfds.testing.mock_data knows the dataset's splits."""
    builder = tfds.builder(name, data_dir=str(data_dir))
    builder.info.set_splits(
        tfds.core.SplitDict(
            [
                tfds.core.SplitInfo(name=split, shard_lengths=[size], num_bytes=0)
                for split, size in split_sizes.items()
            ]
        )
    )
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    return builder.info
