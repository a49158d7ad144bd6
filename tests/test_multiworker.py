"""`--strategy=multiworker` for real: two worker processes on 127.0.0.1 train a smoke Stage 1.

Two `keras-sr-train` processes, each with its own `TF_CONFIG` (worker 0 is the chief), train the
plain student (no BatchNorm, so a replica's half batch gives the same loss terms as the whole
batch's mean) for the smoke config's 6 steps, global batch 4: each worker's single CPU replica
gets 2 examples of every global batch.

Why the losses can be compared with a single-process run: `lib.train` distributes the input with
tf.data's DATA auto-shard policy. Every worker builds the whole input stream (a fixed function of
the seed), `experimental_distribute_dataset` splits each global batch of 4 into two batches of 2
(the rebatch), and worker i keeps the i-th of them, so the two workers together train on exactly
the global batches of a single-process run with the same seed. (Under tf.data's default AUTO policy
the two record shards of `tiny_data` would go one to each worker: other global batches, a loss
differing from the single-process one by about 0.1 at step 6.)

Tolerance: the runs then differ only in the order of float32 sums (the all-reduce adds two
half-batch gradients where one process averages the whole batch; the logged loss is the mean of two
half-batch means), about 1e-7 relative per sum, which six Adam steps do not grow past 1e-5.
Different examples, a wrong gradient scale (a missing 1/replicas) or unsynchronised weights change
the loss at the 1e-2 level. Neither run reduces in a varying order: the workers use one intra-op
thread, the single-process runs (in the test's process) TensorFlow's op determinism (see
conftest.py).
"""
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np

from keras_sr import configs, workdir
from keras_sr.train import lib

WORKER_TIMEOUT_S = 240  # a hung collective fails the test instead of blocking CI


def _free_ports(count):
    """`count` distinct TCP ports free on 127.0.0.1 (held together while picked, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _worker_env(ports, index, tmpdir):
    # gRPC would send the workers' loopback connections through a proxy named in these.
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")}
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmpdir),
               # Two workers share the machine's cores; one intra-op thread also keeps each
               # worker's reductions in a fixed order.
               TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="2")
    env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                   "task": {"type": "worker", "index": index}})
    return env


@contextlib.contextmanager
def _workers(records, run_dir, tmpdir):
    """Starts two workers training in `run_dir` (shared, as on a shared file system).

    Yields a function that waits for them and returns their (output, exit status); on leaving, a
    worker still running (a failure, a timeout) is killed. The output goes to files: a worker
    blocked on a full pipe would stall the other one in its next collective.
    """
    ports = _free_ports(2)
    command = [sys.executable, "-m", "keras_sr_tools.train", "--stage=1", "--config=smoke",
               "--block_type=plain", "--strategy=multiworker", "--seed=0",
               f"--workdir={run_dir}", f"--train_records={records}"]
    logs = [tmpdir.parent / f"worker{index}.log" for index in range(2)]
    workers = []

    def wait():
        for w in workers:
            w.wait(timeout=WORKER_TIMEOUT_S)
        return [(log.read_text(), w.returncode) for log, w in zip(logs, workers)]

    try:
        for index, log in enumerate(logs):
            with open(log, "w") as out:
                workers.append(subprocess.Popen(
                    command, env=_worker_env(ports, index, tmpdir), cwd=str(tmpdir.parent),
                    stdout=out, stderr=subprocess.STDOUT))
        yield wait
    finally:
        for w in workers:  # after a failure or a timeout: no worker outlives the test
            if w.poll() is None:
                w.kill()
                w.wait()


def _weights(path):
    return workdir.load(path, "training").get_weights()


def test_two_workers_match_a_single_process_and_resume_in_one(tiny_data, tmp_path):
    records, _ = tiny_data
    multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
    worker_tmp = tmp_path / "worker_tmp"
    worker_tmp.mkdir()
    # What tools/train.py resolves from the flags above.
    config = configs.get_config(1, "smoke")
    config = config.replace(model=config.model.replace(block_type="plain"), seed=0)

    with _workers(records, multi, worker_tmp) as wait:
        # The single-process run on the same global batches, while the workers start.
        reference = lib.train(config, single, records)
        logs = wait()
    for index, (log, returncode) in enumerate(logs):
        assert returncode == 0, f"worker {index} failed:\n{log[-3000:]}"
    assert "over 2 replica(s)" in logs[0][0]  # one replica per worker, all-reduced together
    # Only the chief wrote the folder, and the other worker's checkpoints were thrown away.
    assert json.load(open(os.path.join(multi, "config.json"))) == config.to_dict()
    assert sorted(os.listdir(multi)) == ["checkpoints", "config.json", "flags.json",
                                         "metrics.json", "tb"]
    assert os.listdir(worker_tmp) == []

    # (1) The same losses (the means logged every `log_every` = 2 steps) and the same weights as
    # one process training on the same global batches.
    chief = json.load(open(os.path.join(multi, "metrics.json")))
    assert chief["step"] == reference["step"] == 6
    assert len(chief["loss_history"]) == 3
    np.testing.assert_allclose(chief["loss_history"], reference["loss_history"], rtol=1e-5)
    for a, b in zip(_weights(multi), _weights(single)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    # (2) A single process resumes the chief's folder at step 6 (not from scratch: that would log
    # four loss means) with its weights, and continues as it does from the single-process one.
    shutil.copytree(single, str(tmp_path / "single_resumed"))
    longer = config.replace(steps=8)
    resumed = lib.train(longer, multi, records)
    reference = lib.train(longer, str(tmp_path / "single_resumed"), records)
    assert resumed["step"] == 8 and len(resumed["loss_history"]) == 1
    np.testing.assert_allclose(resumed["loss_history"], reference["loss_history"], rtol=1e-5)
    for a, b in zip(_weights(multi), _weights(str(tmp_path / "single_resumed"))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
