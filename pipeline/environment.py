"""The process a pipeline command sets up before TensorFlow loads.

TensorFlow reads its variables once, when it is imported, so every command
calls `prepare()` first (the preamble of `python -m pipeline.run` and the
others, and the console commands of `pipeline.commands`); importing the
pipeline as a library changes nothing. Values the user set win.
"""

import contextlib
import os
import sys

VERBOSE_FLAG = "--verbose"


def prepare(argv=None):
    """Sets TensorFlow's variables and imports it, quietly unless `argv` (the
    command's arguments, `sys.argv[1:]` by default) holds `--verbose`."""
    # oneDNN is off by default on this project's AMD CPUs and turning it on
    # made training ~20% faster there.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    verbose = VERBOSE_FLAG in (sys.argv[1:] if argv is None else argv)
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    # TensorFlow's C++ warnings and errors still show; its INFO lines do not.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The level is not read before absl's logging starts: the import's own
    # lines (oneDNN, the CUDA stubs) and the first look for a GPU (cuInit)
    # would print whatever it says, so they run with C++'s stderr closed.
    with _native_stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()


@contextlib.contextmanager
def _native_stderr_silenced():
    """Sends file descriptor 2, where C++ code writes, to /dev/null for a while.

    Python's own `sys.stderr` is flushed first and works again afterwards, so a
    traceback raised inside still prints once the block is left.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
