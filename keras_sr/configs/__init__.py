"""Training configurations as code.

`get_config(stage, name)` returns a `TrainConfig` for Stage 1 (L1), 2 (teacher-guided fidelity) or
3 (fused-graph QAT). Every stage has a `smoke` variant that trains a few steps on tiny patches, for tests
and for checking an installation; the variants and the commands that use them are listed in each stage
module's docstring.
"""
from keras_sr.configs.base import TrainConfig
from keras_sr.configs import stage1, stage2, stage3

_STAGES = {1: stage1, 2: stage2, 3: stage3}


def get_config(stage, name="default"):
    """Returns the `TrainConfig` named `name` of Stage `stage` (1, 2 or 3)."""
    if stage not in _STAGES:
        raise ValueError(f"--stage must be one of {sorted(_STAGES)}, got {stage!r}")
    module = _STAGES[stage]
    if name not in module.VARIANTS:
        raise ValueError(f"--config={name!r} is not a Stage-{stage} config; "
                         f"choose one of {sorted(module.VARIANTS)}")
    return module.get_config(name)


__all__ = ["TrainConfig", "get_config"]
