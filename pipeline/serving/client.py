"""Predict: classify image files with a served or an exported AlexNet.

    python -m pipeline.predict photos/ cat.jpg --server http://localhost:8501
    python -m pipeline.predict photos/ --grpc localhost:8500 --batch-size 64 --json
    python -m pipeline.predict cat.jpg --saved-model saved_models/alexnet

classifies files and the files under directories, asked of TF Serving over REST
or gRPC, or computed locally from an export (a version directory, or a base
directory whose newest version is used), `batch_size` images per request
through the `serving_default` signature. It first reads the model's metadata
(its signature and class count) and stops with one line if the model is not an
export of this pipeline. Each image gets its own answer: its top-k classes, or
why it could not be classified (an image the model cannot read costs only
itself).
"""

import base64
import dataclasses
import json
import logging
import os
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from pipeline.data import image_formats
from pipeline.serving import contract
from pipeline.storage import atomic
from pipeline.storage import saved_models
from pipeline.errors import PipelineError
from pipeline.errors import first_line

# Each request, its answer included, must be done within this: a server that
# trickles its answer a byte at a time is given up on, not waited for.
TIMEOUT_SECONDS = 30
# The largest answer read: 1,024 images of 10,000 classes' probabilities are
# about 40 MB as float32 (gRPC) and 150 MB as JSON text (REST).
MAX_ANSWER_BYTES = 256 * 2**20

logger = logging.getLogger(__name__)


# What the client needs of `serving_default`; `valid` and `error` came with
# per-image answers, and an export without them answers every image or none.
_NEEDED_OUTPUTS = ("probabilities", "top_k_class_name", "top_k_probabilities")


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's answer: its top-k (class name, probability) pairs, or the
    reason it was not classified (`error`, and no classes)."""

    path: str
    classes: tuple = ()
    error: str = ""

    @property
    def valid(self):
        return not self.error

    def as_json(self):
        return {"path": self.path, "valid": self.valid, "error": self.error,
                "top_k": [{"class_name": name, "probability": probability}
                          for name, probability in self.classes]}


def image_files(paths):
    """`paths` with each directory replaced by the files under it (sorted,
    hidden ones left out); a path that is neither raises `PipelineError`."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            for parent, directories, names in sorted(os.walk(path)):
                directories[:] = sorted(name for name in directories if not name.startswith("."))
                files += [os.path.join(parent, name) for name in sorted(names)
                          if not name.startswith(".")]
        elif os.path.lexists(path):
            # A FIFO or a device is refused when it is read, as its own answer.
            files.append(path)
        else:
            raise PipelineError(f"cannot read {path}: no such file or directory")
    return files


def _read(path):
    """The file's bytes, or the reason it is not read (`str`)."""
    try:
        return atomic.read_regular_file(path, image_formats.MAX_FILE_BYTES)
    except OSError as error:
        return f"cannot read the file: {error.strerror or error}"


def _model_url(server, model_name, version):
    url = f"{server.rstrip('/')}/v1/models/{model_name}"
    if version is not None:
        url += f"/versions/{version}"
    return url


def _signature_of(signature_def):
    """{"inputs"/"outputs": {name: (dtype enum, shape)}} of a SignatureDef proto."""
    return {
        kind: {name: (info.dtype, [dim.size for dim in info.tensor_shape.dim])
               for name, info in getattr(signature_def, kind).items()}
        for kind in ("inputs", "outputs")
    }


class _Rest:
    """TF Serving's REST API: metadata, then the row-format predict."""

    def __init__(self, server, model_name, version):
        if not server.startswith(("http://", "https://")):
            raise PipelineError(
                f"`server` must be a URL such as http://localhost:8501. Received: {server}"
            )
        self.server = server
        self.url = _model_url(server, model_name, version)

    def _call(self, url, body, what):
        request = urllib.request.Request(
            url, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST",
        )
        deadline = time.monotonic() + TIMEOUT_SECONDS
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                reply = self._read(response, deadline, what)
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read(64 * 1024))
                detail = detail.get("error", error.reason) if isinstance(detail, dict) else detail
            except ValueError:
                detail = error.reason
            raise PipelineError(
                f"{what}: TF Serving at {self.server} answered {error.code}: "
                f"{_shown(detail)}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise PipelineError(
                f"cannot reach TF Serving at {self.server} ({reason}); check `server`"
            ) from None
        try:
            return json.loads(reply)
        except (ValueError, RecursionError):
            raise PipelineError(
                f"{what}: TF Serving at {self.server} sent no JSON: "
                f"{_shown(reply.decode(errors='replace'))}"
            ) from None

    def _read(self, response, deadline, what):
        """The answer's body, read in chunks within the deadline and the size cap."""
        chunks, size = [], 0
        while True:
            if time.monotonic() > deadline:
                raise PipelineError(f"{what}: TF Serving at {self.server} did not finish "
                                    f"answering within {TIMEOUT_SECONDS} s")
            chunk = response.read1(1 << 20)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise PipelineError(f"{what}: TF Serving at {self.server} sent an answer of "
                                    f"over {MAX_ANSWER_BYTES:,} bytes; lower `batch_size`")
            chunks.append(chunk)

    def signature(self):
        reply = self._call(self.url + "/metadata", None, "the model's metadata")
        signatures = get_model_metadata_pb2.SignatureDefMap()
        try:
            json_format.ParseDict(reply["metadata"]["signature_def"], signatures,
                                  ignore_unknown_fields=True)
        except (KeyError, TypeError, json_format.ParseError):
            raise PipelineError(
                f"TF Serving at {self.server} sent metadata without signatures"
            ) from None
        return {name: _signature_of(value) for name, value in signatures.signature_def.items()}

    def classify(self, what, images):
        # TF Serving's row format; binary strings travel as {"b64": ...}.
        instances = [{contract.BYTES_INPUT: {"b64": base64.b64encode(image).decode()}}
                     for image in images]
        reply = self._call(self.url + ":predict",
                           {"signature_name": contract.BYTES_SIGNATURE, "instances": instances},
                           what)
        try:
            rows = reply["predictions"]
            return {name: np.array([row[name] for row in rows]) for name in rows[0]}
        except (KeyError, IndexError, TypeError, ValueError):
            raise PipelineError(
                f"{what}: TF Serving at {self.server} sent a reply without predictions "
                "in TF Serving's row format"
            ) from None


class _Grpc:
    """TF Serving's gRPC PredictionService: GetModelMetadata, then Predict."""

    def __init__(self, target, model_name, version):
        self.target = target
        # gRPC refuses answers over 4 MB by default: less than 1,024 images of
        # ImageNet's 1,000 classes.
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]))
        self.model_name, self.version = model_name, version

    def _spec(self, model_spec):
        model_spec.name = self.model_name
        if self.version is not None:
            model_spec.version.value = self.version

    def _call(self, method, request, what):
        try:
            return method(request, timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            code, detail = error.code(), first_line(error.details() or "")
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise PipelineError(
                    f"cannot reach TF Serving at {self.target} ({detail}); check `grpc_target`"
                ) from None
            raise PipelineError(
                f"{what}: TF Serving at {self.target} answered {code.name}: {_shown(detail)}"
            ) from None

    def signature(self):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        response = self._call(self.stub.GetModelMetadata, request, "the model's metadata")
        signatures = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata[
            "signature_def"
        ].Unpack(signatures):
            raise PipelineError(f"TF Serving at {self.target} sent metadata without signatures")
        return {name: _signature_of(value) for name, value in signatures.signature_def.items()}

    def classify(self, what, images):
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec)
        request.model_spec.signature_name = contract.BYTES_SIGNATURE
        request.inputs[contract.BYTES_INPUT].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
        response = self._call(self.stub.Predict, request, what)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


class _Local:
    """An export on disk, run through the same signature."""

    def __init__(self, saved_model):
        self.version_dir = saved_models.resolve_saved_model(saved_model)
        # Kept: it owns the variables the signature reads.
        self.loaded, _ = contract.load_serving_signature(self.version_dir)

    def signature(self):
        signatures = {}
        for name, function in self.loaded.signatures.items():
            inputs = function.structured_input_signature[1]
            outputs = function.structured_outputs
            signatures[name] = {
                kind: {key: (spec.dtype.as_datatype_enum, spec.shape.as_list())
                       for key, spec in specs.items()}
                for kind, specs in (("inputs", inputs), ("outputs", outputs))
            }
        return signatures

    def classify(self, what, images):
        signature = self.loaded.signatures[contract.BYTES_SIGNATURE]
        try:
            outputs = signature(**{contract.BYTES_INPUT: tf.constant(images, tf.string)})
        except tf.errors.InvalidArgumentError as error:
            raise PipelineError(
                f"{what}: {self.version_dir} cannot classify it ({first_line(error.message)})"
            ) from None
        return {name: value.numpy() for name, value in outputs.items()}


def _shown(text, limit=200):
    """A server's text as one printable line of at most `limit` characters."""
    text = " ".join(str(text).split())
    text = "".join(character if character.isprintable() else "?" for character in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _checked_answer(outputs, count, where, what):
    """The outputs of `count` images as this client reads them; `PipelineError`
    naming the server and what is wrong with anything TF Serving would not send."""
    def wrong(problem):
        return PipelineError(f"{what}: the model at {where} answered {problem}; it is not "
                             "an export of this pipeline, or not TF Serving")

    checked = {}
    for name in ("top_k_class_name", "top_k_probabilities"):
        value = np.asarray(outputs.get(name)) if name in outputs else None
        if value is None or value.ndim != 2 or len(value) != count:
            raise wrong(f"`{name}` for {'no' if value is None else len(value)} of {count} "
                        "images, or not as a table")
        checked[name] = value
    try:
        probabilities = checked["top_k_probabilities"].astype(np.float64)
    except (TypeError, ValueError):
        raise wrong("`top_k_probabilities` that are not numbers in [0, 1]") from None
    if not np.all(np.isfinite(probabilities)) or np.any(probabilities < 0) or np.any(
            probabilities > 1.0 + 1e-6):
        raise wrong("`top_k_probabilities` that are not numbers in [0, 1]")
    checked["top_k_probabilities"] = probabilities
    if checked["top_k_class_name"].shape != probabilities.shape:
        raise wrong("as many class names as probabilities for no image")
    for name, kind in (("valid", bool), ("error", str)):
        if name in outputs:
            value = np.asarray(outputs[name])
            if value.shape != (count,):
                raise wrong(f"`{name}` for {value.size} of {count} images")
            if kind is bool and value.dtype != bool:
                raise wrong("`valid` that is not true or false")
            checked[name] = value
    return checked


def _check_signature(signatures, where):
    """The class count of an export of this pipeline; `PipelineError` if the
    model's `serving_default` is of another kind."""
    signature = signatures.get(contract.BYTES_SIGNATURE)
    expected = (f"a `{contract.BYTES_SIGNATURE}` signature taking string "
                f"`{contract.BYTES_INPUT}` and answering {', '.join(_NEEDED_OUTPUTS)}")
    if signature is None:
        raise PipelineError(f"the model at {where} is not one this client can ask: it has no "
                            f"{contract.BYTES_SIGNATURE} signature ({expected} is needed)")
    inputs, outputs = signature["inputs"], signature["outputs"]
    dtype = inputs.get(contract.BYTES_INPUT, (None,))[0]
    missing = [name for name in _NEEDED_OUTPUTS if name not in outputs]
    if dtype != tf.string.as_datatype_enum or len(inputs) != 1 or missing:
        found = ", ".join(f"{name} ({tf.dtypes.as_dtype(info[0]).name})"
                          for name, info in sorted(inputs.items()))
        raise PipelineError(
            f"the model at {where} is not one this client can ask: its "
            f"{contract.BYTES_SIGNATURE} takes {found or 'nothing'}"
            + (f" and lacks {', '.join(missing)}" if missing else "")
            + f"; {expected} is needed"
        )
    # Unknown (-1) when the server's metadata gives no shape.
    shape = outputs["probabilities"][1]
    return shape[-1] if shape else -1


def predict(
    image_paths,
    *,
    server=None,
    grpc_target=None,
    saved_model=None,
    model_name="alexnet",
    version=None,
    top_k=5,
    batch_size=32,
):
    """A `Prediction` for each image file (directories are searched), in order.

    Exactly one of `server` (TF Serving's REST address, `http://HOST:8501`),
    `grpc_target` (`HOST:8500`) or `saved_model` (an export on disk) says where
    the model is. Images go `batch_size` to a request.
    """
    if sum(place is not None for place in (server, grpc_target, saved_model)) != 1:
        raise PipelineError("give exactly one of `server`, `grpc_target` or `saved_model`")
    if batch_size < 1 or batch_size > contract.MAX_IMAGES_PER_REQUEST:
        raise PipelineError(f"`batch_size` must be 1 to {contract.MAX_IMAGES_PER_REQUEST}. "
                            f"Received: batch_size={batch_size}")
    paths = image_files(image_paths)
    if server is not None:
        model, where = _Rest(server, model_name, version), server
    elif grpc_target is not None:
        model, where = _Grpc(grpc_target, model_name, version), grpc_target
    else:
        model = _Local(saved_model)
        where = model.version_dir
    num_classes = _check_signature(model.signature(), where)
    logger.info("%s: %s classes, %d images in requests of %d", where, num_classes,
                len(paths), batch_size)
    answered = min(contract.TOP_K, num_classes) if num_classes > 0 else contract.TOP_K
    if top_k > answered:
        logger.warning("The model answers its top %d classes only, not %d", answered, top_k)
    results = []
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        what = batch[0] if len(batch) == 1 else f"{batch[0]} and {len(batch) - 1} more"
        # A file that cannot be read is answered on its own; the rest are sent.
        contents = [_read(path) for path in batch]
        sent = [content for content in contents if isinstance(content, bytes)]
        outputs = (_checked_answer(model.classify(what, sent), len(sent), where, what)
                   if sent else {})
        valid = outputs.get("valid", np.ones(len(sent), bool))
        errors = outputs.get("error", np.full(len(sent), ""))
        row = -1
        for path, content in zip(batch, contents):
            if isinstance(content, str):
                results.append(Prediction(path, error=content))
                continue
            row += 1
            if not valid[row]:
                error = errors[row]
                results.append(Prediction(path, error=error.decode()
                                          if isinstance(error, bytes) else str(error)))
                continue
            names = [name.decode() if isinstance(name, bytes) else str(name)
                     for name in outputs["top_k_class_name"][row]]
            probabilities = [float(value) for value in outputs["top_k_probabilities"][row]]
            results.append(Prediction(path, tuple(zip(names, probabilities))[:top_k]))
    return results
