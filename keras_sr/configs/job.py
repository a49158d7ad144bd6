"""The whole job (`keras-sr-run`): which stages run, on which student, within what wall time.

Variants:
    default: the CPU product: the whole job (data, training, BN recalibration and fusion, QAT,
        export, parity, evaluation, report) within 10 minutes of wall time on a 2-core CPU,
        whatever its speed. The budget left after data preparation, minus a reserve for the
        export, evaluation and report, is split between the training stages by `shares`; each
        stage fits its steps to its slice by timing its own first steps.
    smoke: the smoke configs of every stage (a few steps), for tests and installation checks.
    paper: the paper-scale schedule for a GPU: the `div2k` stage configs (BN MobileOne, no output
        anchor), no time budget. Documented, not run in tests:

        keras-sr-run --config=paper --workdir=runs/paper --train_source=tfds:div2k/bicubic_x3 \\
            --val_source=benchmark:../shared/data/Set5 --teacher_checkpoint=mambairv2_light_x3.pth
"""
import dataclasses
import math
import os
from typing import Optional

from keras_sr.configs.base import DictMixin, ModelConfig

STAGES = ("stage1", "stage2", "stage3")
# Where the job writes its models inside its work directory (`keras-sr-upscale` looks there too).
INT8_MODEL = os.path.join("export", "student_int8.tflite")
FP32_MODEL = os.path.join("export", "student_fp32.tflite")


@dataclasses.dataclass(frozen=True)
class JobConfig(DictMixin):
    """How `keras_sr.recipe.run_recipe` runs the method end to end.

    Attributes:
        stage_config: the variant of every stage's `TrainConfig` (`keras_sr.configs.get_config`).
        model: the Stage-1 student; None keeps the stage config's.
        time_budget_minutes: wall time of the whole job (0: no budget; each stage runs its
            config's steps).
        shares: fractions of the training time of Stages 1, 2 and 3 (Stage 2 runs only with
            teacher outputs; without them its share goes to the others in proportion).
        tail_fraction: the part of the budget kept for what follows training (export, parity,
            evaluation, latency, report), at least `tail_min_seconds`, and at least the time of
            `tail_steps` training steps on this machine (a slow CPU is slow at all of it).
        tail_min_seconds: see `tail_fraction`.
        tail_steps: see `tail_fraction`. Measured: export and the evaluation of four models on
            the embedded validation photos, Set5 and Set14 took 34 s on a 2-core AVX-512 CPU
            whose speed probe ran 9 steps/s, about 300 steps; 400 leaves a margin.
        stage2_without_teacher: run Stage 2 (Charbonnier + DCT, no distillation) when no teacher
            outputs are given.
    """
    stage_config: str = "default"
    model: Optional[ModelConfig] = None
    time_budget_minutes: float = 10.0
    shares: tuple = (0.6, 0.15, 0.25)
    tail_fraction: float = 0.12
    tail_min_seconds: float = 45.0
    tail_steps: float = 400.0
    stage2_without_teacher: bool = False

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        object.__setattr__(self, "shares", tuple(self.shares))
        if not (math.isfinite(self.time_budget_minutes) and self.time_budget_minutes >= 0):
            raise ValueError(f"time_budget_minutes must be a number >= 0, got "
                             f"{self.time_budget_minutes!r}")
        if len(self.shares) != 3 or any(not s >= 0 for s in self.shares) or self.shares[0] <= 0 \
                or self.shares[2] <= 0:
            raise ValueError(f"shares must be three fractions (Stages 1-3) with Stages 1 and 3 "
                             f"> 0, got {self.shares!r}")
        if not 0 <= self.tail_fraction < 0.5:
            raise ValueError(f"tail_fraction must be in [0, 0.5), got {self.tail_fraction!r}")

    def stages(self, with_teacher):
        """The training stages the job runs, in order."""
        return tuple(s for s in STAGES if s != "stage2" or with_teacher
                     or self.stage2_without_teacher)

    def stage_seconds(self, stage, remaining_seconds, stages_left):
        """The wall time of `stage` out of the `remaining_seconds` left for `stages_left`.

        Shares are renormalized over the stages still to run, so a stage that overran (or a
        skipped Stage 2) shifts its time to the others instead of overrunning the job.
        """
        index = {name: i for i, name in enumerate(STAGES)}
        total = sum(self.shares[index[s]] for s in stages_left)
        return max(0.0, remaining_seconds) * self.shares[index[stage]] / total

    def tail_seconds(self, steps_per_second=None):
        """Seconds kept for export, parity, evaluation and the report.

        Args:
            steps_per_second: the machine's Stage-1 training rate, when measured.
        """
        seconds = max(self.tail_min_seconds, self.tail_fraction * 60.0 * self.time_budget_minutes)
        return max(seconds, self.tail_steps / steps_per_second) if steps_per_second else seconds


# The CPU student: the Stage-1 default's block (`mobileone_expand`, which trains at about the
# deploy form's cost) with the ABPN output anchor, which keeps colours that a few embedded training
# photographs cannot teach (README, "The main job").
DEFAULT = JobConfig(model=ModelConfig(block_type="mobileone_expand", anchor=True))
SMOKE = JobConfig(stage_config="smoke", model=DEFAULT.model, time_budget_minutes=0.0,
                  tail_min_seconds=0.0)
PAPER = JobConfig(stage_config="div2k", model=None, time_budget_minutes=0.0,
                  stage2_without_teacher=True)
VARIANTS = {"default": DEFAULT, "smoke": SMOKE, "paper": PAPER}


def get_job_config(name):
    """The `JobConfig` named `name` (one of `VARIANTS`)."""
    if name not in VARIANTS:
        raise ValueError(f"--config={name!r} is not a job config; choose one of {list(VARIANTS)}")
    return VARIANTS[name]
