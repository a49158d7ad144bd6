"""Atomic file writes and the JSON files every job writes and reads.

A failing or interrupted writer never leaves a truncated file where a good one was, and readers never
see a partial one: every writer goes through `atomic_open`, which renames a finished temporary file
into place. It does not fsync, so it guards against a failing or killed process and a full disk, not
against power loss.
"""
import contextlib
import json
import os
import secrets
import shutil
import tempfile

_TMP_PREFIX = ".tmp-"  # hidden, so that globs such as *.tfrecord never pick up a file being written


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Opens a temporary file next to `path` that replaces `path` when the block completes.

    The temporary file (".tmp-<name>.<random>" in the same folder, so the rename stays on one file
    system) has the usual permissions (0o666 minus the umask). If the block raises, the temporary file
    is removed and `path` is left as it was. The folder of `path` is created if needed.

    Args:
        path: the file to write (str or os.PathLike).
        mode: "wb" (bytes) or "w" (UTF-8 text).

    Yields:
        The open file object.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    tmp = os.path.join(folder, f"{_TMP_PREFIX}{name}.{secrets.token_hex(4)}")
    try:
        # "x" creates the file exclusively with the process umask (tempfile.mkstemp would give 0600).
        f = open(tmp, mode.replace("w", "x"), encoding="utf-8" if mode == "w" else None)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        with f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            raise _naming(e, path) from e  # a failed write or flush (a full disk) names no file
        raise


def _naming(error, path):
    """`error` (an OSError) naming `path`, the file being written, rather than its temporary file.

    OSError(errno, ...) makes the subclass of the errno (PermissionError, ...).
    """
    return OSError(error.errno, error.strerror, path)


@contextlib.contextmanager
def atomic_directory(path):
    """Yields a temporary folder next to `path` that replaces the folder `path` when the block completes.

    For outputs that are folders (a SavedModel). The temporary folder gets the usual permissions
    (0o777 minus the umask). An existing `path` is moved aside and deleted only once the new folder
    is in place; if the block raises, the temporary folder is removed and `path` is left as it was.

    Args:
        path: the folder to write.

    Yields:
        The temporary folder's path (str).
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=_TMP_PREFIX)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=".old-")
            os.replace(path, os.path.join(old, "previous"))
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path, data):
    """Writes `data` (bytes) to `path` atomically (see `atomic_open`)."""
    with atomic_open(path) as f:
        f.write(data)


def write_json(path, value):
    """Writes `value` as indented JSON with sorted keys, atomically.

    Values JSON cannot hold (paths, NumPy scalars, ...) are written as their str().
    """
    with atomic_open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def read_json(path):
    """Reads a JSON file.

    Raises:
        FileNotFoundError: `path` does not exist (the message names it).
        ValueError: `path` is not valid UTF-8 JSON (the message names it and the position).
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
