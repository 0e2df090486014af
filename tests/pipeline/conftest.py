"""Fixtures shared by the pipeline tests, each made once per session: the digits
ingest, a digits AlexNet fitted to it and its export, and free ports."""

import socket

import pytest

import testlib
from pipeline.config import DataConfig
from pipeline.data import ingest
from pipeline.evaluation import metrics as evaluation
from pipeline.serving import builder


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """sklearn's digits, ingested (an IngestedDataset). Tests only read it."""
    directory = str(tmp_path_factory.mktemp("digits") / "ingested")
    return ingest.ingest(DataConfig(dataset="digits"), directory)


@pytest.fixture(scope="session")
def digits_dir(digits):
    """The directory of the digits ingest, for the command line's --ingest-dir."""
    return digits.directory


@pytest.fixture(scope="session")
def fitted_weights(digits):
    """Weights of a digits AlexNet with a clear accuracy (see testlib.fit_weights)."""
    return testlib.fit_weights(digits)


@pytest.fixture()
def trained_model(fitted_weights):
    """A fresh digits AlexNet with the fitted weights, the test's own to change."""
    return testlib.digits_model(fitted_weights)


@pytest.fixture(scope="session")
def trained_export(tmp_path_factory, digits, fitted_weights):
    """The version directory (1) of the fitted model's export, three test images as
    its warm-up requests."""
    return builder.export_saved_model(
        testlib.digits_model(fitted_weights),
        digits.class_names,
        str(tmp_path_factory.mktemp("exports") / "alexnet"),
        warmup_images=testlib.encoded_split(digits, "test")[0][:3],
    )


class _Ports:
    """Free TCP ports, none handed out twice in a session.

    Binding port 0 and closing the socket gives a port that is free now, and the
    kernel may give the same one to the next such probe: two servers asked to
    listen on it would collide. Remembering every port handed out rules that out
    within the session.
    """

    def __init__(self):
        self.handed_out = set()

    def __call__(self):
        while True:
            with socket.socket() as probe:
                probe.bind(("", 0))
                port = probe.getsockname()[1]
            if port not in self.handed_out:
                self.handed_out.add(port)
                return port


@pytest.fixture(scope="session")
def free_port():
    """A function returning a free TCP port, a different one on every call."""
    return _Ports()


@pytest.fixture(scope="module")
def trained_metrics(tmp_path_factory, digits, fitted_weights):
    """evaluate() of the trained Keras model, and the run directory it wrote."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    model = testlib.digits_model(fitted_weights)
    return evaluation.evaluate(model, digits, run_dir, ten_crop=True), run_dir
