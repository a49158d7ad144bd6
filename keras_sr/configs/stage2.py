"""Stage 2: teacher-guided fidelity fine-tuning of the Stage-1 student.

Charbonnier + L1 on orthonormal 2-D DCT coefficients + confidence-weighted distillation from the
MambaIRv2-Light teacher outputs (`--teacher_records`); without teacher records the distillation term is
left out and the log says so.

Variants: default (CPU, a few minutes), div2k (GPU), smoke.

    keras-sr-train --stage=2 --workdir=runs/stage2 --init_from=runs/stage1 \
        --train_records='records/train-*.tfrecord' --teacher_records='teacher/*.tfrecord' \
        --val_data=../shared/data/Set5
"""
from keras_sr.configs.base import TrainConfig, smoke

VARIANTS = ("default", "div2k", "smoke")


def default_loss():
    """`keras_sr.losses.LossConfig` fields of the paper's Stage-2 objective."""
    return {"name": "stage2", "charbonnier_weight": 1.0, "dct_weight": 0.1, "kd_weight": 0.5,
            "gamma": 20.0, "w_min": 0.1, "w_max": 1.0, "eps": 1e-3}


def get_config(name="default"):
    # Fine-tuning from Stage 1: a lower peak learning rate than training from scratch.
    config = TrainConfig(stage=2, loss=default_loss(), steps=2000, learning_rate=2e-4,
                         warmup_steps=50, eval_every=500)
    if name == "div2k":
        return config.replace(lr_patch=64, steps=100_000, eval_every=10_000,
                              checkpoint_every=5_000, log_every=500, shuffle_buffer=1024)
    if name == "smoke":
        return smoke(config)
    return config
