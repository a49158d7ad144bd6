"""Rebuilding a trained model from its work directory (the hand-off between stages and to tools)."""
import os

import tensorflow as tf

from keras_sr import models
from keras_sr.configs import TrainConfig
from keras_sr.train import workdir as wd


def read_config(workdir):
    return TrainConfig.from_dict(wd.read_json(os.path.join(workdir, wd.CONFIG)))


def restore_weights(model, checkpoint):
    """Restores `model` strictly from a training checkpoint: every model variable must be found."""
    status = tf.train.Checkpoint(model=model).read(checkpoint)
    try:
        status.expect_partial().assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(f"{checkpoint} does not match the model built from its config.json: {e}") from None


def load_model(path):
    """Loads the model of a work directory or checkpoint prefix.

    Args:
        path: a work directory (latest checkpoint) or a checkpoint prefix (WORKDIR/checkpoints/ckpt-N).

    Returns:
        (model, config): for Stages 1 and 2 the multi-branch FP32 student, for Stage 3 the QAT model
        (fake-quant, fused graph); both map float RGB in [0,1] (B, H, W, 3) to (B, 3H, 3W, 3).
    """
    workdir, checkpoint = wd.resolve_checkpoint(path)
    config = read_config(workdir)
    if config.stage == 3:
        from keras_sr import quant

        return quant.load_qat_model(workdir, checkpoint), config
    model = models.build_student(**config.model)
    restore_weights(model, checkpoint)
    return model, config
