import os
import re
import socket
import struct
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import testlib
from alexnet_keras import AlexNet
from alexnet_keras import ImageSpec
from pipeline.cli import parsers
from pipeline.serving import builder
from pipeline.serving import contract
from pipeline.serving import pusher
from pipeline.storage import saved_models
from pipeline.data import image_formats
from pipeline.data import preprocess_ops
from pipeline.errors import PipelineError

CLASS_NAMES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def served(trained_export):
    """The trained digits export, loaded like TF Serving loads it."""
    session = testlib.ServingSession(trained_export)
    yield session
    session.close()


def tiny_model():
    return AlexNet(variant="paper", num_classes=3, input_shape=(67, 67, 3))


def test_layout_and_signatures(trained_export, served):
    version_dir = trained_export
    assert os.path.basename(version_dir) == "1"
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    assert os.path.isdir(os.path.join(version_dir, "variables"))
    assert sorted(os.listdir(os.path.dirname(version_dir))) == ["1"]

    signatures = served.signatures
    assert {"serving_default", "serving_pixels", "serving_ten_crop"} <= set(signatures)
    default = signatures["serving_default"]
    assert list(default.inputs) == ["image_bytes"]
    assert default.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in default.inputs["image_bytes"].tensor_shape.dim] == [-1]
    pixels = signatures["serving_pixels"]
    assert list(pixels.inputs) == ["pixels"]
    assert pixels.inputs["pixels"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in pixels.inputs["pixels"].tensor_shape.dim] == [-1, 67, 67, 1]
    ten_crop = signatures["serving_ten_crop"]
    assert list(ten_crop.inputs) == ["image_bytes"]
    assert ten_crop.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    for signature in (default, pixels, ten_crop):
        outputs = signature.outputs
        assert set(outputs) == set(contract.OUTPUTS)
        assert outputs["probabilities"].dtype == tf.float32.as_datatype_enum
        assert outputs["class_id"].dtype == tf.int64.as_datatype_enum
        assert outputs["class_name"].dtype == tf.string.as_datatype_enum
        assert [d.size for d in outputs["top_k_class_name"].tensor_shape.dim] == [-1, 5]


def test_serving_default_matches_the_keras_model(trained_model, digits, served):
    ingested = digits
    class_names = ingested.class_names
    images = []
    # Real digits at sizes and in formats the model never saw, grey and colour.
    for index, size, channels, image_format in (
        (0, (30, 41), 1, "png"),
        (1, (120, 90), 3, "jpeg"),
        (2, (67, 67), 1, "jpeg"),
        (3, (200, 160), 3, "png"),
    ):
        image, _ = testlib.digit_image(ingested, index, size, channels)
        images.append(testlib.encode(image, image_format))

    outputs = served.run({"image_bytes": images})
    expected = testlib.keras_probabilities(trained_model, images)
    probabilities = outputs["probabilities"]
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    argmax = probabilities.argmax(axis=1)
    np.testing.assert_array_equal(outputs["class_id"], argmax)
    assert [name.decode() for name in outputs["class_name"]] == [
        class_names[i] for i in argmax
    ]
    # What the four distorted digits are named is not asserted: the fitted fc8
    # reads random conv features, which blocky upscaled digits move (measured:
    # 55-68% right at these sizes, 97.5% on the test split as ingested). The
    # served model's knowledge is asserted on the test split as ingested.
    test_images, test_labels = testlib.encoded_split(ingested, "test")
    served_ids = served.run({"image_bytes": list(test_images[:40])})["class_id"]
    assert np.mean(served_ids == np.asarray(test_labels[:40])) >= 0.9
    order = np.argsort(-probabilities, axis=1)[:, :5]
    np.testing.assert_allclose(
        outputs["top_k_probabilities"], np.take_along_axis(probabilities, order, axis=1)
    )
    assert outputs["top_k_class_name"][:, 0].tolist() == outputs["class_name"].tolist()


def test_serving_pixels_agrees_with_serving_default(digits, served):
    ingested = digits
    image, _ = testlib.digit_image(ingested, 5, (67, 67), 1)
    from_bytes = served.run({"image_bytes": [testlib.encode(image, "png")]})
    from_pixels = served.run(
        {"pixels": image[np.newaxis].astype(np.float32)},
        signature_name="serving_pixels",
    )
    np.testing.assert_allclose(
        from_pixels["probabilities"], from_bytes["probabilities"], atol=1e-5
    )
    assert from_pixels["class_name"].tolist() == from_bytes["class_name"].tolist()


def test_serving_ten_crop_averages_the_softmax_of_the_ten_patches(
    trained_model, digits, served
):
    images = []
    for index, size, channels, image_format in ((0, (80, 100), 1, "png"),
                                                (1, (120, 90), 3, "jpeg")):
        image, _ = testlib.digit_image(digits, index, size, channels)
        images.append(testlib.encode(image, image_format))
    outputs = served.run({"image_bytes": [images[0], b"junk", images[1]]},
                         signature_name="serving_ten_crop")

    spec = trained_model.image_spec
    expected = []
    for encoded in images:
        patches = preprocess_ops.ten_crops(
            preprocess_ops.decode_image(encoded, spec.channels), spec)
        assert patches.shape == (10, *spec.shape)
        expected.append(tf.nn.softmax(trained_model(patches, training=False)).numpy().mean(0))
    assert outputs["valid"].tolist() == [True, False, True]
    assert outputs["error"][1].decode() == "not a JPEG, PNG, GIF, BMP or WebP image"
    np.testing.assert_allclose(outputs["probabilities"][[0, 2]], expected, atol=1e-4)
    assert np.all(outputs["probabilities"][1] == 0)
    assert outputs["class_id"].tolist() == [int(np.argmax(expected[0])), -1,
                                            int(np.argmax(expected[1]))]
    # Not the central crop's answer: ten patches were averaged.
    central = served.run({"image_bytes": images})["probabilities"]
    assert np.abs(central - np.asarray(expected)).max() > 1e-3


def _blank_png(height, width):
    """A valid grey PNG of zeros, `height` x `width`: a 20000x20000 one is a few
    hundred KB that decode to 400 MB."""

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


def test_each_image_is_answered_on_its_own(digits, served):
    image, _ = testlib.digit_image(digits, 0, (30, 30), 1)
    png, jpeg = testlib.encode(image, "png"), testlib.encode(np.tile(image, 3), "jpeg")
    batch = [png, b"this is not an image", jpeg, jpeg[:40], png[:len(png) - 20],
             _blank_png(20000, 20000), _blank_png(1, 20000), png]
    outputs = served.run({"image_bytes": batch})
    alone = served.run({"image_bytes": [png, jpeg]})
    assert outputs["valid"].tolist() == [True, False, True, False, False, False, False, True]
    assert [error.decode() for error in outputs["error"]] == [
        "", "not a JPEG, PNG, GIF, BMP or WebP image", "",
        "truncated or malformed image header", "corrupt or truncated image data",
        "over 50,000,000 pixels", "sides more than 20:1", "",
    ]
    # The readable images get the answers they get alone; the others nothing.
    for name in contract.OUTPUTS:
        np.testing.assert_array_equal(outputs[name][[0, 2, 7]],
                                      alone[name][[0, 1, 0]], err_msg=name)
    bad = [1, 3, 4, 5, 6]
    assert np.all(outputs["probabilities"][bad] == 0)
    assert np.all(outputs["top_k_probabilities"][bad] == 0)
    assert outputs["class_id"][bad].tolist() == [-1] * 5
    assert set(outputs["class_name"][bad].tolist()) == {b""}

    # Only bad images, or none: an answer, not an error.
    only_bad = served.run({"image_bytes": [b"junk", jpeg[:40]]})
    assert only_bad["valid"].tolist() == [False, False]
    assert only_bad["probabilities"].shape == (2, 10)
    assert served.run({"image_bytes": np.array([], dtype=object)})["class_id"].shape == (0,)


def test_a_request_over_the_maximum_fails_whole_and_the_next_succeeds(digits, served):
    image, _ = testlib.digit_image(digits, 0, (8, 8), 1)
    png = testlib.encode(image, "png")
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 1024 images"):
        served.run({"image_bytes": [png] * (contract.MAX_IMAGES_PER_REQUEST + 1)})
    assert served.run({"image_bytes": [png]})["valid"].tolist() == [True]


@pytest.mark.parametrize("image_format", ["jpeg", "png", "gif", "bmp", "webp"])
@pytest.mark.parametrize("size", [(1, 1), (7, 300), (300, 7), (64, 48)])
def test_the_graph_reads_sizes_from_headers_as_ingest_does(image_format, size):
    channels = 1 if image_format in ("png", "jpeg") else 3
    encoded = testlib.encode(np.zeros((*size, channels), np.uint8), image_format)
    in_graph = tf.function(image_formats.header_sizes_op)
    # Cut to 12 bytes: the format still shows, the size only in a GIF's.
    supported, height, width = in_graph([encoded, encoded[:12], b"BZ" + encoded[2:]])
    assert image_formats.header_size(encoded, image_format) == size
    assert (int(height[0]), int(width[0])) == size
    assert supported.numpy().tolist() == [True, True, False]
    cut = size if image_format == "gif" else (-1, -1)
    assert (int(height[1]), int(width[1])) == cut
    assert (int(height[2]), int(width[2])) == (-1, -1)


def test_a_jpeg_size_is_its_frame_header_not_a_thumbnail_inside_a_segment():
    jpeg = testlib.encode(np.zeros((40, 30, 1), np.uint8), "jpeg")
    # An APP1 segment (as EXIF holds a thumbnail) with a frame header of 16x16.
    payload = b"Exif\0\0" + b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10" + bytes(20)
    with_thumbnail = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + \
        jpeg[2:]
    _, height, width = image_formats.header_sizes_op([with_thumbnail, jpeg[:30]])
    assert image_formats.header_size(with_thumbnail, "jpeg") == (40, 30)
    assert height.numpy().tolist() == [40, -1] and width.numpy().tolist() == [30, -1]


# The crafted images against an ordinary one, by the peak memory (RSS) of a
# process that serves them. 40 MB covers TensorFlow's own allocations between
# calls; the crafted images would take 1.2 GB (20000x20000 decoded) and 1.35 GB
# (1x20000 resized so its short side covers the crop, in float32).
_RSS_BOUND_MB = 40
_PEAK_RSS = """
import resource, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
import testlib
session = testlib.ServingSession(sys.argv[1])
images = [open(path, "rb").read() for path in sys.argv[3:]]
for image in images[:1] * 3:
    session.run({"image_bytes": [image]})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for image in images[1:]:
    valid = session.run({"image_bytes": [image] * 4})["valid"]
    assert not valid.any(), valid
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.slow
def test_crafted_images_cost_bounded_memory(trained_export, digits, tmp_path):
    image, _ = testlib.digit_image(digits, 0, (30, 30), 1)
    paths = []
    for name, data in (("ordinary.png", testlib.encode(image, "png")),
                       ("huge.png", _blank_png(20000, 20000)),
                       ("strip.png", _blank_png(1, 20000))):
        paths.append(str(tmp_path / name))
        (tmp_path / name).write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, trained_export, os.path.dirname(testlib.__file__),
         *paths], capture_output=True, text=True, timeout=300, env=testlib.child_env())
    assert result.returncode == 0, result.stderr[-3000:]
    growth_mb = float(result.stdout.split()[-1])
    assert growth_mb < _RSS_BOUND_MB, f"peak RSS grew by {growth_mb:.0f} MB"


def test_warmup_requests_replay_in_the_serving_session(
    trained_export, digits, served
):
    version_dir = trained_export
    path = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
    logs = [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(path)
    ]
    # Three test images were given: each alone, then all three as one batch,
    # then the first through the ten-crop signature.
    assert [
        (log.predict_log.request.model_spec.signature_name,
         len(log.predict_log.request.inputs["image_bytes"].string_val)) for log in logs
    ] == [("serving_default", 1)] * 3 + [("serving_default", 3), ("serving_ten_crop", 1)]
    given = testlib.encoded_split(digits, "test")[0][:3]
    assert list(logs[3].predict_log.request.inputs["image_bytes"].string_val) == given
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "alexnet"
        inputs = {
            name: tf.make_ndarray(proto) for name, proto in request.inputs.items()
        }
        outputs = served.run(inputs, signature_name=request.model_spec.signature_name)
        assert outputs["probabilities"].shape == (len(inputs["image_bytes"]), 10)


def test_generated_warmup_exercises_png_and_jpeg(tmp_path):
    version_dir = builder.export_saved_model(
        tiny_model(), CLASS_NAMES, tmp_path
    )
    path = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
    session = testlib.ServingSession(version_dir)
    try:
        images = []
        for record in tf.data.TFRecordDataset(path):
            request = prediction_log_pb2.PredictionLog.FromString(
                record.numpy()
            ).predict_log.request
            assert request.model_spec.signature_name in ("serving_default", "serving_ten_crop")
            inputs = {
                name: tf.make_ndarray(proto) for name, proto in request.inputs.items()
            }
            outputs = session.run(inputs, signature_name=request.model_spec.signature_name)
            assert outputs["top_k_class_name"].shape == (len(inputs["image_bytes"]), 3)
            images.extend(inputs["image_bytes"])
    finally:
        session.close()
    assert {tf.io.is_jpeg(image).numpy() for image in images} == {True, False}


def test_versions_count_up_and_never_overwrite(tmp_path):
    model = tiny_model()
    first = builder.export_saved_model(model, CLASS_NAMES, tmp_path)
    with open(os.path.join(first, "saved_model.pb"), "rb") as file:
        first_graph = file.read()
    os.makedirs(tmp_path / "7" / "variables")  # e.g. a version put there by hand
    (tmp_path / "not-a-version").mkdir()
    second = builder.export_saved_model(model, CLASS_NAMES, tmp_path)
    assert (os.path.basename(first), os.path.basename(second)) == ("1", "8")
    assert saved_models.versions(tmp_path) == [1, 7, 8]
    with open(os.path.join(first, "saved_model.pb"), "rb") as file:
        assert file.read() == first_graph
    assert saved_models.resolve_saved_model(str(tmp_path)) == str(tmp_path / "8")
    assert saved_models.resolve_saved_model(first) == first
    with pytest.raises(PipelineError, match="numbered versions"):
        saved_models.resolve_saved_model(str(tmp_path / "not-a-version"))


def test_a_failed_export_leaves_no_version_behind(tmp_path, monkeypatch):
    model = tiny_model()
    first = builder.export_saved_model(model, CLASS_NAMES, tmp_path)
    before = sorted(os.listdir(first))

    def killed(*args):
        raise KeyboardInterrupt("killed while writing the warm-up file")

    # The SavedModel is written by then: only the warm-up is missing.
    monkeypatch.setattr(builder, "_write_warmup", killed)
    with pytest.raises(KeyboardInterrupt):
        builder.export_saved_model(model, CLASS_NAMES, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["1"]
    assert sorted(os.listdir(first)) == before


def test_a_killed_exports_temporary_directory_is_ignored_then_removed(tmp_path):
    host = socket.gethostname()
    abandoned = tmp_path / f".tmp-{host}-{testlib.UNUSED_PID}-v1"
    (abandoned / "variables").mkdir(parents=True)
    (abandoned / "saved_model.pb").write_bytes(b"half written")
    live = tmp_path / f".tmp-{host}-{os.getpid()}-v5"  # another export still writing
    live.mkdir()
    # Another machine's export on shared storage: its process cannot be checked here.
    elsewhere = tmp_path / f".tmp-other-host-{testlib.UNUSED_PID}-v6"
    elsewhere.mkdir()
    assert saved_models.versions(tmp_path) == []

    version_dir = builder.export_saved_model(
        tiny_model(), CLASS_NAMES, tmp_path
    )
    assert os.path.basename(version_dir) == "1"
    assert not abandoned.exists()
    assert live.exists()
    assert elsewhere.exists()
    assert saved_models.versions(tmp_path) == [1]


def test_a_live_writer_in_another_pid_namespace_keeps_its_temporary_directory(tmp_path):
    """A container sharing the disk and the host name writes with a pid that
    means nothing here (UNUSED_PID): the flock its process holds on its
    directory keeps it; once that process is gone, the next export removes it."""
    host = socket.gethostname()
    theirs = tmp_path / f".tmp-{host}-{testlib.UNUSED_PID}-v1"
    theirs.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; "
         f"fd = os.open({str(theirs)!r}, os.O_RDONLY | os.O_DIRECTORY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        builder.export_saved_model(tiny_model(), CLASS_NAMES, tmp_path)
        assert theirs.exists()
    finally:
        holder.kill()
        holder.wait()
    builder.export_saved_model(tiny_model(), CLASS_NAMES, tmp_path)
    assert not theirs.exists()
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_class_names_must_match_the_logits(tmp_path):
    with pytest.raises(PipelineError, match="3 outputs but 2 class names"):
        builder.export_saved_model(tiny_model(), ["cat", "dog"], tmp_path)
    assert saved_models.versions(tmp_path) == []


def test_export_keras_round_trips(tmp_path):
    model = tiny_model()
    path = pusher.export_keras(model, str(tmp_path / "run" / "model.keras"))
    restored = keras.saving.load_model(path)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 67, 67, 3)).astype("float32")
    np.testing.assert_allclose(restored(images), model(images), atol=1e-6)
    with pytest.raises(PipelineError, match=r"\.keras"):
        pusher.export_keras(model, str(tmp_path / "model.h5"))


def test_a_mixed_precision_model_is_exported_in_float32(tmp_path, digits, fitted_weights):
    """A model trained in bfloat16 is served, and saved as .keras, in float32:
    a serving machine without bfloat16 instructions would emulate it, 14x slower."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        trained = testlib.digits_model(fitted_weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    float32 = testlib.digits_model(fitted_weights)
    encoded, _ = testlib.encoded_split(digits, "test")
    expected = testlib.keras_probabilities(float32, encoded[:8])
    # bfloat16 itself is about a hundred times further off than this.
    assert np.abs(testlib.keras_probabilities(trained, encoded[:8]) - expected).max() > 1e-3

    session = testlib.ServingSession(
        builder.export_saved_model(trained, [str(digit) for digit in range(10)], tmp_path)
    )
    try:
        served = session.run({"image_bytes": encoded[:8]})["probabilities"]
    finally:
        session.close()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    restored = keras.saving.load_model(pusher.export_keras(trained, tmp_path / "model.keras"))
    assert restored.dtype_policy.compute_dtype == "float32"
    assert trained.dtype_policy.compute_dtype == "bfloat16"


def test_a_keras_file_and_its_image_spec_classify_as_serving_default(
    digits, fitted_weights, served, tmp_path
):
    # The .keras file the pusher writes, loaded by Keras alone, plus the one
    # call README.md documents, answers as the export's serving_default does.
    path = pusher.export_keras(
        testlib.digits_model(fitted_weights), str(tmp_path / "model.keras")
    )
    model = keras.saving.load_model(path)
    encoded = [
        testlib.encode(testlib.digit_image(digits, index, size, channels)[0], image_format)
        for index, size, channels, image_format in (
            (0, (30, 41), 1, "png"),
            (1, (120, 90), 3, "jpeg"),
            (2, (67, 67), 1, "jpeg"),
            (3, (200, 160), 3, "png"),
            (4, (16, 300), 1, "png"),
        )
    ]
    served_probabilities = served.run({"image_bytes": encoded})["probabilities"]
    for image, expected in zip(encoded, served_probabilities):
        pixels = preprocess_ops.decode_image(image, model.image_spec.channels).numpy()
        probabilities = keras.ops.softmax(model(model.image_spec.preprocess(pixels[np.newaxis])))
        np.testing.assert_allclose(probabilities[0], expected, atol=1e-5)


def test_models_config_serves_the_exports():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = os.path.join(
        os.path.dirname(builder.__file__), "..", "..", "saved_models", "models.config"
    )
    with open(path) as file:
        config = text_format.Parse(
            file.read(), model_server_config_pb2.ModelServerConfig()
        )
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "alexnet",
        "/models/alexnet",
        "tensorflow",
    )


def test_the_export_scales_pixels_as_the_model_was_trained(tmp_path):
    # The d2l variant trains on [-1, 1] (pixel_scale 1/127.5): its export reads
    # that from the model and scales the same way, not as the paper's 0-255 range.
    model = AlexNet(variant="d2l", num_classes=3, input_shape=(65, 65, 1))
    assert model.image_spec == ImageSpec(65, 65, 1, 127.5, 1 / 127.5)
    version_dir = builder.export_saved_model(model, ["a", "b", "c"], str(tmp_path / "models"))
    pixels = np.random.default_rng(3).uniform(0, 255, (2, 80, 70, 1)).astype("float32")
    served = tf.saved_model.load(version_dir).signatures["serving_pixels"]
    answered = served(pixels=tf.constant(pixels))["probabilities"].numpy()
    expected = tf.nn.softmax(
        model(preprocess_ops.preprocess_for_eval(pixels, model.image_spec), training=False)
    ).numpy()
    unscaled = tf.nn.softmax(
        model(preprocess_ops.preprocess_for_eval(pixels, ImageSpec(65, 65, 1)), training=False)
    ).numpy()
    np.testing.assert_allclose(answered, expected, atol=1e-5)
    assert not np.allclose(answered, unscaled, atol=1e-3)


def test_batching_parameters_fit_the_client_and_the_signature():
    path = os.path.join(testlib.REPO, "saved_models", "batching_parameters.txt")
    with open(path) as file:
        values = dict(re.findall(r"^(\w+) \{ value: (\d+) \}$", file.read(), re.M))
    assert set(values) == {"max_batch_size", "batch_timeout_micros", "num_batch_threads",
                           "max_enqueued_batches"}
    # pipeline.predict's default batch passes the server's batching, which
    # passes the signature's own limit.
    predict_default = parsers.predict_parser().parse_args(["x", "--server", "y"]).batch_size
    assert predict_default <= int(values["max_batch_size"]) <= contract.MAX_IMAGES_PER_REQUEST
    assert all(int(value) > 0 for value in values.values())


@pytest.mark.slow
def test_an_export_that_cannot_be_written_is_one_line_and_publishes_nothing(tmp_path):
    """Writes past 20 MB fail (RLIMIT_FSIZE, as on a full disk) while the
    variables are written: one line naming the export directory and the cause,
    and nothing left in it; without the limit the same command exports."""
    AlexNet(num_classes=3, input_shape=(67, 67, 3), class_names=CLASS_NAMES).save(
        tmp_path / "model.keras")
    command = [sys.executable, "-m", "pipeline.export", "model.keras", "--export-dir", "models"]
    status, line = testlib.run_on_a_full_disk(command, tmp_path, 20 << 20)
    assert status == 2, line
    assert line.startswith(f"python -m pipeline.export: error: cannot write the export to "
                           f"{tmp_path / 'models'} (")
    assert "File too large" in line and line.endswith("(nothing was published)")
    assert os.listdir(tmp_path / "models") == []
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path,
                          env=testlib.child_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.listdir(tmp_path / "models") == ["1"]
