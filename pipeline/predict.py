"""Predict: classify image files with a served or an exported AlexNet.

    python -m pipeline.predict cat.jpg --server http://localhost:8501 --model alexnet
    python -m pipeline.predict cat.jpg --grpc localhost:8500 --model alexnet
    python -m pipeline.predict cat.jpg --saved-model saved_models/alexnet

prints each image's top-k classes and probabilities, asked of TF Serving over
REST or gRPC, or computed locally from an export (a version directory, or a
base directory whose newest version is used). Every image goes in a request of
its own, through the `serving_default` signature, so an image the model cannot
read is named in the error.
"""

import argparse
import base64
import json
import logging
import sys
import urllib.error
import urllib.request

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from pipeline import export
from pipeline import image_formats
from pipeline.config import PipelineError
from pipeline.config import first_line

TIMEOUT_SECONDS = 30

logger = logging.getLogger(__name__)


def _read(path):
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise PipelineError(f"cannot read {path}: {error.strerror}") from None


def _rest_url(server, model_name, version):
    url = f"{server.rstrip('/')}/v1/models/{model_name}"
    if version is not None:
        url += f"/versions/{version}"
    return url + ":predict"


def _rest_predictor(server, model_name, version):
    if not server.startswith(("http://", "https://")):
        raise PipelineError(
            f"--server must be a URL such as http://localhost:8501. Received: {server}"
        )
    url = _rest_url(server, model_name, version)

    def predict_one(path, image_bytes):
        # TF Serving's row format; binary strings travel as {"b64": ...}.
        instance = {export.BYTES_INPUT: {"b64": base64.b64encode(image_bytes).decode()}}
        body = {"signature_name": export.BYTES_SIGNATURE, "instances": [instance]}
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                reply = response.read()
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read()).get("error", error.reason)
            except ValueError:
                detail = error.reason
            raise PipelineError(
                f"{path}: TF Serving at {server} answered {error.code}: "
                f"{first_line(detail)}"
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise PipelineError(
                f"cannot reach TF Serving at {server} ({reason}); check --server"
            ) from None
        try:
            prediction = json.loads(reply)["predictions"][0]
            return prediction["top_k_class_name"], prediction["top_k_probabilities"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise PipelineError(
                f"{path}: TF Serving at {server} sent a reply without predictions "
                f"from {export.BYTES_SIGNATURE}: "
                f"{first_line(reply.decode(errors='replace'))}"
            ) from None

    return predict_one


def _grpc_predictor(target, model_name, version):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(target)
    )

    def predict_one(path, image_bytes):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = export.BYTES_SIGNATURE
        if version is not None:
            request.model_spec.version.value = version
        request.inputs[export.BYTES_INPUT].CopyFrom(
            tf.make_tensor_proto([image_bytes], dtype=tf.string)
        )
        try:
            response = stub.Predict(request, timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            code, detail = error.code(), first_line(error.details())
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise PipelineError(
                    f"cannot reach TF Serving at {target} ({detail}); check --grpc"
                ) from None
            raise PipelineError(
                f"{path}: TF Serving at {target} answered {code.name}: {detail}"
            ) from None
        outputs = response.outputs
        if "top_k_class_name" not in outputs or "top_k_probabilities" not in outputs:
            raise PipelineError(
                f"{path}: TF Serving at {target} sent a reply without top_k outputs"
            )
        names = tf.make_ndarray(outputs["top_k_class_name"])[0]
        probabilities = tf.make_ndarray(outputs["top_k_probabilities"])[0]
        return [name.decode() for name in names], probabilities.tolist()

    return predict_one


def _local_predictor(saved_model):
    version_dir = export.resolve_saved_model(saved_model)
    loaded, _ = export.load_serving_signature(version_dir)

    def predict_one(path, image_bytes):
        # Through `loaded`, which owns the variables the signature reads: a
        # signature kept without it fails once `loaded` is garbage-collected.
        signature = loaded.signatures[export.BYTES_SIGNATURE]
        try:
            outputs = signature(**{export.BYTES_INPUT: tf.constant([image_bytes])})
        except tf.errors.InvalidArgumentError as error:
            raise PipelineError(
                f"{path}: {version_dir} cannot classify it "
                f"({first_line(error.message)})"
            ) from None
        names = outputs["top_k_class_name"].numpy()[0]
        probabilities = outputs["top_k_probabilities"].numpy()[0]
        return [name.decode() for name in names], probabilities.tolist()

    return predict_one


def predict(
    image_paths,
    *,
    server=None,
    grpc_target=None,
    saved_model=None,
    model_name="alexnet",
    version=None,
    top_k=5,
):
    """The top-k (class name, probability) pairs of each image, in order.

    Exactly one of `server` (TF Serving's REST address, `http://HOST:8501`),
    `grpc_target` (`HOST:8500`) or `saved_model` (an export on disk) says where
    the model is. Returns `[(path, [(class_name, probability), ...]), ...]`.
    """
    if sum(place is not None for place in (server, grpc_target, saved_model)) != 1:
        raise PipelineError("give exactly one of --server, --grpc or --saved-model")
    images = [(path, _read(path)) for path in image_paths]
    if server is not None:
        predict_one = _rest_predictor(server, model_name, version)
    elif grpc_target is not None:
        predict_one = _grpc_predictor(grpc_target, model_name, version)
    else:
        predict_one = _local_predictor(saved_model)
    results = []
    for path, image_bytes in images:
        names, probabilities = predict_one(path, image_bytes)
        if top_k > len(names) and not results:
            logger.warning(
                "The model answers its top %d classes only, not %d", len(names), top_k
            )
        results.append((path, list(zip(names, map(float, probabilities)))[:top_k]))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Classify images with a served or exported AlexNet.",
    )
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help=f"{image_formats.FORMATS_TEXT} files"
    )
    place = parser.add_mutually_exclusive_group(required=True)
    place.add_argument(
        "--server", help="TF Serving's REST address, e.g. http://localhost:8501"
    )
    place.add_argument("--grpc", help="TF Serving's gRPC address, e.g. localhost:8500")
    place.add_argument(
        "--saved-model", help="an export: a version directory or its base directory"
    )
    parser.add_argument("--model", default="alexnet", help="the served model's name")
    parser.add_argument(
        "--version",
        type=int,
        default=None,
        help="a served version (default: the server's choice, the newest)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1. Received: {args.top_k}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        results = predict(
            args.images,
            server=args.server,
            grpc_target=args.grpc,
            saved_model=args.saved_model,
            model_name=args.model,
            version=args.version,
            top_k=args.top_k,
        )
    except PipelineError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    for path, classes in results:
        print(path)
        for rank, (name, probability) in enumerate(classes, start=1):
            print(f"  {rank}. {name:<24} {probability:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
