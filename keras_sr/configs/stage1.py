"""Stage 1: the student trained from scratch with L1 on [0,1] images.

Variants:
    default: the CPU recipe: the `mobileone_expand` student (MobileOne's branches, each a 3x3 conv
        to 2C channels and a 1x1 conv back, multiplied out into one kernel before a single conv,
        no BN: a step costs about what the deploy form's costs), T91 + BSD200, LR patch 48,
        batch 16, Adam with a peak learning rate of 4e-3 and cosine decay, fitted into 20 minutes
        of wall time. At equal wall time on a 2-core CPU (15-minute runs) it led the plain
        network by 0.07 / 0.05 dB (Set5 / Set14 Y, FP32, mean of six seeds, four ahead) and by
        0.05 / 0.03 dB after QAT (four seeds, three ahead); `mobileone_linear` (the branches
        summed) tied plain (README, "Re-parameterization on a CPU budget").
    div2k: a longer recipe for DIV2K on a GPU (LR patch 64 as in the paper), with the paper's BN
        MobileOne blocks.
    smoke: a few steps on tiny patches, for tests and installation checks.

    keras-sr-train --stage=1 --config=default --workdir=runs/stage1 \\
        --train_records='records/train-*.tfrecord' --val_data=../shared/data/Set5
"""
from keras_sr.configs.base import LossConfig, ModelConfig, TrainConfig

# A short run profits from a high peak rate: 4e-3 beat 1e-3 by 0.4-0.6 dB (Set5) after 1000-1500
# steps. `steps` is the ceiling the time budget cuts down (the plain student ran 7,678 steps in 15
# minutes on a 2-core CPU; a 6,000 ceiling would have ended its 20-minute budget early).
DEFAULT = TrainConfig(stage=1, model=ModelConfig(block_type="mobileone_expand"),
                      loss=LossConfig.l1_only(),
                      steps=20_000, learning_rate=4e-3, time_budget_minutes=20.0)
DIV2K = DEFAULT.replace(model=ModelConfig(), lr_patch=64, steps=300_000, learning_rate=5e-4,
                        eval_every=10_000, time_budget_minutes=0.0, checkpoint_every=5_000,
                        log_every=500, shuffle_buffer=1024)
