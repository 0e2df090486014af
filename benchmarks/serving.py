"""Serving speed: the export's `serving_default` on JPEG bytes against the same
model's bare forward pass, and a REST server under concurrent clients.

    python -m benchmarks.serving
    python -m benchmarks.serving --image-size 67 --calls 3 --clients 2  # smoke

It exports the paper AlexNet (227x227x3, 10 classes) with
`builder.export_saved_model`, loads it the way TF Serving does (the C++
SavedModel loader through a graph session, tag `serve`) and measures:

1. `serving_default` on JPEG bytes (300-500 pixels a side, like ImageNet's) at
   batch 1, 8, 32 and 64: images/s and the median and p99 latency over
   `--calls` calls, beside the bare forward pass of the same Keras model on
   ready float tensors at the same batch, their ratio, and the share of the
   request's median spent outside the model (decoding, resizing and the
   per-image error handling);
2. `serving_ten_crop` (the paper's ten-crop test) at batch 1 and 8, against
   `serving_default` at the same batch: what the paper's measurement costs;
3. TF Serving's REST predict API, emulated by a threaded HTTP server over the
   same session (no batching across requests), with `--clients` concurrent
   clients each sending `--calls` requests of 8 images;
4. where a one-image request's time goes: each stage of `serving_default`
   built alone in a graph session (reading the header, decoding, preprocessing,
   the `tf.data` pass that isolates each image) and the whole signature.

Run it on a quiet machine; it names the CPU it ran on.
"""

import argparse
import base64
import concurrent.futures
import http.server
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

from benchmarks import common

BATCHES = (1, 8, 32, 64)
TEN_CROP_BATCHES = (1, 8)
REST_BATCH = 8


def _p99(times):
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


class _Session:
    """An export loaded as TF Serving loads it, run by its tensor names."""

    def __init__(self, path):
        import tensorflow as tf

        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        self.signatures = meta_graph.signature_def

    def run(self, images, signature_name="serving_default"):
        signature = self.signatures[signature_name]
        outputs = {name: info.name for name, info in signature.outputs.items()}
        return self.session.run(outputs, {signature.inputs["image_bytes"].name: images})


def _graph_latency(function, images, calls):
    """Median seconds of `function` (string [n] -> tensors) on `images`, built
    into a graph and run in a session as TF Serving runs a signature."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        image_bytes = tf.compat.v1.placeholder(tf.string, [None])
        outputs = tf.function(function)(image_bytes)
    with tf.compat.v1.Session(graph=graph) as session:
        return statistics.median(common.latencies(
            lambda: session.run(outputs, {image_bytes: images}), calls))


def _stages(model, session, image, calls):
    """(stage, median ms) of one request of `image`: each of `serving_default`'s
    stages alone, the signature, and the bare model."""
    import tensorflow as tf

    from pipeline.config import DataConfig
    from pipeline.data import image_formats
    from pipeline.data import preprocess_ops
    from pipeline.serving import builder

    spec = model.image_spec

    def decoded(image_bytes):
        return preprocess_ops.decode_image(image_bytes[0], spec.channels)

    forward = tf.function(lambda images: model(images, training=False))
    ready = tf.random.uniform([1, *spec.shape])
    stages = [
        ("read the header", lambda b: image_formats.header_sizes_op(b)),
        ("decode", decoded),
        ("decode and preprocess", lambda b: preprocess_ops.preprocess_for_eval(decoded(b), spec)),
        ("header, decode and preprocess, isolated by tf.data",
         lambda b: builder._decode_each(b, spec, DataConfig.max_pixels,
                                        image_formats.MAX_ASPECT_RATIO)),
    ]
    rows = [(name, _graph_latency(function, [image], calls)) for name, function in stages]
    rows.append(("serving_default", statistics.median(
        common.latencies(lambda: session.run([image]), calls))))
    rows.append(("bare forward pass", statistics.median(
        common.latencies(lambda: forward(ready).numpy(), calls))))
    return [(name, 1e3 * seconds) for name, seconds in rows]


def _rest_server(session):
    """TF Serving's REST `:predict` (row format) over `session`, on a free port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            images = [base64.b64decode(row["image_bytes"]["b64"]) for row in body["instances"]]
            outputs = session.run(images)
            rows = [{"class_name": outputs["class_name"][row].decode(),
                     "valid": bool(outputs["valid"][row])} for row in range(len(images))]
            data = json.dumps({"predictions": rows}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _rest_load(url, images, clients, calls):
    """`clients` threads, each sending `calls` requests; (latencies, seconds)."""
    body = json.dumps({"signature_name": "serving_default", "instances": [
        {"image_bytes": {"b64": base64.b64encode(image).decode()}} for image in images
    ]}).encode()

    def client(_):
        times = []
        for _ in range(calls):
            request = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=600) as response:
                assert all(row["valid"] for row in json.loads(response.read())["predictions"])
            times.append(time.perf_counter() - start)
        return times

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        times = [time for result in pool.map(client, range(clients)) for time in result]
    return times, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--calls", type=int, default=30, help="timed calls per figure")
    parser.add_argument("--clients", type=int, default=4, help="concurrent REST clients")
    args = parser.parse_args(argv)
    common.prepare_process()
    import tensorflow as tf

    from alexnet_keras import AlexNet
    from pipeline.serving import builder

    model = AlexNet(num_classes=common.NUM_CLASSES,
                    input_shape=(args.image_size, args.image_size, 3))
    forward = tf.function(lambda images: model(images, training=False))
    with tempfile.TemporaryDirectory() as directory:
        common.write_jpegs(os.path.join(directory, "images"), max(BATCHES))
        jpegs = [open(os.path.join(parent, name), "rb").read()
                 for parent, _, names in sorted(os.walk(os.path.join(directory, "images")))
                 for name in sorted(names)]
        session = _Session(builder.export_saved_model(
            model, [str(index) for index in range(common.NUM_CLASSES)],
            os.path.join(directory, "alexnet")))
        print(f"CPU: {common.cpu_model()}; paper AlexNet at {args.image_size}x"
              f"{args.image_size}x3, {args.calls} calls per figure")
        print(f"{'batch':>5} {'signature img/s':>16} {'median ms':>10} {'p99 ms':>8} "
              f"{'forward img/s':>14} {'ratio':>6} {'outside model':>14}")
        for batch in BATCHES:
            images = jpegs[:batch]
            served = common.latencies(lambda: session.run(images), args.calls)
            ready = tf.random.uniform([batch, args.image_size, args.image_size, 3])
            bare = common.latencies(lambda: forward(ready).numpy(), args.calls)
            served_rate = batch / statistics.median(served)
            bare_rate = batch / statistics.median(bare)
            print(f"{batch:>5} {served_rate:>16.1f} {1e3 * statistics.median(served):>10.1f} "
                  f"{1e3 * _p99(served):>8.1f} {bare_rate:>14.1f} "
                  f"{served_rate / bare_rate:>6.2f} {1 - served_rate / bare_rate:>14.0%}")

        print(f"{'batch':>5} {'ten-crop img/s':>16} {'median ms':>10} {'p99 ms':>8} "
              f"{'default img/s':>14} {'ratio':>6}")
        for batch in TEN_CROP_BATCHES:
            images = jpegs[:batch]
            ten_crop = common.latencies(lambda: session.run(images, "serving_ten_crop"),
                                        args.calls)
            default = common.latencies(lambda: session.run(images), args.calls)
            ten_crop_rate = batch / statistics.median(ten_crop)
            default_rate = batch / statistics.median(default)
            print(f"{batch:>5} {ten_crop_rate:>16.1f} {1e3 * statistics.median(ten_crop):>10.1f} "
                  f"{1e3 * _p99(ten_crop):>8.1f} {default_rate:>14.1f} "
                  f"{ten_crop_rate / default_rate:>6.2f}")

        server = _rest_server(session)
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/models/alexnet:predict"
        for clients in sorted({1, args.clients}):
            times, seconds = _rest_load(url, jpegs[:REST_BATCH], clients, args.calls)
            rate = len(times) * REST_BATCH / seconds
            print(f"REST, {clients} client(s), {REST_BATCH} images per request: "
                  f"{rate:.1f} images/s, median {1e3 * statistics.median(times):.0f} ms, "
                  f"p99 {1e3 * _p99(times):.0f} ms")
        server.shutdown()
        server.server_close()

        print("One image, stage by stage (median ms):")
        for name, milliseconds in _stages(model, session, jpegs[0], args.calls):
            print(f"  {name:<52} {milliseconds:>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
