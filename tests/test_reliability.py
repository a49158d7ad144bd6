"""Nothing lost: SIGKILLed training resumes to the uninterrupted weights, interrupted data
preparation reruns to the same bytes, one process per work directory (`keras_sr.common.lock`), and
a full disk or read-only folder ends a run with one line and leaves earlier outputs intact."""
import contextlib
import errno
import hashlib
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_tool

from keras_sr import configs
from keras_sr.common import fileio, lock
from keras_sr.data import prepare
from keras_sr.train import lib


class Killed(BaseException):
    """Stands in for SIGKILL inside this process: no `except Exception` handler stops it."""


def file_hashes(folder):
    """{relative path: sha256} of every file under `folder`."""
    folder = pathlib.Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# Not training state: the object graph, and `tf.train.Checkpoint`'s count of the saves its process
# made (checkpoints are numbered by the step, so a resumed process counts from 0 again).
_NOT_STATE = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")


def checkpoint_values(prefix):
    """{variable name: value} of a checkpoint (model, optimizer slots, step, total_steps, ...).

    A QuantizeLayer's variables are saved under its name, which counts the quantize layers the
    process made before (restoring matches them whatever the count): the count is dropped, so
    that runs made in processes with another history compare.
    """
    reader = tf.train.load_checkpoint(prefix)
    return {re.sub(r"quantize_layer_\d+_", "quantize_layer_", name): reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map() if name not in _NOT_STATE}


# --------------------------------------------------------------------------------------------------
# Training killed with SIGKILL at a random moment, then rerun with the same command.

_STEPS = 60  # the smoke config checkpoints every 3 steps and keeps the last 3 checkpoints
_KILL_AFTER = 12  # the kill comes once a checkpoint at or past this step is recorded


def _latest_step(workdir):
    """The step of the checkpoint the `checkpoint` state file names, or 0."""
    try:
        text = (pathlib.Path(workdir) / "checkpoints" / "checkpoint").read_text()
    except FileNotFoundError:
        return 0
    match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.M)
    return int(match.group(1)) if match else 0


def _train_command(workdir, args):
    return [sys.executable, "-m", "keras_sr_tools.train", f"--workdir={workdir}", *args]


def _sigkilled_then_resumed(workdir, args, log_dir):
    """Runs `keras-sr-train`, SIGKILLs it soon after a checkpoint past `_KILL_AFTER` is recorded
    (at a random moment: mid-step or mid-save), reruns the same command to the end.

    Returns:
        The step the rerun resumed from.
    """
    command = _train_command(workdir, args)
    with open(log_dir / "killed.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while _latest_step(workdir) < _KILL_AFTER:
                assert proc.poll() is None, (log_dir / "killed.log").read_text()[-3000:]
                assert time.time() < deadline, "no checkpoint within 300 s"
                time.sleep(0.005)
            time.sleep(random.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _latest_step(workdir) < _STEPS, "the run ended before it was killed"
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = re.search(r"Resumed from \S+ckpt-(\d+) at step (\d+)", rerun.stderr)
    assert resumed and resumed.group(1) == resumed.group(2), rerun.stderr[-3000:]
    return int(resumed.group(2))


def _assert_same_training_state(straight, resumed, rtol):
    a, b = (checkpoint_values(os.path.join(d, "checkpoints", f"ckpt-{_STEPS}"))
            for d in (straight, resumed))
    assert sorted(a) == sorted(b)
    # The step counter and Adam's iteration count match exactly.
    for name in ("step", "optimizer/_iterations"):
        name += "/.ATTRIBUTES/VARIABLE_VALUE"
        assert int(a[name]) == int(b[name]) == _STEPS, name
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=rtol, atol=rtol * 1e-1, err_msg=name)


# About 40 s on a busy 2-core CPU (two Stage-1 processes, two Stage-3 processes): `--run-slow`.
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
def test_sigkilled_training_resumes_to_the_weights_of_an_uninterrupted_run(tiny_data, tmp_path,
                                                                           stage):
    records, _ = tiny_data
    common = ["--config=smoke", f"--steps={_STEPS}", f"--train_records={records}",
              "--deterministic", "--seed=7"]
    args = [*common, "--stage=1"]
    if stage == 3:
        run_tool("train", f"--workdir={tmp_path / 's1'}", *common, "--stage=1", "--steps=6")
        args = [*common, "--stage=3", f"--init_from={tmp_path / 's1'}"]
    # The uninterrupted run in this process (conftest enables op determinism here too).
    run_tool("train", f"--workdir={tmp_path / 'straight'}", *args)
    start = _sigkilled_then_resumed(tmp_path / "resumed", args, tmp_path)
    assert _KILL_AFTER <= start < _STEPS
    _assert_same_training_state(tmp_path / "straight", tmp_path / "resumed", rtol=1e-6)
    assert not (tmp_path / "resumed" / ".lock").exists()


def test_deterministic_stage1_runs_are_identical_and_the_seed_matters(tiny_data, tmp_path):
    records, _ = tiny_data
    common = ["--stage=1", "--config=smoke", "--steps=3", f"--train_records={records}",
              "--deterministic"]
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run_tool("train", f"--workdir={tmp_path / name}", *common, f"--seed={seed}")
    a, b, c = (checkpoint_values(str(tmp_path / name / "checkpoints" / "ckpt-3")) for name in "abc")
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    kernels = [n for n in a if n.startswith("model/") and a[n].ndim == 4]
    assert kernels and all(not np.array_equal(a[n], c[n]) for n in kernels)
    flags_json = fileio.read_json(tmp_path / "a" / "flags.json")
    assert flags_json["deterministic"] is True and flags_json["seed"] == 3


def test_a_kill_between_saving_a_checkpoint_and_recording_it_resumes_from_the_previous_one(
        tiny_data, tmp_path, monkeypatch):
    """A checkpoint's files are complete before the `checkpoint` state file names it: a process
    killed in between leaves the previous checkpoint the one a rerun resumes from."""
    from tensorflow.python.checkpoint import checkpoint_management

    records, _ = tiny_data
    config = configs.get_config(1, "smoke")
    straight = lib.train(config, str(tmp_path / "straight"), records)
    record = checkpoint_management.update_checkpoint_state_internal

    def dying(save_dir, model_checkpoint_path, *args, **kwargs):
        if model_checkpoint_path.endswith("ckpt-6"):
            raise Killed("killed while saving ckpt-6")
        return record(save_dir, model_checkpoint_path, *args, **kwargs)

    run_dir = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_management, "update_checkpoint_state_internal", dying)
        with pytest.raises(Killed):
            lib.train(config, str(run_dir), records)
    assert (run_dir / "checkpoints" / "ckpt-6.index").exists()  # written, but not recorded
    assert _latest_step(run_dir) == 3
    assert not (run_dir / ".lock").exists()
    resumed = lib.train(config, str(run_dir), records)
    assert resumed["step"] == straight["step"] == 6
    a, b = (checkpoint_values(str(d / "checkpoints" / "ckpt-6"))
            for d in (tmp_path / "straight", run_dir))
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-6, atol=1e-7, err_msg=name)


# --------------------------------------------------------------------------------------------------
# Data preparation killed part-way, then rerun.

def test_prepare_killed_mid_shard_reruns_to_the_bytes_of_an_uninterrupted_run(tiny_data, tmp_path,
                                                                             monkeypatch):
    records, _ = tiny_data
    source = f"folder:{pathlib.Path(records).parent / 'train'}"
    prepare.prepare_records(source, str(tmp_path / "straight"), num_shards=2)
    encode = prepare._encode_shard

    def dying(source, index, *args):
        for n, record in enumerate(encode(source, index, *args)):
            if index == 1 and n == 1:
                raise Killed("killed while writing shard 1")
            yield record

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(prepare, "_encode_shard", dying)
        with pytest.raises(Killed):
            prepare.prepare_records(source, str(out), num_shards=2)
    # Shard 0 is finished, shard 1 was never renamed into place, nothing half-written is left.
    assert sorted(p.name for p in out.iterdir()) == ["sr-00000-of-00002.json",
                                                    "sr-00000-of-00002.tfrecord"]
    first = (out / "sr-00000-of-00002.tfrecord").stat().st_mtime_ns
    prepare.prepare_records(source, str(out), num_shards=2)
    assert (out / "sr-00000-of-00002.tfrecord").stat().st_mtime_ns == first  # reused
    hashes = file_hashes(out)
    assert len(hashes) == 5 and hashes == file_hashes(tmp_path / "straight")


# --------------------------------------------------------------------------------------------------
# One process per work directory.

_HOLD = ("import sys, time\n"
         "from keras_sr.common.lock import WorkdirLock\n"
         "with WorkdirLock(sys.argv[1]):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(120)\n")


@contextlib.contextmanager
def _held_by_another_process(folder):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_process_is_refused_and_a_dead_owners_lock_is_taken_over(tiny_data, tmp_path,
                                                                         caplog):
    records, _ = tiny_data
    folder = tmp_path / "work"
    with _held_by_another_process(folder) as holder:
        owner = fileio.read_json(folder / ".lock")
        assert owner["pid"] == holder.pid and owner["command"] == f"-c {folder}"
        with pytest.raises(lock.LockHeld, match=rf"{folder} is in use by pid {holder.pid} on "):
            with lock.WorkdirLock(folder):
                pass
        # The training loop and data preparation refuse before writing anything.
        with pytest.raises(lock.LockHeld, match=f"pid {holder.pid}"):
            lib.train(configs.get_config(1, "smoke"), str(folder), records)
        with pytest.raises(lock.LockHeld, match=f"pid {holder.pid}"):
            prepare.prepare_benchmark("builtin:val", str(folder))
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL leaves the file; the kernel has released the lock, so the next run takes it over.
    assert fileio.read_json(folder / ".lock")["pid"] == holder.pid
    caplog.set_level("WARNING", logger="absl")
    with lock.WorkdirLock(folder):
        assert fileio.read_json(folder / ".lock")["pid"] == os.getpid()
        with lock.WorkdirLock(folder):  # the holder may take it again (a job and its parts)
            pass
        assert (folder / ".lock").exists()
    assert not (folder / ".lock").exists()
    assert any(f"taking over the lock of pid {holder.pid}" in r.getMessage()
               for r in caplog.records)


def test_a_binary_on_a_folder_in_use_prints_one_line_and_exits_2(tmp_path):
    folder = tmp_path / "out"
    with _held_by_another_process(folder) as holder:
        proc = subprocess.run([sys.executable, "-m", "keras_sr_tools.prepare_data",
                               "--source=builtin:val", f"--output={folder}", "--format=benchmark"],
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("prepare_data.py: error: ") and f"in use by pid {holder.pid}" in last
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # the owner's flags.json too


# --------------------------------------------------------------------------------------------------
# A full disk or a read-only folder.

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 512 KiB tmpfs (needs root and CAP_SYS_ADMIN; skips otherwise); unmounted afterwards."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                          capture_output=True, text=True) if os.geteuid() == 0 else None
    if made is None or made.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder, leave):
    """Fills the file system of `folder` with one file, but for `leave` bytes."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (2 ** k for k in range(16, -1, -1)):
            with contextlib.suppress(OSError):
                while f.write(b"\0" * size):
                    pass
        f.truncate(f.tell() - leave)


def test_a_full_disk_fails_with_the_path_and_leaves_earlier_outputs_intact(tiny_data, small_tmpfs):
    records, _ = tiny_data
    train = pathlib.Path(records).parent / "train"
    out = small_tmpfs / "records"
    prepare.prepare_records(f"folder:{train}", str(out), num_shards=2)
    before = file_hashes(out)
    _fill(small_tmpfs, leave=16384)
    # Other settings rewrite every shard: the first one (37 KB) does not fit.
    with pytest.raises(OSError, match=r"No space left on device: '.*sr-00000-of-00002.tfrecord'"):
        prepare.prepare_records(f"folder:{train}", str(out), num_shards=2, min_lr_size=8)
    assert file_hashes(out) == before  # no temporary file, no lock file, nothing changed


def test_a_read_only_folder_ends_a_binary_with_one_line_and_status_1(tiny_data, tmp_path,
                                                                     request):
    records, _ = tiny_data
    train = pathlib.Path(records).parent / "train"
    # root writes into a 0555 folder: it gets a tmpfs remounted read-only instead.
    root = os.geteuid() == 0
    base = request.getfixturevalue("small_tmpfs") if root else tmp_path
    out = base / "records"
    prepare.prepare_records(f"folder:{train}", str(out), num_shards=2)
    before = file_hashes(out)
    if root:
        subprocess.run(["mount", "-o", "remount,ro", str(base)], check=True)
    else:
        os.chmod(out, 0o555)
    try:
        proc = subprocess.run([sys.executable, "-m", "keras_sr_tools.prepare_data",
                               f"--source=folder:{train}", f"--output={out}", "--num_shards=2",
                               "--min_lr_size=8"], capture_output=True, text=True, timeout=300)
    finally:
        if root:
            subprocess.run(["mount", "-o", "remount,rw", str(base)], check=True)
        else:
            os.chmod(out, 0o755)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"prepare_data.py: error: (Read-only file system|Permission denied): "
                        rf"{out}/\S+", last), last
    assert file_hashes(out) == before


def test_a_write_that_fails_names_the_file_and_leaves_the_earlier_one(tmp_path, monkeypatch):
    """Where no small file system can be mounted: a disk that fills up during a write."""
    path = tmp_path / "summary.json"
    fileio.write_json(path, {"run": 1})
    real_open = open

    class FullDisk:
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(data[:1])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(fileio, "open", FullDisk, raising=False)
        with pytest.raises(OSError, match=rf"No space left on device: '{path}'") as caught:
            fileio.write_json(path, {"run": 2})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert fileio.read_json(path) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
