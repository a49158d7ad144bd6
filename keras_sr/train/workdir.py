"""Files of a training work directory.

    WORKDIR/flags.json     resolved command-line flags of the latest run
    WORKDIR/config.json    the TrainConfig (its "model" entry rebuilds the network)
    WORKDIR/checkpoints/   tf.train.Checkpoint(model, optimizer, step), the latest few
    WORKDIR/tb/            TensorBoard logs
    WORKDIR/metrics.json   final metrics of the latest run
"""
import json
import os

import tensorflow as tf

from keras_sr.fileio import write_json  # noqa: F401  (the work directory's JSON writer)

CONFIG = "config.json"
FLAGS = "flags.json"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: is this a keras-sr work directory?") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def resolve_checkpoint(path):
    """Maps a work directory or a checkpoint prefix to (workdir, checkpoint prefix).

    Args:
        path: a work directory (its latest checkpoint is used) or a prefix such as
            WORKDIR/checkpoints/ckpt-5.
    """
    path = os.fspath(path).rstrip("/")
    if os.path.isdir(path):
        checkpoint = tf.train.latest_checkpoint(os.path.join(path, CHECKPOINTS))
        if checkpoint is None:
            raise FileNotFoundError(f"{path} holds no checkpoint in {CHECKPOINTS}/")
        return path, checkpoint
    if tf.io.gfile.exists(path + ".index"):
        return os.path.dirname(os.path.dirname(path)), path
    raise FileNotFoundError(f"{path} is neither a work directory nor a checkpoint prefix")
