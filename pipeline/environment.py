"""The process a pipeline command sets up before TensorFlow loads.

TensorFlow reads its variables once, when it is imported, so every command
calls `prepare()` first (the preamble of `python -m pipeline.run` and the
others, and the console commands of `pipeline.cli`); importing the
pipeline as a library changes nothing. Values the user set win.
"""

import contextlib
import ctypes
import os
import sys

VERBOSE_FLAG = "--verbose"

# mallopt(3)'s parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# The largest threshold mallopt's int takes: a free top of the heap above
# 2 GiB is still given back.
_TRIM_THRESHOLD = 2**31 - 1


def prepare(argv=None):
    """Sets TensorFlow's variables and imports it, quietly unless `argv` (the
    command's arguments, `sys.argv[1:]` by default) holds `--verbose`."""
    # oneDNN is off by default on this project's AMD CPUs and turning it on
    # made training ~20% faster there.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    keep_freed_memory()
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


def keep_freed_memory():
    """Has glibc's malloc keep the memory a training step frees, for the next
    step, and returns whether it did.

    By default glibc serves every allocation over 32 MiB with its own mmap
    and gives it back on free, and trims the heap's free top: each step's
    activations and gradients (gigabytes for AlexNet at 227x227) then come
    back as fresh pages, about 50,000 page faults a step, which the kernel
    zeroes. Kept instead (no mmap, no trimming), the paper model's float32
    step measured 3% faster on a 2-core CPU at the same peak memory
    (docs/performance.md). The process keeps its peak memory until it exits.

    Values the user set win: any `MALLOC_*` variable or glibc malloc tunable
    leaves malloc as configured; so does a libc other than glibc.
    """
    if any(name.startswith("MALLOC_") for name in os.environ) or (
        "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    ):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc's own: mallopt's numbers are its
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1


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
