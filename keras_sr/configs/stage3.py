"""Stage 3: deploy-before-QAT.

BN statistics are re-estimated with forward passes only, every block is folded into one 3x3 conv, and
tfmot QAT trains that fused graph, the graph that `tools/export_tflite.py` ships. The QAT curriculum
(observers live, activation grids frozen, all grids frozen with weight clipping) is set by `qat`.
The Stage-2 loss is kept (with the teacher term when `--teacher_records` is given); a Stage-1 run can be
the starting point too.

Variants: default (CPU, minutes), div2k (GPU), smoke.

    keras-sr-train --stage=3 --workdir=runs/stage3 --init_from=runs/stage2 \
        --train_records='records/train-*.tfrecord' --val_data=../shared/data/Set5
"""
from keras_sr.configs import stage2
from keras_sr.configs.base import TrainConfig, smoke

VARIANTS = ("default", "div2k", "smoke")


def get_config(name="default"):
    # QAT starts from a trained model: a small learning rate keeps the latent weights near the FP32
    # optimum while they adapt to the int8 grid.
    config = TrainConfig(stage=3, loss=stage2.default_loss(), steps=4000, learning_rate=1e-4,
                         warmup_steps=0, final_learning_rate=1e-6, eval_every=1000,
                         qat={"phase_a": 0.4, "phase_b": 0.3})
    if name == "div2k":
        return config.replace(lr_patch=64, steps=50_000, eval_every=5_000, checkpoint_every=5_000,
                              log_every=500, shuffle_buffer=1024)
    if name == "smoke":
        return smoke(config).replace(qat={"phase_a": 0.34, "phase_b": 0.33,
                                          "calibration_batches": 2})
    return config
