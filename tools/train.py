"""Trains one stage of keras-sr (1: L1, 2: teacher-guided fidelity, 3: fused-graph QAT).

    keras-sr-train --stage=1 --config=default --workdir=runs/stage1 \
        --train_records=records/train --val_data=../shared/data/Set5

Rerunning with the same --workdir resumes from its latest checkpoint. `--config=smoke` checks an
installation in well under a minute.
"""
from absl import app, flags, logging

import keras_sr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf  # isort: skip  (after keras_sr, which selects Keras 2)
from keras_sr import configs
from keras_sr.common import cli
from keras_sr.train import lib, stages

_STAGE = flags.DEFINE_enum("stage", "1", ["1", "2", "3"], "Training stage.")
_CONFIG = flags.DEFINE_enum("config", "default", list(configs.VARIANTS), "Config variant of the stage.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; rerun to resume.", required=True)
_TRAIN = flags.DEFINE_string("train_records", None, "SR TFRecords: folder, file or glob.",
                             required=True)
_VAL = flags.DEFINE_string("val_data", None, "EDSR-layout folder (HR/, LR_bicubic/X3/) to validate on.")
_INIT = flags.DEFINE_string("init_from", None, "Work directory or checkpoint of the previous stage.")
_TEACHER = flags.DEFINE_string("teacher_records", None, "Teacher TFRecords (Stages 2 and 3).")
_STRATEGY = flags.DEFINE_enum("strategy", "default", list(lib.STRATEGIES), "tf.distribute strategy.")
_STEPS = flags.DEFINE_integer("steps", None, "Override the config's number of steps.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Override the config's global batch size.")
_LR = flags.DEFINE_float("learning_rate", None, "Override the config's peak learning rate.")
_ARCH = flags.DEFINE_enum("arch", None, sorted(configs.ARCHS),
                          "Stage 1: the network: the student (the config's), or the baseline abpn or "
                          "fsrcnn at its paper's sizes; later stages take the model of --init_from.")
_BLOCK_TYPE = flags.DEFINE_enum("block_type", None, sorted(configs.BLOCK_TYPES),
                                "Stage 1: the student's block type (Stages 2 and 3 take the model "
                                "of --init_from).")
_ANCHOR = flags.DEFINE_boolean("anchor", None,
                               "Stage 1: add ABPN's output anchor (the network predicts a residual "
                               "over nearest-neighbour upsampling); later stages take the model of "
                               "--init_from.")
_QAT_GRAPH = flags.DEFINE_enum(
    "qat_graph", None, list(configs.QAT_GRAPHS),
    "Stage 3: quantize the fused graph (default, what ships) or, as an ablation, train the multi-branch "
    "form with fake-quant branch kernels and fuse after QAT.")
# Loss and QAT fields that can be set from the command line (--loss_<field>, --qat_<field>).
_LOSS_FLAGS = {
    "charbonnier_weight": flags.DEFINE_float("loss_charbonnier_weight", None, "Charbonnier weight."),
    "dct_weight": flags.DEFINE_float("loss_dct_weight", None, "Weight of the L1 on 2-D DCT coefficients."),
    "kd_weight": flags.DEFINE_float("loss_kd_weight", None, "Weight of the confidence-weighted KD term."),
    "gamma": flags.DEFINE_float("loss_gamma", None, "KD confidence: w = clip(exp(-gamma e), w_min, w_max)."),
    "w_min": flags.DEFINE_float("loss_w_min", None, "Smallest KD pixel weight."),
    "w_max": flags.DEFINE_float("loss_w_max", None, "Largest KD pixel weight."),
}
_QAT_FLAGS = {
    "phase_a": flags.DEFINE_float("qat_phase_a", None, "Fraction of QAT steps with live observers."),
    "phase_b": flags.DEFINE_float("qat_phase_b", None,
                                  "Fraction with activation grids frozen; the rest freezes all grids."),
    "kernel_clip": flags.DEFINE_enum("qat_kernel_clip", None, list(configs.KERNEL_CLIP_METHODS),
                                     "Per-channel outlier clipping of each fused kernel at QAT start."),
    "kernel_clip_value": flags.DEFINE_float("qat_kernel_clip_value", None,
                                            "k of mean +- k std, or the upper percentile."),
}
_FUSE_AT = flags.DEFINE_float("fuse_at", None,
                              "Stages 1-2: fraction of the run after which the training form is "
                              "fused and the deploy form trained for the rest (0: never).")
_SEED = flags.DEFINE_integer("seed", None, "Override the config's seed (data order, augmentation, "
                             "initialisation).")
_DETERMINISTIC = cli.define_deterministic(__name__)
_BUDGET = flags.DEFINE_float("time_budget_minutes", None,
                             "Fit the run into this wall time (fewer steps when the machine is slow).")


def resolved_config():
    """The stage's config with the flags' overrides, validated (raises UsageError, naming the flag)."""
    config = configs.get_config(int(_STAGE.value), _CONFIG.value)
    loss = {k: f.value for k, f in _LOSS_FLAGS.items() if f.value is not None}
    qat = {k: f.value for k, f in _QAT_FLAGS.items() if f.value is not None}
    if _QAT_GRAPH.value:
        qat["graph"] = _QAT_GRAPH.value
    if loss and config.stage == 1:
        raise app.UsageError("--loss_* flags apply to the Stage-2 loss (Stages 2 and 3)")
    if qat and config.stage != 3:
        raise app.UsageError("--qat_* flags apply to --stage=3 only")
    for name, value in (("arch", _ARCH.value), ("block_type", _BLOCK_TYPE.value),
                        ("anchor", _ANCHOR.value)):
        if value is not None and config.stage != 1:
            raise app.UsageError(f"--{name} applies to --stage=1 only (later stages take the "
                                 "model of --init_from)")
    model_fields = {k: v for k, v in (("block_type", _BLOCK_TYPE.value), ("anchor", _ANCHOR.value))
                    if v is not None}
    overrides = {"steps": _STEPS.value, "batch_size": _BATCH.value, "learning_rate": _LR.value,
                 "time_budget_minutes": _BUDGET.value, "fuse_at": _FUSE_AT.value,
                 "seed": _SEED.value}
    try:
        model = config.model
        if _ARCH.value is not None and _ARCH.value != model.arch:
            # A baseline at its paper's sizes (its own defaults, not the student's).
            model = configs.ModelConfig.for_arch(_ARCH.value, scale=model.scale)
        model = model.replace(**model_fields)
        return config.replace(model=model, loss=config.loss.replace(**loss),
                              qat=config.qat.replace(**qat),
                              **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as e:
        raise app.UsageError(f"bad training flags: {e}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = resolved_config()  # before anything is written
    try:
        stages.check_inputs(config, _WORKDIR.value, _TRAIN.value, _INIT.value, _TEACHER.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if _DETERMINISTIC.value:
        tf.config.experimental.enable_op_determinism()  # before the first op
    metrics = lib.train(config, _WORKDIR.value, _TRAIN.value, val_data=_VAL.value,
                        init_from=_INIT.value, teacher_records=_TEACHER.value,
                        strategy=_STRATEGY.value, run_info=cli.resolved_flags(__name__))
    logging.info("Done: %s", metrics)


def run():
    cli.run_main(main)


if __name__ == "__main__":
    run()
