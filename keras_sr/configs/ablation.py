"""The paper's ablations (`keras-sr-ablate`): which cells run, on what data, for how long.

`keras_sr.ablation` writes three tables, each as Markdown and JSON:

    backbone   every block type of `backbones`: Stage 1, then Stage 3 (QAT of the fused graph),
               FP32 and INT8 PSNR/SSIM and the FP32 -> INT8 drop, once per `Budget` (equal
               steps, equal wall time), beside the drops the paper reports (`PAPER_DROPS`)
    placement  where QAT happens, on `placement_backbone`: the fused graph (deploy-before-QAT),
               the multi-branch graph fused after QAT, or PTQ of the fused FP32 model
    teacher    Stage 3 of `placement_backbone` with and without the teacher's outputs

Variants (`get_ablation_config`):
    cpu (default): minutes per cell on a 2-core CPU: the paper's student (32 channels, 8 blocks,
        4 branches, no anchor) of every block type, on the embedded photographs, scored on the
        embedded validation photographs; Stage 1 of 1,000 steps and Stage 3 of 200 at equal
        steps; at equal wall time, 4 minutes of Stage-1 compute (steps = 4 minutes times each
        block type's steps/s, timed in interleaved rounds before the first cell:
        `keras_sr.ablation.cells.train_rates`) and 1 wall-clock minute of Stage 3.
    paper: the `div2k` stage configs (300,000 Stage-1 and 50,000 Stage-3 steps) on DIV2K, scored
        on DIV2K's validation images, for a GPU. Documented, not run in tests:

        keras-sr-ablate --config=paper --workdir=runs/ablation_paper \\
            --teacher_records='runs/teacher/*.tfrecord'

    smoke: a tiny student (8 channels, 2 blocks, 2 branches) of two block types, a few steps per
        stage, a 32x40 export shape: for tests and for checking an installation.
"""
import dataclasses
import math
import numbers
from typing import Optional

from keras_sr.configs import VARIANTS as STAGE_VARIANTS
from keras_sr.configs.base import BLOCK_TYPES, DictMixin, ModelConfig, positive_int

# The FP32 -> INT8 PSNR drops (dB) the paper reports for its backbones, shown beside the measured
# ones (the paper's set and colour space are its own; the tables give Y and RGB).
PAPER_DROPS = {"mobileone": 0.13, "repconv": 0.24, "repdw": 0.66}
# Every block type the project trains: the paper's three backbones, plain convolutions, and the
# three faster training forms of MobileOne (README, "Re-parameterization on a CPU budget").
ALL_BACKBONES = ("repconv", "repdw", "mobileone", "plain", "mobileone_online", "mobileone_linear",
                 "mobileone_expand")


@dataclasses.dataclass(frozen=True)
class Budget(DictMixin):
    """How long Stage 1 and Stage 3 of one column set of the backbone table train.

    Attributes:
        name: the column set's name ("steps": equal steps, "time": equal wall time).
        stage1_steps, stage3_steps: the steps of each stage; None: the stage config's. With a
            time budget they are the ceiling the budget cuts down.
        stage1_minutes, stage3_minutes: time of each stage (0: no time budget, the stage trains
            its steps). Stage 1's becomes steps at each block type's measured rate
            (`keras_sr.ablation.cells.stage_config`); Stage 3's is wall-clock
            (`TrainConfig.time_budget_minutes`).
    """
    name: str
    stage1_steps: Optional[int] = None
    stage3_steps: Optional[int] = None
    stage1_minutes: float = 0.0
    stage3_minutes: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            raise ValueError(f"budget name must be an identifier, got {self.name!r}")
        for field in ("stage1_steps", "stage3_steps"):
            if getattr(self, field) is not None:
                positive_int(getattr(self, field), f"budget {self.name} {field}")
        for field in ("stage1_minutes", "stage3_minutes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                    math.isfinite(value) and value >= 0):
                raise ValueError(f"budget {self.name} {field} must be a number >= 0, got "
                                 f"{value!r}")

    def steps(self, stage):
        """The steps of Stage `stage` (1 or 3), None for the stage config's."""
        return self.stage1_steps if stage == 1 else self.stage3_steps

    def minutes(self, stage):
        """The time budget of Stage `stage` (1 or 3) in minutes (0: none)."""
        return self.stage1_minutes if stage == 1 else self.stage3_minutes

    def describe(self):
        """One line for the tables, e.g. "Stage 1: 4 min (at most 20,000 steps); Stage 3: ..."."""
        parts = []
        for stage in (1, 3):
            steps = ("the stage config's steps" if self.steps(stage) is None
                     else f"{self.steps(stage):,} steps")
            minutes = self.minutes(stage)
            parts.append(f"Stage {stage}: {minutes:g} min (at most {steps})" if minutes
                         else f"Stage {stage}: {steps}")
        return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class AblationConfig(DictMixin):
    """Everything `keras_sr.ablation.run_ablation` runs, besides its data paths and work folder.

    Attributes:
        stage_config: the variant of every stage's `TrainConfig` (`keras_sr.configs.get_config`).
        model: the student of every cell; each row sets its `block_type`.
        backbones: the block types of the backbone table, in its row order.
        budgets: the column sets of the backbone table (names unique).
        placement_backbone: the block type of the placement and teacher tables. The multi-branch
            QAT of the placement table needs a BN block (`mobileone`, `repconv`).
        placement_budget: the budget (a name in `budgets`) of the placement and teacher tables;
            their fused, teacher-less cell is the backbone table's cell of that budget.
        train_source: what the training records are made from when --train_records is not given
            (`keras_sr.data.parse_source`).
        eval_source: the evaluation set when --data is not given.
        calibration_source: the representative LR images of PTQ: an EDSR-layout folder or
            "builtin:train" (`keras_sr.export.files.export_workdir`).
        input_shape: the fixed NHWC export shape; None: the export's default (1, 360, 640, 3).
        seed: the seed of every stage (data order, augmentation, initialisation).
    """
    stage_config: str = "default"
    model: ModelConfig = ModelConfig()
    backbones: tuple = ALL_BACKBONES
    budgets: tuple = (Budget("steps"),)
    placement_backbone: str = "mobileone"
    placement_budget: str = "steps"
    train_source: str = "builtin:train"
    eval_source: str = "builtin:val"
    calibration_source: str = "builtin:train"
    input_shape: Optional[tuple] = None
    seed: int = 0

    def __post_init__(self):
        # The JSON form (lists and dicts) reads back into the typed one.
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        object.__setattr__(self, "backbones", tuple(self.backbones))
        object.__setattr__(self, "budgets", tuple(
            Budget.from_dict(b) if isinstance(b, dict) else b for b in self.budgets))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(self.input_shape))
        if self.stage_config not in STAGE_VARIANTS:
            raise ValueError(f"stage_config must be one of {STAGE_VARIANTS}, got "
                             f"{self.stage_config!r}")
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"model must be a ModelConfig, got {self.model!r}")
        unknown = [b for b in self.backbones + (self.placement_backbone,) if b not in BLOCK_TYPES]
        if unknown or not self.backbones or len(set(self.backbones)) != len(self.backbones):
            raise ValueError(f"backbones and placement_backbone must be distinct block types of "
                             f"{sorted(BLOCK_TYPES)}, got {self.backbones!r}, "
                             f"{self.placement_backbone!r}")
        names = [b.name for b in self.budgets]
        if not names or len(set(names)) != len(names) or not all(
                isinstance(b, Budget) for b in self.budgets):
            raise ValueError(f"budgets must be Budgets with distinct names, got {self.budgets!r}")
        if self.placement_budget not in names:
            raise ValueError(f"placement_budget {self.placement_budget!r} is not a budget: {names}")
        if self.input_shape is not None and not (
                len(self.input_shape) == 4 and self.input_shape[3] == 3
                and all(isinstance(v, numbers.Integral) and v > 0 for v in self.input_shape)):
            raise ValueError(f"input_shape must be four positive ints N,H,W,3, got "
                             f"{self.input_shape!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) \
                or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")

    def budget(self, name):
        """The `Budget` named `name`."""
        return next(b for b in self.budgets if b.name == name)


CPU = AblationConfig(
    budgets=(Budget("steps", stage1_steps=1000, stage3_steps=200),
             # Equal wall time: the ceilings are the stage configs' (20,000 and 1,500 steps).
             Budget("time", stage1_minutes=4.0, stage3_minutes=1.0)))
# The time column's budgets were chosen by hand, not measured on a GPU.
PAPER = AblationConfig(
    stage_config="div2k",
    budgets=(Budget("steps"), Budget("time", stage1_minutes=240.0, stage3_minutes=40.0)),
    train_source="tfds:div2k/bicubic_x3", eval_source="tfds:div2k/bicubic_x3:validation")
# Two block types: a BN multi-branch form (also the placement backbone: the multi-branch QAT
# needs BN blocks) and the CPU default's form. The time column's 12-step ceiling lets the budget
# probe (10 steps) fit the run, so that code path runs too.
SMOKE = AblationConfig(
    stage_config="smoke", model=ModelConfig(channels=8, num_blocks=2, num_branches=2),
    backbones=("repconv", "mobileone_linear"),
    budgets=(Budget("steps", stage1_steps=6, stage3_steps=6),
             Budget("time", stage1_steps=12, stage3_steps=6, stage1_minutes=0.05,
                    stage3_minutes=0.05)),
    placement_backbone="repconv", input_shape=(1, 32, 40, 3))
VARIANTS = {"cpu": CPU, "paper": PAPER, "smoke": SMOKE}


def get_ablation_config(name):
    """The `AblationConfig` named `name` (one of `VARIANTS`)."""
    if name not in VARIANTS:
        raise ValueError(f"--config={name!r} is not an ablation config; choose one of "
                         f"{list(VARIANTS)}")
    return VARIANTS[name]
