"""One writer per work directory: a lock file that names its owner.

    with WorkdirLock(workdir):          # WORKDIR/.lock holds {"pid", "host", "started", "command"}
        ...                             # a second process gets LockHeld, naming the owner

The lock is `fcntl.flock` on WORKDIR/.lock, taken without waiting. The kernel releases it when its
process ends in any way (SIGKILL included), so a lock file left behind by a dead process is stale
by construction: the next run takes it over (logging the dead owner) without guessing from pids.
The JSON inside only serves the refusal message. On exit the file is removed; a process that
locked a file another one had just removed retries on the new file (the inode check below), so two
processes never both hold the lock. flock works on local file systems and on NFS (Linux emulates
it with POSIX locks there). A process that holds the lock may take it again (nested parts of one
job: the job, its preparation, its training stages); it is released when the outermost holder
exits.
"""
import contextlib
import fcntl
import json
import os
import socket
import sys
import time

from absl import logging

LOCK_FILE = ".lock"

_held = set()  # real paths of the lock files this process holds


class LockHeld(RuntimeError):
    """Another live process holds the work directory (the message names it)."""


def _describe(owner):
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} (started {when}, "
            f"command: {owner.get('command', '?')})")


def _read_owner(fd):
    try:
        return json.loads(os.pread(fd, 65536, 0).decode("utf-8") or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def _acquire(path, folder):
    """Opens and flocks `path`; returns the descriptor, or raises LockHeld."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise LockHeld(
                f"{folder} is in use by {_describe(owner)}; wait for it to finish, or stop it "
                f"first (two runs must not write into one folder). The lock is {path}; it is "
                "released when that process ends.") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file after we opened it: lock the new one


class WorkdirLock:
    """Holds FOLDER/NAME while in a `with` block (see the module docstring).

    Args:
        folder: the work or output directory (created on entry if needed).
        name: the lock file's name (another name locks a part of the folder, e.g. one shard).

    Raises (on entry):
        LockHeld: another live process holds it; the message names its pid, host, start time and
            command line.
    """

    def __init__(self, folder, name=LOCK_FILE):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, name)
        self._fd = None  # set when this object took the lock (not when nested in a holder)

    def __enter__(self):
        os.makedirs(self.folder, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _held:  # this process holds it already
            return self
        fd = _acquire(self.path, self.folder)
        previous = _read_owner(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            logging.warning("%s: taking over the lock of %s, which has ended.", self.folder,
                            _describe(previous))
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                 "command": " ".join(sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(owner).encode("utf-8"), 0)
        except OSError as e:  # a full disk: say which file could not be written
            os.unlink(self.path)
            os.close(fd)
            raise OSError(e.errno, e.strerror, self.path) from e
        _held.add(key)
        self._fd, self._key = fd, key
        return self

    def __exit__(self, *exc):
        if self._fd is None:
            return
        _held.discard(self._key)
        # Removed before it is unlocked: a process waiting on this file then sees it gone and
        # retries on a new one (`_acquire`).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
