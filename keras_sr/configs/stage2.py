"""Stage 2: teacher-guided fidelity fine-tuning of the Stage-1 student.

Charbonnier + L1 on orthonormal 2-D DCT coefficients + confidence-weighted distillation from the
MambaIRv2-Light teacher outputs (`--teacher_records`); without teacher records the distillation term is
left out and the log says so. The loss is `LossConfig()`: its defaults are the paper's Stage-2 loss.

Variants: default (CPU, a few minutes), div2k (GPU), smoke.

    keras-sr-train --stage=2 --workdir=runs/stage2 --init_from=runs/stage1 \\
        --train_records='records/train-*.tfrecord' --teacher_records='teacher/*.tfrecord' \\
        --val_data=../shared/data/Set5
"""
from keras_sr.configs.base import LossConfig, TrainConfig

# Fine-tuning from Stage 1: a lower peak learning rate than training from scratch.
DEFAULT = TrainConfig(stage=2, loss=LossConfig(), steps=2000, learning_rate=2e-4, warmup_steps=50,
                      eval_every=500)
DIV2K = DEFAULT.replace(lr_patch=64, steps=100_000, eval_every=10_000, checkpoint_every=5_000,
                        log_every=500, shuffle_buffer=1024)
