"""Training configurations as code (standard library only; see `keras_sr.configs.base`).

`get_config(stage, name)` returns the `TrainConfig` of Stage 1 (L1), 2 (teacher-guided fidelity) or
3 (fused-graph QAT) named `name`:

    default  the CPU recipe of the stage (README: commands, wall time and the PSNR it reaches)
    div2k    the paper-scale recipe on DIV2K (a GPU)
    smoke    a few steps on tiny patches, for tests and for checking an installation

Each stage module's docstring gives its command.
"""
from keras_sr.configs import stage1, stage2, stage3
from keras_sr.configs.base import (ARCHS, BLOCK_TYPES, KERNEL_CLIP_METHODS, QAT_GRAPHS,
                                   QAT_PHASES, LossConfig, ModelConfig, QATConfig, TrainConfig,
                                   smoke)

VARIANTS = ("default", "div2k", "smoke")
_STAGES = {1: stage1, 2: stage2, 3: stage3}


def get_config(stage, name="default"):
    """Returns the `TrainConfig` named `name` (one of `VARIANTS`) of Stage `stage` (1, 2 or 3)."""
    if stage not in _STAGES:
        raise ValueError(f"--stage must be one of {sorted(_STAGES)}, got {stage!r}")
    if name not in VARIANTS:
        raise ValueError(f"--config={name!r} is not a Stage-{stage} config; choose one of "
                         f"{list(VARIANTS)}")
    module = _STAGES[stage]
    if name == "smoke":
        config = smoke(module.DEFAULT)
        return config.replace(qat=stage3.SMOKE_QAT) if stage == 3 else config
    return module.DIV2K if name == "div2k" else module.DEFAULT


__all__ = ["ARCHS", "BLOCK_TYPES", "KERNEL_CLIP_METHODS", "QAT_GRAPHS", "QAT_PHASES", "VARIANTS",
           "LossConfig", "ModelConfig", "QATConfig", "TrainConfig", "get_config", "smoke"]
