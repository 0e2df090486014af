"""The process environment a pipeline command sets before TensorFlow loads.

TensorFlow reads these variables once, when it is imported, so a command sets
them first (the preamble of `pipeline.run` and the other commands); importing
the pipeline as a library changes nothing. Values the user set win.
"""

import os


def prepare():
    # oneDNN is off by default on this project's AMD CPUs and turning it on
    # made training ~20% faster there; level 2 hides TensorFlow's start-up
    # chatter about CPU instructions and missing CUDA drivers.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
