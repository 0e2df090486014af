"""Temporary directories that become a finished output in one rename.

Ingest and export both write aside and rename into place, so that nobody (a
later run, TF Serving) sees half an output. A writer killed midway leaves its
temporary directory behind; the next writer removes it once it is sure the
owner is gone. Names carry the host and the process id: on storage shared by
several machines, a directory is only judged by a process on its own host.
Before the rename, everything is flushed to disk (`sync_tree`), so that a power
loss cannot leave a published name over partial files.

Paths go through `tf.io.gfile`, so outputs may live on any file system
TensorFlow has (`gs://`, `s3://`, `hdfs://`, `ram://`). Only a local file
system renames a directory in one step: elsewhere (object stores have no
directories to rename) `publish` copies file by file, the files that make an
output loadable last.
"""

import errno
import fcntl
import logging
import os
import re
import secrets
import socket
import stat

import tensorflow as tf

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


def is_local(path):
    """Whether `path` is on the local file system (no `scheme://`)."""
    return "://" not in os.fspath(path)


def absolute(path):
    """`path` (a string or `os.PathLike`) made absolute if local; a URL as it is."""
    path = os.fspath(path)
    return os.path.abspath(path) if is_local(path) else path


def read_regular_file(path, limit):
    """The bytes of the local regular file at `path`, of at most `limit` bytes.

    Opened without blocking and checked on the descriptor, so a FIFO, a device
    (a link to /dev/zero) or a directory is refused before anything is read,
    and what is read is what was checked. Raises `OSError` whose `strerror`
    says why.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if status.st_size > limit:
            raise OSError(errno.EFBIG, f"over {limit:,} bytes", path)
        data = file.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"over {limit:,} bytes", path)
    return data


def remove(path):
    """Removes a file or a directory tree, if it is there."""
    _release(path)
    try:
        if tf.io.gfile.isdir(path) and not os.path.islink(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)
    except tf.errors.NotFoundError:
        pass


def replace_file(path, text):
    """Writes `text` as the whole of `path`, through a file beside it renamed
    over it: a reader sees the old content or the new one. (It also keeps
    `ram://` right, whose write mode appends to an existing file.)"""
    rename(write_synced(f"{path}.{owner_tag()}.tmp", text), path)


def write_synced(path, text):
    """Writes `text` to `path`, flushed to disk (where that applies); returns `path`."""
    with tf.io.gfile.GFile(path, "w") as file:
        file.write(text)
    sync(path)
    return path


def rename(source, destination):
    """Renames a file over `destination`: `os.replace` (atomic) where local."""
    if is_local(destination):
        os.replace(source, destination)
    else:
        tf.io.gfile.rename(source, destination, overwrite=True)


# {temporary directory: descriptor holding its flock} of this process's
# temporary directories, until they are published or removed.
_HELD = {}


def _release(path):
    descriptor = _HELD.pop(os.fspath(path), None)
    if descriptor is not None:
        os.close(descriptor)


def _lock_directory(path, blocking):
    """An open descriptor of directory `path` holding its exclusive flock, or
    None when another process holds it (and `blocking` is false)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def make(parent, prefix):
    """A new temporary directory `parent/<prefix><host>-<pid>-<random>`, after
    removing the ones that earlier writers on this host abandoned.

    Locally, this process holds the directory's flock until it exits: the
    kernel releases it however the process ends, and a writer in another PID
    namespace (a container sharing the disk and the host name) holds it too,
    where its pid says nothing."""
    tf.io.gfile.makedirs(parent)
    remove_abandoned(parent, prefix)
    path = os.path.join(parent, f"{prefix}{owner_tag()}-{secrets.token_hex(4)}")
    tf.io.gfile.makedirs(path)
    if is_local(path):
        _HELD[path] = _lock_directory(path, blocking=True)
    return path


def publish(temp_dir, destination, last=()):
    """Moves the finished `temp_dir` to `destination`; False, and nothing
    moved, if `destination` exists already.

    Local: flushed to disk, then one rename, so that readers see the whole
    output or none of it. Other file systems: copied file by file, the files
    named in `last` (those a reader loads the output by) after all others,
    then `temp_dir` removed; a reader polling meanwhile may see a part.
    """
    if is_local(destination):
        sync_tree(temp_dir)
        try:
            os.rename(temp_dir, destination)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return False
        _release(temp_dir)
        sync(os.path.dirname(destination) or ".")
        return True
    if tf.io.gfile.exists(destination):
        return False
    files = _files_under(temp_dir)
    for name in sorted(files, key=lambda name: os.path.basename(name) in last):
        target = os.path.join(destination, name)
        tf.io.gfile.makedirs(os.path.dirname(target))
        tf.io.gfile.copy(os.path.join(temp_dir, name), target)
    remove(temp_dir)
    return True


def _files_under(directory):
    """Paths of the files under `directory`, relative to it.

    Found level by level with `glob` rather than `gfile.walk`: TensorFlow's
    `ram://` file system lists `assets.extra/x` as a child `.extra/x` of a
    sibling `assets`, and its walk follows that.
    """
    files, pattern = [], directory
    while True:
        pattern = os.path.join(pattern, "*")
        paths = tf.io.gfile.glob(pattern)
        if not paths:
            return files
        files += [path[len(directory):].lstrip("/") for path in paths
                  if not tf.io.gfile.isdir(path)]


def sync(path):
    """Flushes a file, or a directory's entries, to disk (local paths only;
    other file systems have flushed when their file was closed)."""
    if not is_local(path):
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_tree(directory):
    """Flushes every file under `directory`, and the directories, to disk."""
    if not is_local(directory):
        return
    for parent, _, files in os.walk(directory):
        for name in files:
            sync(os.path.join(parent, name))
        sync(parent)


def _abandoned(path, pid):
    """Whether the writer of `path` (pid `pid` on this host) is gone: its pid
    is not alive here and, locally, nobody holds the directory's flock."""
    if _is_alive(pid):
        return False
    if not is_local(path) or not os.path.isdir(path) or os.path.islink(path):
        return True
    try:
        descriptor = _lock_directory(path, blocking=False)
    except OSError:
        return False
    if descriptor is None:
        return False  # held: a live writer whose pid is another namespace's
    os.close(descriptor)
    return True


def remove_abandoned(parent, prefix):
    """Removes `parent/<prefix><host>-<pid>...` directories (or files) of this
    host whose writer is gone; other hosts' and live writers' are left alone."""
    if not tf.io.gfile.isdir(parent):
        return
    pattern = re.compile(re.escape(f"{prefix}{socket.gethostname()}-") + r"(\d+)(?:-|$)")
    for name in tf.io.gfile.listdir(parent):
        name = name.rstrip("/")
        match = pattern.match(name)
        path = os.path.join(parent, name)
        if match and _abandoned(path, int(match.group(1))):
            log.info("Removing %s, left by an interrupted writer", path)
            remove(path)
