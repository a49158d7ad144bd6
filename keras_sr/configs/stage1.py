"""Stage 1: the multi-branch student trained with L1 on [0,1] images.

Variants:
    default: the CPU recipe: T91 + BSD200, LR patch 48, batch 16, Adam with a peak learning rate of
        4e-3 and cosine decay, fitted into 20 minutes of wall time (about 5000 steps on an idle 2-core
        CPU); see the README for the command and the PSNR it reaches.
    div2k: a longer recipe for DIV2K on a GPU (LR patch 64 as in the paper).
    smoke: a few steps on tiny patches, for tests and installation checks.

    keras-sr-train --stage=1 --config=default --workdir=runs/stage1 \\
        --train_records='records/train-*.tfrecord' --val_data=../shared/data/Set5
"""
from keras_sr.configs.base import LossConfig, TrainConfig

# A short run profits from a high peak rate: 4e-3 beat 1e-3 by 0.4-0.6 dB (Set5) after 1000-1500
# steps; the BN in every branch keeps it stable.
DEFAULT = TrainConfig(stage=1, loss=LossConfig.l1_only(), steps=6000, learning_rate=4e-3,
                      time_budget_minutes=20.0)
DIV2K = DEFAULT.replace(lr_patch=64, steps=300_000, learning_rate=5e-4, eval_every=10_000,
                        time_budget_minutes=0.0, checkpoint_every=5_000, log_every=500,
                        shuffle_buffer=1024)
