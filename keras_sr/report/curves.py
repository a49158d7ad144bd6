"""Training curves read back from a stage's own TensorBoard logs (WORKDIR/tb, `keras_sr.workdir`).

The training loop (`keras_sr.train.lib`) writes TF2 scalar summaries, which an event file stores as
tensors, not as the `simple_value` of TF1 summaries; both are read. A resumed run appends a new event
file and logs again the steps after its last checkpoint: the value written last wins for each step.
"""
import glob
import os

import numpy as np
import tensorflow as tf

from keras_sr import workdir as wd

# The tags `keras_sr.train.lib` writes: the mean training loss over each logging interval, and
# the validation PSNR on Y every `eval_every` steps.
LOSS_TAG = "train/loss"
VAL_PSNR_TAG = "val/psnr_y"


def _value(value):
    """The float of one summary value: TF2 tensors or TF1 simple values."""
    if value.HasField("tensor"):
        return float(tf.make_ndarray(value.tensor).reshape(()))
    return float(value.simple_value)


def read_scalars(workdir, tags=(LOSS_TAG, VAL_PSNR_TAG)):
    """Scalars of `tags` in the TensorBoard logs of a training work directory.

    Args:
        workdir: the stage's work directory (its logs are in WORKDIR/tb).
        tags: the summary tags to read.

    Returns:
        {tag: (steps int64 [n], values float64 [n])}, sorted by step, one value per step; an empty
        dict when the folder holds no event file or none of the tags. A truncated last record (a
        run still writing) ends that file's reading without an error.
    """
    pattern = os.path.join(os.fspath(workdir), wd.TENSORBOARD, "events.out.tfevents.*")
    found = {}  # tag -> {step: (wall_time, value)}
    for path in sorted(glob.glob(pattern)):
        try:
            for record in tf.data.TFRecordDataset(path, buffer_size=1 << 18):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if value.tag in tags:
                        previous = found.setdefault(value.tag, {}).get(event.step)
                        if previous is None or event.wall_time >= previous[0]:
                            found[value.tag][event.step] = (event.wall_time, _value(value))
        except tf.errors.DataLossError:
            pass  # a record cut short by a writer that is still running: the file ends there
    result = {}
    for tag, by_step in found.items():
        steps = np.array(sorted(by_step), np.int64)
        result[tag] = (steps, np.array([by_step[s][1] for s in steps], np.float64))
    return result


def read_stages(curves):
    """The curves of every stage of a job, in the order given.

    Args:
        curves: {stage name: work directory}.

    Returns:
        list of (stage name, work directory, `read_scalars` result).
    """
    return [(name, os.fspath(path), read_scalars(path)) for name, path in curves.items()]
