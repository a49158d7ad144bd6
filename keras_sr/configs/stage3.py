"""Stage 3: deploy-before-QAT.

BN statistics are re-estimated with forward passes only, every block is folded into one 3x3 conv,
and tfmot QAT trains that fused graph, the graph that `tools/export_tflite.py` ships. The QAT
curriculum (observers live, activation grids frozen, all grids frozen with weight clipping) is set
by `qat` (`QATConfig`, whose defaults are this recipe's). The Stage-2 loss is kept (with the teacher
term when `--teacher_records` is given); a Stage-1 run can be the starting point too.

The default recipe (CPU, a few minutes): 1500 steps of batch 16 at a peak learning rate of 1e-4,
phases A/B/C = 40/30/30 %, activation ranges calibrated and then following a moving average (decay
0.99) of each batch's 99.99th percentile until they freeze. During QAT the folded MobileOne features
shrink several-fold (the widest hidden tensor from a maximum of ~100 to ~15), so the ranges must
follow them in phase A; the Keras QAT model rounds like XNNPACK, so the exported model reproduces it
bit for bit.

Variants: default (CPU, minutes), div2k (GPU), smoke.

    keras-sr-train --stage=3 --workdir=runs/stage3 --init_from=runs/stage2 \\
        --train_records='records/train-*.tfrecord' --val_data=../shared/data/Set5
"""
from keras_sr.configs.base import LossConfig, QATConfig, TrainConfig

# QAT starts from a trained model: a small learning rate keeps the latent weights near the FP32
# optimum while they adapt to the int8 grid.
DEFAULT = TrainConfig(stage=3, loss=LossConfig(), steps=1500, learning_rate=1e-4, warmup_steps=0,
                      final_learning_rate=1e-6, eval_every=500, qat=QATConfig())
DIV2K = DEFAULT.replace(lr_patch=64, steps=50_000, eval_every=5_000, checkpoint_every=5_000,
                        log_every=500, shuffle_buffer=1024)
# Six steps: two per phase.
SMOKE_QAT = QATConfig(phase_a=0.34, phase_b=0.33, calibration_batches=2)
