"""Temporary directories that become a finished output in one rename.

Ingest and export both write aside and rename into place, so that nobody (a
later run, TF Serving) sees half an output. A writer killed midway leaves its
temporary directory behind; the next writer removes it once it is sure the
owner is gone. Names carry the host and the process id: on storage shared by
several machines, a directory is only judged by a process on its own host.
Before the rename, everything is flushed to disk (`sync_tree`), so that a power
loss cannot leave a published name over partial files.
"""

import logging
import os
import re
import shutil
import socket

log = logging.getLogger(__name__)


def owner_tag():
    """`<host>-<pid>` of this process, for a temporary directory's name."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _is_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sync(path):
    """Flushes a file, or a directory's entries, to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_tree(directory):
    """Flushes every file under `directory`, and the directories, to disk."""
    for parent, _, files in os.walk(directory):
        for name in files:
            sync(os.path.join(parent, name))
        sync(parent)


def remove_abandoned(parent, prefix):
    """Removes `parent/<prefix><host>-<pid>...` directories (or files) of this
    host whose process is gone; other hosts' and live writers' are left alone."""
    if not os.path.isdir(parent):
        return
    pattern = re.compile(re.escape(f"{prefix}{socket.gethostname()}-") + r"(\d+)(?:-|$)")
    for name in os.listdir(parent):
        match = pattern.match(name)
        if match and not _is_alive(int(match.group(1))):
            path = os.path.join(parent, name)
            log.info("Removing %s, left by an interrupted writer", path)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
