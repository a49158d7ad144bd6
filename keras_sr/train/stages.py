"""How each stage builds the model it trains; the loop in `lib.py` is the same for all of them."""
import dataclasses
from typing import Callable

import tf_keras as keras
from absl import logging

from keras_sr import models
from keras_sr.train import restore
from keras_sr.train import workdir as wd


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


def resolve_model(config, init_from):
    """Takes the network's shape from the run it starts from, so Stages 2 and 3 always match it."""
    if config.stage == 1 or not init_from:
        if config.stage > 1:
            raise ValueError(f"--init_from is required for Stage {config.stage}")
        return config
    source_workdir, _ = wd.resolve_checkpoint(init_from)
    source = restore.read_config(source_workdir)
    if source.stage == 3:
        raise ValueError(f"--init_from={init_from} is a Stage-3 (QAT) run; start from Stage 1 or 2")
    if source.model != config.model:
        logging.info("Model shape taken from %s: %s", init_from, source.model)
    return config.replace(model=source.model)


def build(config, init_from=None, dataset=None, resume=False):
    """Builds the `Stage` for `config.stage`.

    Args:
        config: the resolved `TrainConfig`.
        init_from: work directory or checkpoint of the previous stage.
        dataset: the training `tf.data.Dataset` (Stage 3 uses it for BN recalibration and for the
            observers' calibration).
        resume: True when a checkpoint of this run will be restored next, so initialisation that the
            checkpoint overwrites is skipped.
    """
    if config.stage in (1, 2):
        model = models.build_student(**config.model)
        if config.stage == 2 and not resume:
            _, checkpoint = wd.resolve_checkpoint(init_from)
            restore.restore_weights(model, checkpoint)
            logging.info("Stage 2 starts from %s.", checkpoint)
        return Stage(model)
    if config.stage == 3:
        return _build_qat_stage(config, init_from, dataset, resume)
    raise ValueError(f"unknown stage {config.stage}")


def _build_qat_stage(config, init_from, dataset, resume):
    from keras_sr import quant  # tfmot is only imported by runs that quantize

    qat_config = quant.QATConfig(**config.qat)
    lr_batches = dataset.map(lambda batch: batch["lr"])
    # The "multibranch" ablation trains the training form (fused after QAT by load_qat_model).
    multibranch = qat_config.graph == "multibranch"
    if resume:
        # The checkpoint holds the QAT weights, ranges and flags: only the graph is needed.
        student = models.build_student(reparameterized=not multibranch, **config.model)
        q_model = quant.build_qat_model(student, qat_config)
    else:
        model, _ = restore.load_model(init_from)
        model = quant.recalibrate_bn(model, lr_batches, config.bn_recalibration_batches)
        fused = models.reparameterize(model)
        quant.check_fused(model, fused, next(iter(lr_batches)))
        q_model = quant.build_qat_model(model if multibranch else fused, qat_config)
        quant.calibrate(q_model, lr_batches, qat_config)
    return Stage(q_model,
                 post_update=lambda: quant.post_update(q_model),
                 on_step=lambda step, total: quant.set_phase(
                     q_model, quant.phase_for_step(qat_config, step, total)),
                 jit_ok=False)
