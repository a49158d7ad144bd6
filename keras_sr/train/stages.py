"""How each stage builds the model it trains; the loop in `lib.py` is the same for all of them."""
import dataclasses
import os
from typing import Callable, Optional

import tf_keras as keras
from absl import logging

from keras_sr import models, quant
from keras_sr import workdir as wd
from keras_sr.common import record_schema
from keras_sr.workdir import WorkDir


@dataclasses.dataclass
class Stage:
    """A model plus the hooks the training loop calls.

    Attributes:
        model: the Keras model to train; maps float RGB in [0,1] (B, H, W, 3) to (B, 3H, 3W, 3).
        post_update: graph-safe function run inside the compiled step after each weight update.
        on_step: Python function called with the 1-based step number and the run's length (which a
            time budget may have shortened) before that step runs.
        jit_ok: whether the forward/backward pass may be XLA-compiled.
    """
    model: keras.Model
    post_update: Callable[[], None] = lambda: None
    on_step: Callable[[int, int], None] = lambda step, total: None
    jit_ok: bool = True


def starting_point(config, init_from):
    """Opens the run a stage starts from and takes the network's shape from it.

    Args:
        config: the stage's `TrainConfig`.
        init_from: work directory or checkpoint prefix of the previous stage (Stages 2 and 3;
            ignored for Stage 1).

    Returns:
        (config with the source's `ModelConfig`, the source `WorkDir` or None for Stage 1).

    Raises:
        ValueError: Stage 2 or 3 without `init_from`, or a Stage-3 run as the starting point.
    """
    if config.stage == 1:
        return config, None
    if not init_from:
        raise ValueError(f"--init_from is required for Stage {config.stage}")
    source = WorkDir.open(init_from)
    if source.stage == 3:
        raise ValueError(f"--init_from={init_from} is a Stage-3 (QAT) run; start from Stage 1 or 2")
    if source.model_config != config.model:
        logging.info("Model shape taken from %s: %s", init_from, source.model_config)
    return config.replace(model=source.model_config), source


def check_inputs(config, workdir, train_records, init_from=None, teacher_records=None):
    """Checks what a stage reads before it writes anything; see `lib.train` for the arguments.

    Raises:
        ValueError: records that match no file, no usable `init_from` (missing, no checkpoint, a
            Stage-3 run), or a `workdir` that holds a run of another stage or model (its
            checkpoints could not be resumed); the message names the flag.
    """
    record_schema.check_record_flags([("--train_records", train_records),
                                      ("--teacher_records", teacher_records)])
    try:
        config, _ = starting_point(config, init_from)
    except FileNotFoundError as e:
        raise ValueError(f"--init_from={init_from}: {e}") from None
    if os.path.exists(os.path.join(workdir, wd.CONFIG)):
        held = wd.read_config(workdir)
        differs = {k: (v, getattr(config.model, k)) for k, v in held.model.to_dict().items()
                   if v != getattr(config.model, k)}
        if held.stage != config.stage or differs:
            what = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differs.items())
            raise ValueError(f"--workdir={workdir} holds a Stage-{held.stage} run of another model "
                             f"or stage ({what or f'Stage {config.stage} now'}); a rerun resumes "
                             "it only with the same stage and model: choose another --workdir")


def build(config, source: Optional[WorkDir] = None, calibration_data=None, resume=False,
          fused=False):
    """Builds the `Stage` for `config.stage`.

    Args:
        config: the resolved `TrainConfig` (see `starting_point`).
        source: the `WorkDir` of the previous stage (Stages 2 and 3).
        calibration_data: a function returning a new training `tf.data.Dataset`, whose batches
            Stage 3 uses for BN recalibration and for the observers' calibration.
        resume: True when a checkpoint of this run will be restored next, so initialisation that the
            checkpoint overwrites is skipped.
        fused: Stages 1-2: that checkpoint holds the fused student (`TrainConfig.fuse_at`).
    """
    if config.stage == 1 or (config.stage == 2 and resume):
        return Stage(models.build_student(config.model, reparameterized=fused))
    if config.stage == 2:
        logging.info("Stage 2 starts from %s.", source.checkpoint)
        return Stage(source.load("training"))
    q_model = (quant.qat_checkpoint_model(config.model, config.qat) if resume
               else _qat_model_from(source, config, calibration_data()))
    return Stage(q_model,
                 post_update=lambda: quant.post_update(q_model),
                 on_step=lambda step, total: quant.set_phase(
                     q_model, quant.phase_for_step(config.qat, step, total)),
                 jit_ok=False)


def fuse(model, dataset, bn_batches):
    """Recalibrates BN, folds every block and checks the fold (Stage 3 and `fuse_at`).

    Args:
        model: a training-form student; not modified.
        dataset: a training `tf.data.Dataset` of the `make_train_dataset` format.
        bn_batches: forward-only batches for the BN statistics.

    Returns:
        (recalibrated training-form copy, its fused deploy form).
    """
    lr_batches = dataset.map(lambda batch: batch["lr"])
    model = quant.recalibrate_bn(model, lr_batches, bn_batches)
    fused = models.reparameterize(model)
    models.check_fused(model, fused, next(iter(lr_batches)))
    return model, fused


def _qat_model_from(source, config, dataset):
    """Deploy-before-QAT: recalibrate BN, fold, check the fold, wrap in fake-quant, calibrate."""
    model, fused = fuse(source.load("training"), dataset, config.bn_recalibration_batches)
    # The "multibranch" ablation trains the training form (fused after QAT, `quant.fuse_after_qat`).
    q_model = quant.build_qat_model(model if config.qat.graph == "multibranch" else fused,
                                    config.qat)
    quant.calibrate(q_model, dataset.map(lambda batch: batch["lr"]), config.qat)
    return q_model
