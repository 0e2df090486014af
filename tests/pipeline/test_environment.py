"""The process the commands set up: glibc's malloc keeps freed memory."""

import pathlib
import subprocess
import sys

import pytest

from pipeline import environment

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# In a fresh interpreter: a 64 MB allocation, freed. mallinfo2's hblks counts
# the chunks mmap serves, arena the bytes the heap holds.
_PROBE = """
import ctypes, sys
from pipeline import environment
kept = environment.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblks
block = libc.malloc(64 << 20)
ctypes.memset(block, 1, 64 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(ctypes.c_void_p(block))
print(kept, mapped, libc.mallinfo2().arena >> 20)
"""


def probe(mode, **env):
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", **env}, cwd=pathlib.Path(environment.__file__).parents[1],
    )
    kept, mapped, heap_mb = result.stdout.split()
    return kept == "True", int(mapped), int(heap_mb)


def test_freed_memory_stays_in_the_heap_for_the_next_step():
    # glibc's default: the block is mmap'd and given back when freed.
    default = probe("default")
    assert default[:2] == (False, 1) and default[2] < 64
    kept, mapped, heap_mb = probe("keep")
    assert kept and mapped == 0
    assert heap_mb >= 64


def test_a_malloc_setting_of_the_users_wins():
    assert probe("keep", MALLOC_ARENA_MAX="2")[:2] == (False, 1)
    assert probe("keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")[:2] == (False, 1)
