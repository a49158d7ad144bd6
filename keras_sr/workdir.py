"""A training work directory, and every model form that can be made from it.

    WORKDIR/flags.json     resolved command-line flags of the latest run
    WORKDIR/config.json    the `TrainConfig` (its "model" entry rebuilds the network)
    WORKDIR/checkpoints/   tf.train.Checkpoint(model, optimizer, step, total_steps), the latest few
    WORKDIR/tb/            TensorBoard logs
    WORKDIR/metrics.json   final metrics of the latest run

Everything that turns a run back into a model goes through this module:

    run = WorkDir.open("runs/stage3")    # a work directory or a checkpoint prefix; config read once
    q = run.load("qat")                   # the fused QAT model that ships (Stage 3)
    fp32 = run.load("fused")              # the fused FP32 deploy graph

Forms (`FORMS`):
    training    the multi-branch training-form student (Stages 1 and 2)
    fused       the fused FP32 deploy graph: the re-parameterized student (Stages 1 and 2), or the
                float twin of the QAT latent weights (Stage 3)
    qat         the fused QAT model (Stage 3; a multi-branch QAT ablation run is fused after QAT)
    float_twin  the FP32 fused graph holding the QAT model's latent weights (Stage 3 only)

`trained_form` is the form a run trains and validates: "training" for Stages 1-2, "qat" for 3.
A Stage-1/2 run with `TrainConfig.fuse_at` trains the deploy graph from its fuse step on; its later
checkpoints hold that graph, which is the "plain" student's (`WorkDir.model_config`), and every
form of it is that fused student. Every restore is strict: each variable of the model must be
found in the checkpoint.
"""
import dataclasses
import os

import tensorflow as tf

from keras_sr import models, quant
from keras_sr.common import fileio
from keras_sr.configs import TrainConfig

CONFIG = "config.json"
FLAGS = "flags.json"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tb"
FORMS = ("training", "fused", "qat", "float_twin")


def resolve_checkpoint(path):
    """Maps a work directory or a checkpoint prefix to (workdir, checkpoint prefix).

    Args:
        path: a work directory (its latest checkpoint is used) or a prefix such as
            WORKDIR/checkpoints/ckpt-5.

    Raises:
        FileNotFoundError: neither, or a work directory without a checkpoint.
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


def read_config(workdir):
    """The `TrainConfig` of a work directory (config.json, in today's or the untyped form)."""
    path = os.path.join(workdir, CONFIG)
    try:
        return TrainConfig.from_dict(fileio.read_json(path))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a keras-sr training config: {e}") from None


def restore(checkpoint, what, **objects):
    """Restores `objects` (a model, an optimizer, ...) strictly from a checkpoint prefix.

    Args:
        checkpoint: a checkpoint prefix.
        what: what the objects are, for the error message ("the model of runs/x/config.json").
        **objects: the trackables, under the names the training loop saves them with.

    Raises:
        ValueError: a variable of `objects` is not in the checkpoint, or has another shape.
    """
    status = tf.train.Checkpoint(**objects).read(checkpoint).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(f"{checkpoint} does not hold {what}: {e}") from None


@dataclasses.dataclass(frozen=True)
class WorkDir:
    """A work directory with its config and the checkpoint to load.

    Attributes:
        path: the work directory.
        checkpoint: the checkpoint prefix the forms are restored from.
        config: the run's `TrainConfig`.
    """
    path: str
    checkpoint: str
    config: TrainConfig

    @classmethod
    def open(cls, path):
        """Opens a work directory (latest checkpoint) or a checkpoint prefix inside one."""
        workdir, checkpoint = resolve_checkpoint(path)
        return cls(workdir, checkpoint, read_config(workdir))

    @property
    def stage(self):
        return self.config.stage

    @property
    def holds_fused_student(self):
        """Whether the checkpoint is of a `fuse_at` run past its fuse step (the deploy graph)."""
        return holds_fused_student(self.config, self.checkpoint)

    @property
    def model_config(self):
        """The `ModelConfig` of the student the checkpoint holds (Stages 1-2)."""
        if self.holds_fused_student:
            return self.config.model.replace(block_type="plain")
        return self.config.model

    @property
    def trained_form(self):
        """The form the run trains and validates: "training" (Stages 1-2) or "qat" (Stage 3)."""
        return "qat" if self.stage == 3 else "training"

    def load(self, form):
        """The model of `form` (see the module docstring), with the checkpoint's weights.

        Every form maps float RGB in [0, 1] (B, H, W, 3) to (B, s*H, s*W, 3).

        Raises:
            ValueError: an unknown form, a form the run's stage does not have, or a checkpoint
                that does not match config.json.
        """
        if form not in FORMS:
            raise ValueError(f"unknown model form {form!r}; choose one of {FORMS}")
        if self.stage < 3:
            if form in ("qat", "float_twin"):
                raise ValueError(f"{self.path} is a Stage-{self.stage} (FP32) run: the {form!r} "
                                 "form needs a Stage-3 (QAT) run")
            student = models.build_student(self.model_config)
            self._restore(student)
            return student if form == "training" else models.reparameterize(student)
        if form == "training":
            raise ValueError(f"{self.path} is a Stage-3 (QAT) run: it holds no training-form "
                             "student; load 'qat', 'fused' or 'float_twin'")
        q_model = quant.qat_checkpoint_model(self.config.model, self.config.qat)
        self._restore(q_model)
        if self.config.qat.graph == "multibranch":
            q_model = quant.fuse_after_qat(q_model, models.build_student(self.config.model),
                                           self.config.qat)
        if form == "qat":
            return q_model
        return quant.float_twin(q_model, models.build_student(self.config.model,
                                                              reparameterized=True))

    def _restore(self, model):
        restore(self.checkpoint, f"the model that {os.path.join(self.path, CONFIG)} describes",
                model=model)


def holds_fused_student(config, checkpoint):
    """Whether a training checkpoint of `config` holds the fused student (see `TrainConfig.fuse_at`).

    Args:
        config: the run's `TrainConfig`.
        checkpoint: a checkpoint prefix written by the training loop (its step and total_steps
            decide).
    """
    if not config.fuse_at:
        return False
    return checkpoint_value(checkpoint, "step") >= config.fuse_step(
        checkpoint_value(checkpoint, "total_steps"))


def checkpoint_value(checkpoint, name):
    """The value of the training loop's scalar variable `name` ("step", "total_steps") in a
    checkpoint, read without building anything."""
    return int(tf.train.load_variable(checkpoint, f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))


def load(path, form):
    """`WorkDir.open(path).load(form)`."""
    return WorkDir.open(path).load(form)
