import base64
import concurrent.futures
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

import testlib
from pipeline.cli import main as cli
from pipeline.data import image_formats
from pipeline.serving import client
from pipeline.errors import PipelineError

MODEL_NAME = "alexnet"


@pytest.fixture(scope="module")
def served(trained_export):
    """The trained digits export loaded like TF Serving, and its path."""
    version_dir = trained_export
    session = testlib.ServingSession(version_dir)
    yield session, version_dir
    session.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory, digits):
    """A PNG and a JPEG digit on disk, and what TF Serving answers for each."""
    ingested = digits
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index, size, image_format in ((0, (40, 32), "png"), (1, (90, 90), "jpeg")):
        image, _ = testlib.digit_image(ingested, index, size, 1)
        path = folder / f"digit{index}.{'png' if image_format == 'png' else 'jpg'}"
        path.write_bytes(testlib.encode(image, image_format))
        paths.append(str(path))
    not_an_image = folder / "notes.txt"
    not_an_image.write_text("not an image")
    return paths, str(not_an_image)


def expected_top_k(session, path, k=5):
    with open(path, "rb") as file:
        outputs = session.run({"image_bytes": [file.read()]})
    names = [name.decode() for name in outputs["top_k_class_name"][0]]
    return list(zip(names, outputs["top_k_probabilities"][0].tolist()))[:k]


def assert_same_answers(results, session, paths, k=5):
    assert [result.path for result in results] == paths
    for result in results:
        expected = expected_top_k(session, result.path, k)
        assert result.valid and result.error == ""
        assert [name for name, _ in result.classes] == [name for name, _ in expected]
        np.testing.assert_allclose(
            [p for _, p in result.classes], [p for _, p in expected], atol=1e-6
        )


def signature_map(session):
    """The export's signatures as TF Serving's metadata carries them."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in session.signatures.items():
        signatures.signature_def[name].CopyFrom(signature)
    return signatures


def json_value(value):
    value = np.asarray(value)
    if value.dtype.kind in "OS":
        return np.char.decode(value.astype(bytes), "utf-8").tolist()
    return value.tolist()


class RestServer:
    """TF Serving's REST predict API in a thread, answering from a ServingSession."""

    def __init__(self, session):
        self.session = session
        self.requests = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append((self.path, None))
                match = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/(\d+))?/metadata",
                                     self.path)
                if not match or match.group(1) != MODEL_NAME:
                    return owner.reply(self, 404, {
                        "error": f"Servable not found for request: "
                                 f"Latest({match and match.group(1)})"})
                owner.reply(self, 200, {
                    "model_spec": {"name": MODEL_NAME, "signature_name": "",
                                   "version": match.group(2) or "1"},
                    "metadata": {"signature_def": json_format.MessageToDict(
                        signature_map(owner.session), preserving_proto_field_name=True)},
                })

            def do_POST(self):
                try:
                    owner.handle(self)
                except Exception as error:  # a format check failed: tell the client
                    owner.reply(self, 500, {"error": f"test server: {error!r}"})

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reply(self, handler, status, body):
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def handle(self, handler):
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        self.requests.append((handler.path, body))
        match = re.fullmatch(
            r"/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", handler.path
        )
        if not match or match.group(1) != MODEL_NAME:
            return self.reply(
                handler,
                404,
                {
                    "error": f"Servable not found for request: "
                    f"Latest({match and match.group(1)})"
                },
            )
        # The documented row format with binary strings as {"b64": ...}.
        assert body["signature_name"] == "serving_default"
        assert set(body) == {"signature_name", "instances"}
        encoded = [
            base64.b64decode(row["image_bytes"]["b64"]) for row in body["instances"]
        ]
        try:
            outputs = self.session.run({"image_bytes": encoded})
        except tf.errors.InvalidArgumentError as error:
            return self.reply(handler, 400, {"error": error.message})
        # Row format: one object per instance; strings as text (no "_bytes" suffix).
        predictions = [
            {name: json_value(value[row]) for name, value in outputs.items()}
            for row in range(len(encoded))
        ]
        self.reply(handler, 200, {"predictions": predictions})

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's gRPC PredictionService.Predict, answering from a ServingSession."""

    def __init__(self, session):
        self.session = session
        self.requests = []

    def _received(self, request, context):
        self.requests.append(request)
        if request.model_spec.name != MODEL_NAME:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Latest({request.model_spec.name})",
            )

    def GetModelMetadata(self, request, context):
        self._received(request, context)
        assert list(request.metadata_field) == ["signature_def"]
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.metadata["signature_def"].Pack(signature_map(self.session))
        return response

    def Predict(self, request, context):
        self._received(request, context)
        inputs = {
            name: tf.make_ndarray(proto) for name, proto in request.inputs.items()
        }
        try:
            outputs = self.session.run(
                inputs,
                signature_name=request.model_spec.signature_name or "serving_default",
            )
        except tf.errors.InvalidArgumentError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response


@pytest.fixture(scope="module")
def rest_server(served):
    server = RestServer(served[0])
    yield server
    server.close()


@pytest.fixture(scope="module")
def grpc_server(served):
    service = PredictionService(served[0])
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service, f"127.0.0.1:{port}"
    server.stop(grace=None)


def one_line_error(capsys):
    captured = capsys.readouterr()
    assert captured.err.startswith("python -m pipeline.predict: error: ")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    return captured.err


def test_rest_sends_the_documented_requests_and_prints_top_k(
    rest_server, served, images, capsys
):
    session, _ = served
    paths, _ = images
    rest_server.requests.clear()
    assert (
        cli.main("predict", [*paths, "--server", rest_server.url, "--model", MODEL_NAME]) == 0
    )

    # The metadata first, then both images in one request.
    assert [path for path, _ in rest_server.requests] == [
        "/v1/models/alexnet/metadata", "/v1/models/alexnet:predict"]
    instances = []
    for path in paths:
        with open(path, "rb") as file:
            instances.append({"image_bytes": {"b64": base64.b64encode(file.read()).decode()}})
    assert rest_server.requests[1][1]["instances"] == instances
    output = capsys.readouterr().out.splitlines()
    assert output[0] == paths[0] and output[6] == paths[1]
    best_name, best_probability = expected_top_k(session, paths[0])[0]
    assert output[1].split() == ["1.", best_name, f"{best_probability:.4f}"]
    assert len(output) == 12

    results = client.predict(paths, server=rest_server.url, version=1, top_k=3,
                             batch_size=1)
    assert [path for path, _ in rest_server.requests[-2:]] == [
        "/v1/models/alexnet/versions/1:predict"] * 2
    assert_same_answers(results, session, paths, k=3)


def test_an_image_the_model_cannot_read_costs_only_itself(rest_server, served, images,
                                                          capsys):
    session, _ = served
    paths, not_an_image = images
    argv = [paths[0], not_an_image, paths[1], "--server", rest_server.url]
    assert cli.main("predict", argv) == 1
    output = capsys.readouterr().out.splitlines()
    assert output[6:8] == [not_an_image, "  error: not a JPEG, PNG, GIF, BMP or WebP image"]
    assert output[8] == paths[1] and len(output) == 14

    assert cli.main("predict", [*argv, "--json", "--top-k", "1"]) == 1
    answers = json.loads(capsys.readouterr().out)
    assert [answer["path"] for answer in answers] == [paths[0], not_an_image, paths[1]]
    assert [answer["valid"] for answer in answers] == [True, False, True]
    assert answers[1] == {"path": not_an_image, "valid": False, "top_k": [],
                          "error": "not a JPEG, PNG, GIF, BMP or WebP image"}
    best_name, best_probability = expected_top_k(session, paths[1])[0]
    assert answers[2]["top_k"] == [{"class_name": best_name,
                                    "probability": pytest.approx(best_probability, abs=1e-6)}]


def test_directories_are_searched_and_batches_agree(rest_server, served, images, tmp_path):
    session, _ = served
    paths, _ = images
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    (folder / ".hidden").write_bytes(b"never sent")
    copies = []
    for index in range(5):
        copy = folder / ("more" if index % 2 else "") / f"{index}.img"
        copy.write_bytes(open(paths[index % 2], "rb").read())
        copies.append(str(copy))
    rest_server.requests.clear()
    batched = client.predict([str(folder)], server=rest_server.url, batch_size=2)
    assert sorted(result.path for result in batched) == sorted(copies)
    assert [len(body["instances"]) for _, body in rest_server.requests[1:]] == [2, 2, 1]
    single = client.predict(sorted(copies), server=rest_server.url, batch_size=1)
    by_path = {result.path: result for result in single}
    for result in batched:
        assert [name for name, _ in result.classes] == [
            name for name, _ in by_path[result.path].classes]
        np.testing.assert_allclose([p for _, p in result.classes],
                                   [p for _, p in by_path[result.path].classes], atol=1e-5)


def test_rest_error_replies_name_the_server(rest_server, images, capsys):
    paths, _ = images
    assert (
        cli.main("predict", [paths[0], "--server", rest_server.url, "--model", "resnet"]) == 2
    )
    error = one_line_error(capsys)
    assert "404" in error and "Servable not found" in error and rest_server.url in error


@pytest.fixture(scope="module")
def other_kind(tmp_path_factory):
    """A served model of another kind: its serving_default takes float features."""
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.serve = tf.function(lambda x: {"y": x * module.scale},
                               input_signature=[tf.TensorSpec([None, 4], tf.float32, "x")])
    path = str(tmp_path_factory.mktemp("other") / "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    session = testlib.ServingSession(path)
    server = RestServer(session)
    yield server, path
    server.close()
    session.close()


def test_a_model_of_another_kind_is_refused_before_any_image_is_sent(
    other_kind, images, capsys
):
    server, path = other_kind
    paths, _ = images
    server.requests.clear()
    assert cli.main("predict", [paths[0], "--server", server.url]) == 2
    error = one_line_error(capsys)
    assert f"the model at {server.url} is not one this client can ask" in error
    assert "takes x (float32) and lacks probabilities" in error
    assert [request for request, _ in server.requests] == ["/v1/models/alexnet/metadata"]
    assert cli.main("predict", [paths[0], "--saved-model", path]) == 2
    assert "is not one this client can ask" in one_line_error(capsys)


def test_grpc_asks_the_metadata_then_predicts_and_agrees_with_rest(
    grpc_server, served, images, capsys
):
    service, target = grpc_server
    session, _ = served
    paths, _ = images
    service.requests.clear()
    assert (
        cli.main("predict", [*paths, "--grpc", target, "--version", "1", "--top-k", "2"]) == 0
    )
    metadata, request = service.requests
    assert metadata.model_spec.name == MODEL_NAME and metadata.model_spec.version.value == 1
    assert request.model_spec.name == MODEL_NAME
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 1
    assert list(request.inputs) == ["image_bytes"]
    sent = []
    for path in paths:
        with open(path, "rb") as file:
            sent.append(file.read())
    assert list(request.inputs["image_bytes"].string_val) == sent
    assert len(capsys.readouterr().out.splitlines()) == 6

    results = client.predict(paths, grpc_target=target)
    assert_same_answers(results, session, paths)


def test_grpc_reports_each_image_and_names_a_missing_model(grpc_server, images, capsys):
    _, target = grpc_server
    paths, not_an_image = images
    assert cli.main("predict", [not_an_image, paths[0], "--grpc", target]) == 1
    assert "  error: not a JPEG, PNG, GIF, BMP or WebP image" in capsys.readouterr().out
    assert cli.main("predict", [paths[0], "--grpc", target, "--model", "resnet"]) == 2
    error = one_line_error(capsys)
    assert "NOT_FOUND" in error and "Servable not found" in error


def test_unreachable_servers_are_named(images, capsys, free_port):
    paths, _ = images
    port = free_port()
    assert cli.main("predict", [paths[0], "--grpc", f"127.0.0.1:{port}"]) == 2
    error = one_line_error(capsys)
    assert f"cannot reach TF Serving at 127.0.0.1:{port}" in error


@pytest.mark.slow
def test_the_command_line_exits_without_a_traceback(images, free_port):
    paths, _ = images
    url = f"http://127.0.0.1:{free_port()}"
    completed = subprocess.run(
        [sys.executable, "-m", "pipeline.predict", paths[0], "--server", url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=testlib.REPO,
        env=testlib.child_env(TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert (
        completed.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"python -m pipeline.predict: error: cannot reach TF Serving at {url}"
        )
    )


def test_saved_model_answers_locally_like_the_server(served, images, capsys):
    session, version_dir = served
    paths, not_an_image = images
    # The base directory: its newest version is used.
    results = client.predict(paths, saved_model=os.path.dirname(version_dir))
    assert_same_answers(results, session, paths)

    assert cli.main("predict", [not_an_image, "--saved-model", version_dir]) == 1
    assert capsys.readouterr().out.splitlines() == [
        not_an_image, "  error: not a JPEG, PNG, GIF, BMP or WebP image"]

    missing = os.path.join(os.path.dirname(not_an_image), "missing.jpg")
    assert cli.main("predict", [missing, "--saved-model", version_dir]) == 2
    assert f"cannot read {missing}: no such file or directory" in one_line_error(capsys)
    assert cli.main("predict", [paths[0], "--saved-model", version_dir,
                                "--batch-size", "0"]) == 2
    assert "--batch-size must be 1 to 1024" in one_line_error(capsys)


def test_a_fifo_a_device_or_a_huge_file_is_answered_alone_not_read(
        served, images, tmp_path, monkeypatch, capsys):
    session, version_dir = served
    paths, _ = images
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)  # read, it would block forever
    zero = tmp_path / "zero.png"
    os.symlink("/dev/zero", zero)  # read whole, it would fill the memory
    # A "video" one byte over the limit, which is lowered to the real image's size.
    limit = os.path.getsize(paths[0])
    huge = tmp_path / "video.jpg"
    with open(huge, "wb") as file:
        file.truncate(limit + 1)
    monkeypatch.setattr(image_formats, "MAX_FILE_BYTES", limit)
    assert cli.main("predict", [str(fifo), paths[0], str(zero), str(huge),
                                "--saved-model", version_dir]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [str(fifo), "  error: cannot read the file: not a regular file"]
    assert lines[2] == paths[0] and not lines[3].startswith("  error")
    assert [str(zero), "  error: cannot read the file: not a regular file"] == lines[-4:-2]
    assert lines[-2:] == [str(huge), f"  error: cannot read the file: over {limit:,} bytes"]


class MisbehavingServer:
    """TF Serving's REST metadata as the export gives it, and a :predict that
    answers `predict(handler)` (status, headers and body written by it)."""

    def __init__(self, session, predict, metadata=None):
        metadata = metadata or json_format.MessageToDict(
            signature_map(session), preserving_proto_field_name=True)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                data = json.dumps({"metadata": {"signature_def": metadata}}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                predict(self)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # the client hung up on a trickle or a huge answer, as it should

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _answer(status, body):
    def predict(handler):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return predict


def _row(probability=0.5, names=("0", "1")):
    return {"top_k_class_name": list(names), "top_k_probabilities": [probability] * 2,
            "probabilities": [0.1] * 10, "valid": True, "error": ""}


def _trickle(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(20):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.3)


@pytest.mark.parametrize("predict, message", [
    (_answer(200, {"predictions": [_row()]}), "`top_k_class_name` for 1 of 2 images"),
    (_answer(200, {"predictions": [_row(None), _row(None)]}),
     "`top_k_probabilities` that are not numbers in [0, 1]"),
    (_answer(200, {"predictions": [_row("high"), _row("high")]}),
     "`top_k_probabilities` that are not numbers in [0, 1]"),
    (_answer(200, {"predictions": [_row(), {**_row(), "top_k_class_name": ["0"]}]}),
     "without predictions in TF Serving's row format"),
    (_answer(200, {"predictions": [_row(7.0), _row(7.0)]}),
     "`top_k_probabilities` that are not numbers in [0, 1]"),
    (_answer(500, [1, 2, 3]), "answered 500: [1, 2, 3]"),
    (_answer(500, b"\x1b[31mraw\x07 bytes\x00"), "answered 500: Internal Server Error"),
    (_answer(200, b"\x1b[2Jnot json\x00"), "sent no JSON: ?[2Jnot json?"),
    (_trickle, "did not finish answering within 2 s"),
    (_answer(200, {"predictions": [_row(), _row()], "padding": "x" * 5000}),
     "sent an answer of over 4,096 bytes; lower --batch-size"),
])
def test_a_server_that_is_not_tf_serving_is_one_line_and_exit_2(
        served, images, capsys, monkeypatch, predict, message):
    monkeypatch.setattr(client, "TIMEOUT_SECONDS", 2)
    monkeypatch.setattr(client, "MAX_ANSWER_BYTES", 4096)
    server = MisbehavingServer(served[0], predict)
    paths, _ = images
    try:
        assert cli.main("predict", [*paths[:2], "--server", server.url]) == 2
    finally:
        server.close()
    error = one_line_error(capsys)
    assert message in error, error
    assert "\x1b" not in error and "\x00" not in error


def test_metadata_without_shapes_still_classifies(served, images, capsys):
    metadata = json_format.MessageToDict(signature_map(served[0]),
                                         preserving_proto_field_name=True)
    for signature in metadata["signature_def"].values():
        for kind in ("inputs", "outputs"):
            for info in signature.get(kind, {}).values():
                info.pop("tensor_shape", None)
    server = MisbehavingServer(served[0], _answer(200, {"predictions": [_row(), _row()]}),
                               metadata=metadata)
    paths, _ = images
    try:
        assert cli.main("predict", [*paths[:2], "--server", server.url]) == 0
    finally:
        server.close()
    assert capsys.readouterr().out.count("  0  ") + 1 >= 1


class ImageNetSizedService(PredictionService):
    """Answers every image with 1,000 classes' probabilities, as an ImageNet
    model does: 1,024 images make an answer over gRPC's default 4 MB."""

    def Predict(self, request, context):
        count = len(request.inputs["image_bytes"].string_val)
        outputs = {
            "probabilities": np.full((count, 1000), 1e-3, np.float32),
            "class_id": np.zeros(count, np.int64),
            "class_name": np.full(count, b"great white shark"),
            "top_k_class_name": np.full((count, 5), b"great white shark"),
            "top_k_probabilities": np.full((count, 5), 1e-3, np.float32),
            "valid": np.ones(count, bool), "error": np.full(count, b""),
        }
        response = predict_pb2.PredictResponse()
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response


@pytest.mark.parametrize("limit", [None, 4 * 2**20])
def test_grpc_takes_the_answer_of_the_largest_batch_of_an_imagenet_model(
        served, images, monkeypatch, limit):
    if limit:  # gRPC's default: the answer does not fit
        monkeypatch.setattr(client, "MAX_ANSWER_BYTES", limit)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        ImageNetSizedService(served[0]), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    paths, _ = images
    try:
        if limit:
            with pytest.raises(PipelineError, match="RESOURCE_EXHAUSTED"):
                client.predict([paths[0]] * 1024, grpc_target=f"127.0.0.1:{port}",
                               batch_size=1024)
            return
        results = client.predict([paths[0]] * 1024, grpc_target=f"127.0.0.1:{port}",
                                 batch_size=1024)
    finally:
        server.stop(grace=None)
    assert len(results) == 1024
    assert results[0].classes[0] == ("great white shark", pytest.approx(1e-3))
