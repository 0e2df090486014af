"""Input preprocessing on tf.data service: reading, decoding and augmenting the
training split on other machines' cores, TensorFlow's own engine for it.

    alexnet-data-service dispatcher --port 5050
    alexnet-data-service worker --dispatcher HOST:5050 --port 5051
    python -m pipeline.run --data-service grpc://HOST:5050

A worker needs nothing but this package (so that its TensorFlow matches the
trainer's): the trainer sends the pipeline's functions to the service as graphs.

The training dataset is split dynamically (`ShardingPolicy.DYNAMIC`): the
dispatcher hands each worker whole shard files, so one pass of a job reads
every example once, whichever worker reads it. TensorFlow documents it as at
most once: the files a lost worker was reading are not read again in that
pass. Batching stays on the trainer, so the workers' shares need not be
multiples of the batch. Every iteration is a job of its own (no job name):
each epoch, and each input pipeline of a multi-worker run, reads its own
pass, and a restarted trainer never joins the job its killed run left.
"""

import argparse
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse

import tensorflow as tf

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

PROTOCOL = "grpc"
# A dispatcher that does not answer within this time is not there.
_CONNECT_TIMEOUT_SECONDS = 10
# Workers report every 2 s and one silent for 10 s is dropped: the trainers
# then go on with the others. (TensorFlow's defaults, 30 s and an hour, leave
# a trainer waiting on a lost worker for that hour.)
HEARTBEAT_MS = 2_000
WORKER_TIMEOUT_MS = 10_000


def host_and_port(address):
    """`(host, port)` of a dispatcher address, `grpc://host:port` or `host:port`;
    raises `ConfigError` naming the setting otherwise."""
    parsed = urllib.parse.urlsplit(address if "://" in address else f"{PROTOCOL}://{address}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != PROTOCOL or not parsed.hostname or port is None:
        raise ConfigError(
            f"`data_service` must be a dispatcher address, grpc://HOST:PORT. "
            f"Received: data_service={address!r}"
        )
    return parsed.hostname, port


def check_reachable(address, wait_seconds=0):
    """Raises `ConfigError` unless a server (a dispatcher, or a worker) accepts
    connections at `address` within `wait_seconds`: tf.data service would
    otherwise retry for as long as its timeout, silently."""
    host, port = host_and_port(address)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_SECONDS).close()
            return
        except OSError as error:
            failure = error
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    raise ConfigError(
        f"no tf.data service dispatcher answers at data_service={address!r} "
        f"({failure.strerror or failure}); start one with `alexnet-data-service dispatcher "
        f"--port {port}` or drop `data_service` to preprocess locally"
    ) from None


def distribute(dataset, address):
    """`dataset`'s elements, produced by the service's workers, each element
    of a pass once (but see the module's note on lost workers)."""
    host, port = host_and_port(address)
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
        service=f"{PROTOCOL}://{host}:{port}",
    ))


class Watchdog:
    """Inside `with watchdog:` for more than `timeout` seconds, the process ends
    with `exit_status` after logging `message`.

    A tf.data service job whose worker died holding unread files never ends
    (measured: the trainer waits with no error, whatever the dispatcher's
    worker timeout), and a thread is the one place that can see it: the
    trainer's own thread is blocked in TensorFlow.
    """

    def __init__(self, timeout, message, exit_status):
        self.timeout = timeout
        self.message = message
        self.exit_status = exit_status
        self._entered = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="data-service-watchdog",
                                        daemon=True)
        self._thread.start()

    def __enter__(self):
        self._entered = time.monotonic()
        return self

    def __exit__(self, *exc_info):
        self._entered = None

    def stop(self):
        self._stopped.set()
        self._thread.join()

    def _watch(self):
        while not self._stopped.wait(min(1.0, self.timeout / 10)):
            entered = self._entered
            if entered is not None and time.monotonic() - entered > self.timeout:
                break
        else:
            return
        log.error("%s", self.message)
        logging.shutdown()
        sys.stderr.flush()
        os._exit(self.exit_status)


def make_parser():
    parser = argparse.ArgumentParser(
        prog="alexnet-data-service",
        description="Run a tf.data service dispatcher or worker for `python -m "
                    "pipeline.run --data-service grpc://HOST:PORT`.",
    )
    commands = parser.add_subparsers(dest="role", required=True)
    dispatcher = commands.add_parser("dispatcher", help="the one process that hands out work")
    dispatcher.add_argument("--port", type=_port, default=5050,
                            help="port to serve on (default: %(default)s)")
    dispatcher.add_argument("--work-dir", help="where the dispatcher keeps its journal, so "
                            "a restarted dispatcher resumes its jobs (a shared file system "
                            "or gs://; none: jobs end with it)")
    worker = commands.add_parser("worker", help="a process that reads and preprocesses")
    worker.add_argument("--dispatcher", required=True, type=_dispatcher_address,
                        help="the dispatcher's HOST:PORT")
    worker.add_argument("--port", type=_port, default=0,
                        help="port to serve on (default: any free one)")
    worker.add_argument("--worker-address",
                        help="the host name the trainers reach this worker at (default: "
                             "this machine's name; in Kubernetes, the pod IP)")
    return parser


def _port(text):
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port < 2**16:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}")
    return port


def _dispatcher_address(text):
    try:
        host, port = host_and_port(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None
    return f"{host}:{port}"


def serve(args):
    """Starts the server `args` describe and serves until the process is stopped."""
    service = tf.data.experimental.service
    if args.role == "dispatcher":
        server = service.DispatchServer(service.DispatcherConfig(
            port=args.port, work_dir=args.work_dir, fault_tolerant_mode=bool(args.work_dir),
            worker_timeout_ms=WORKER_TIMEOUT_MS))
        address = f"{socket.gethostname()}:{server.target.rsplit(':', 1)[1]}"
        print(f"tf.data service dispatcher at grpc://{address}; workers: "
              f"alexnet-data-service worker --dispatcher {address}", flush=True)
    else:
        host = args.worker_address or socket.gethostname()
        server = service.WorkerServer(service.WorkerConfig(
            dispatcher_address=args.dispatcher, port=args.port,
            worker_address=f"{host}:%port%", heartbeat_interval_ms=HEARTBEAT_MS))
        print(f"tf.data service worker of dispatcher {args.dispatcher}", flush=True)
    server.join()


def main(argv=None):
    serve(make_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
