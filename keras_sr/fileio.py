"""Atomic file writes: a crash or a full disk never leaves a truncated file where a good one was."""
import json
import os


def write_bytes_atomic(path, data):
    """Writes `data` (bytes) to `path` through a temporary file in the same folder and `os.replace`."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, value):
    """Writes `value` as indented JSON, atomically (values JSON cannot hold are written as str)."""
    text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))
