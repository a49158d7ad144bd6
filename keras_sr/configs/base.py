"""The configuration types: one typed dataclass per concept, each default defined once here.

    TrainConfig            everything a training run needs besides its data paths
      .model  ModelConfig  the network: the student or a baseline (`keras_sr.models.build_student`)
      .loss   LossConfig   the training objective (`keras_sr.losses.make_loss`)
      .qat    QATConfig    Stage-3 quantization-aware training (`keras_sr.quant`)

Configs are frozen and validated when they are made, so a bad value (a flag, a config.json) fails
before anything is written. `to_dict` / `from_dict` are the JSON form of a work directory's
config.json; `TrainConfig.from_dict` also reads the form written before the configs were typed
(plain dicts, the loss named "l1" or "stage2").

This module imports nothing but the standard library: the configs sit below every layer that uses
them.
"""
import dataclasses
import math
import numbers

# Block type -> what one block is in the training form, and what it fuses into.
BLOCK_TYPES = {
    "mobileone": "num_branches parallel 3x3 conv+BN, a 1x1 conv+BN and an identity BN, summed, "
                 "ReLU (MobileOneConv2D); deploy: one Conv2D 3x3 + ReLU",
    "repconv": "RepVGG: 3x3 conv+BN, 1x1 conv+BN and identity BN, summed, ReLU (MobileOneConv2D "
               "with one branch; num_branches is ignored); deploy: one Conv2D 3x3 + ReLU",
    "repdw": "MobileOne's depthwise-separable block: 'block_{i}_dw' (num_branches depthwise 3x3 "
             "conv+BN, a depthwise 1x1 conv+BN, identity BN, ReLU) then 'block_{i}_pw' "
             "(num_branches 1x1 conv+BN, identity BN, ReLU); deploy: DepthwiseConv2D 3x3 + ReLU, "
             "then Conv2D 1x1 + ReLU",
    "mobileone_online": "the mobileone branches with a learnable per-channel scale instead of each "
                        "branch's BN, summed into one 3x3 kernel before a single conv + BN + ReLU "
                        "(OnlineMobileOneConv2D, OREPA): one conv per block in training; deploy: "
                        "one Conv2D 3x3 + ReLU",
    "mobileone_linear": "mobileone_online without any BN: the merged kernel's conv gets a bias "
                        "(linear over-parameterization; a step costs what plain's costs); deploy: "
                        "one Conv2D 3x3 + ReLU",
    "mobileone_expand": "mobileone_linear with each 3x3 branch kernel the product of a 3x3 conv C->2C and a "
                        "1x1 conv back (ExpandNets / SESR), multiplied out; deploy: one Conv2D 3x3 + ReLU",
    "plain": "Conv2D 3x3 + ReLU in both forms (num_branches is ignored)",
}
# Architecture -> what `keras_sr.models.build_student` builds (the layers: `keras_sr.models.student`
# and `keras_sr.models.baselines`). The baselines are plain convolutions (block_type "plain") and
# go through the same data, QAT and export path as the student.
ARCHS = {
    "student": "the paper's student: stem, num_blocks blocks of block_type, skip, tail",
    "abpn": "ABPN (Du et al., 2021): Anchor-based Plain Net, plain 3x3 convs and the anchor",
    "fsrcnn": "FSRCNN (Dong et al., 2016) on RGB with ReLU; deconvolution as depth-to-space",
}
# The ModelConfig fields of each architecture as its paper sets them (`ModelConfig.for_arch`):
# ABPN's C = 28 and four middle convs, with the anchor; FSRCNN's d = 56, s = 12, m = 4.
ARCH_FIELDS = {
    "student": {},
    "abpn": {"block_type": "plain", "channels": 28, "num_blocks": 4, "anchor": True},
    "fsrcnn": {"block_type": "plain", "channels": 56, "shrink_channels": 12, "num_blocks": 4},
}
QAT_PHASES = ("A", "B", "C")
KERNEL_CLIP_METHODS = ("none", "std", "percentile")
QAT_GRAPHS = ("fused", "multibranch")
# Block types whose deploy form is the "plain" student's graph (one Conv2D + ReLU per block), so a
# run can continue on it after fusing (`TrainConfig.fuse_at`).
FUSES_TO_PLAIN = tuple(t for t in BLOCK_TYPES if t not in ("repdw", "plain"))


def positive_int(value, name):
    """Returns `value` as an int, raising ValueError (naming `name`) unless it is an int >= 1."""
    # numbers.Integral covers NumPy integers; bool is an int subclass but never a size.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _non_negative(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _from_fields(cls, values):
    if not isinstance(values, dict):
        raise ValueError(f"{cls.__name__} must be a JSON object, got {values!r}")
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields are {known}")
    return cls(**values)


class DictMixin:
    """JSON round trip and `replace` of a config dataclass."""

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        return _from_fields(cls, values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ModelConfig(DictMixin):
    """The network (`keras_sr.models.build_student`); the defaults are the paper's student.

    `ModelConfig.for_arch("abpn")` / `("fsrcnn")` gives a baseline at its paper's sizes. A
    config.json written before `arch` and `shrink_channels` existed loads as the student.

    Attributes:
        arch: one of `ARCHS`: "student", or the baseline "abpn" or "fsrcnn".
        block_type: one of `BLOCK_TYPES` (student); the baselines are plain convolutions and
            need "plain".
        channels: student: feature channels C of the stem and every block; abpn: C of its
            feature convs (28 in the paper); fsrcnn: d, the channels of feature extraction and
            expanding (56).
        num_blocks: student: number N of blocks; abpn: 3x3 convs C->C after the first (4);
            fsrcnn: m, the 3x3 mapping convs (4).
        num_branches: parallel branches k of each "mobileone" / "repdw" re-parameterizable conv
            (unused by the other block types and the baselines).
        scale: upscaling factor s; the last conv outputs 3 * s * s channels.
        anchor: ABPN's output anchor (Du et al., 2021): the input, repeated s * s times along
            channels, is added to the last conv's output before depth-to-space, so the network
            predicts a residual over nearest-neighbour upsampling and passes through colours it
            has not seen in training. No weights; part of ABPN, off in the paper's student and
            in FSRCNN (any arch takes it).
        shrink_channels: fsrcnn: s, the channels of shrinking and mapping (12); unused by the
            other archs.
    """
    block_type: str = "mobileone"
    channels: int = 32
    num_blocks: int = 8
    num_branches: int = 4
    scale: int = 3
    anchor: bool = False
    arch: str = "student"
    shrink_channels: int = 12

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {self.arch!r}")
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {sorted(BLOCK_TYPES)}, got "
                             f"{self.block_type!r}")
        if self.arch != "student" and self.block_type != "plain":
            raise ValueError(f"arch {self.arch!r} is plain convolutions: it needs block_type "
                             f"'plain', got {self.block_type!r} (block types are the student's)")
        for name in ("channels", "num_blocks", "num_branches", "scale", "shrink_channels"):
            object.__setattr__(self, name, positive_int(getattr(self, name), name))
        if not isinstance(self.anchor, bool):
            raise ValueError(f"anchor must be a bool, got {self.anchor!r}")

    @classmethod
    def for_arch(cls, arch, **fields):
        """The config of `arch` at its paper's sizes (`ARCH_FIELDS`), with `fields` overriding.

        Raises:
            ValueError: an unknown arch, or a bad field.
        """
        if arch not in ARCH_FIELDS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
        return cls(arch=arch, **{**ARCH_FIELDS[arch], **fields})


@dataclasses.dataclass(frozen=True)
class LossConfig(DictMixin):
    """Weights and constants of the composite training loss (total = sum of weight * term).

    The defaults are the paper's Stage-2 loss; `LossConfig.l1_only()` is Stage 1's. A term whose
    weight is 0 is neither computed nor logged.

    Attributes:
        l1_weight: weight of `l1(y_hat, hr)`, the Stage-1 loss.
        charbonnier_weight: weight of `charbonnier(y_hat, hr, eps)`, the main Stage-2 term.
        dct_weight: weight of `dct_l1(y_hat, hr)`. For noise-like errors an orthonormal transform
            keeps the L1 magnitude about as in pixel space, so 0.1 makes the frequency term a
            sharpening regulariser beside the pixel loss rather than a second main objective.
        kd_weight: weight of `confidence_kd`. Both it and Charbonnier are mean absolute errors on
            [0, 1], so 0.5 keeps the ground truth the main target while the teacher still guides
            where it is confident. Used only when teacher images are given.
        gamma: KD confidence sharpness. 20 gives w = exp(-1) = 0.37 at a teacher error of 0.05
            (about 13 of 255 levels), w = 0.92 at one level, and w_min = 0.1 from 0.115 (29 levels).
        w_min: KD weight floor, so no pixel's teacher signal is dropped entirely.
        w_max: KD weight ceiling; 1.0 = exp(0) leaves exact teacher pixels unclipped.
        eps: Charbonnier epsilon (inside the square root as eps^2).
    """
    l1_weight: float = 0.0
    charbonnier_weight: float = 1.0
    dct_weight: float = 0.1
    kd_weight: float = 0.5
    gamma: float = 20.0
    w_min: float = 0.1
    w_max: float = 1.0
    eps: float = 1e-3

    def __post_init__(self):
        for name in ("l1_weight", "charbonnier_weight", "dct_weight", "kd_weight", "gamma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss {name} must be a finite number >= 0, got {value}")
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"loss weights need 0 <= w_min <= w_max, got w_min={self.w_min}, "
                             f"w_max={self.w_max}")
        if not self.eps > 0:
            raise ValueError(f"loss eps (Charbonnier) must be > 0, got {self.eps}")
        if self.l1_weight == self.charbonnier_weight == self.dct_weight == 0:
            raise ValueError("loss needs a ground-truth term: l1_weight, charbonnier_weight or "
                             "dct_weight must be > 0 (the KD term alone is not a training loss)")

    @classmethod
    def l1_only(cls):
        """Stage 1's loss: plain L1 against the ground truth."""
        return cls(l1_weight=1.0, charbonnier_weight=0.0, dct_weight=0.0, kd_weight=0.0)

    @property
    def uses_teacher(self):
        """True when the KD term is on, i.e. training wants teacher records."""
        return self.kd_weight > 0


@dataclasses.dataclass(frozen=True)
class QATConfig(DictMixin):
    """Settings of Stage-3 QAT; the defaults are the documented CPU recipe.

    Attributes:
        phase_a: fraction of the QAT steps in phase A (all observers live).
        phase_b: fraction in phase B (activation grids frozen, weight ranges live); phase C (all
            grids frozen, weights clipped to their ranges) takes the remaining
            1 - phase_a - phase_b.
        calibration_batches: training batches run forward (no weight update) before QAT to set every
            activation range to the mean of the per-batch ranges (see `range_percentile`).
        ema_decay: moving-average decay of the activation ranges in phase A. tfmot's fixed 0.999
            (a time constant of 1000 steps) left the ranges where calibration put them, while the
            fused MobileOne features shrink several-fold during QAT; 0.99 follows them.
        range_percentile: batch statistic the activation ranges follow in calibration and phase A:
            the value at this percentile of the batch (100: its maximum). The fused features are
            heavy-tailed (batch maximum ~2x the 99.99th percentile); 99.99 halves the 8-bit step
            of the widest tensors and clips ~1e-4 of the values.
        per_channel: one weight scale per output channel (else one per tensor).
        bias_rounding: round biases to the converter's int32 grid in the fake-quant graph.
        exact_requantization: round every conv output like LiteRT's XNNPACK kernels (exact int32
            accumulator, float32 requantization, round half to even), and an anchored student's
            output Add like XNNPACK's fixed-point ADD, so the Keras QAT model and the exported
            model agree bit for bit on them (needs bias_rounding).
        kernel_clip: outlier clipping of each fused kernel per output channel at QAT start:
            "none", "std" (to mean +- kernel_clip_value * std) or "percentile" (to the
            [100 - v, v] percentiles, v = kernel_clip_value).
        kernel_clip_value: k for "std", the upper percentile (e.g. 99.9) for "percentile".
        graph: the graph QAT trains: "fused" (the deploy graph, default) or "multibranch" (the
            training form, fused after QAT by `keras_sr.quant.fuse_after_qat`; an ablation, needs
            the dense "mobileone"/"repconv" student and kernel_clip "none").
    """
    phase_a: float = 0.4
    phase_b: float = 0.3
    calibration_batches: int = 32
    ema_decay: float = 0.99
    range_percentile: float = 99.99
    per_channel: bool = True
    bias_rounding: bool = True
    exact_requantization: bool = True
    kernel_clip: str = "none"
    kernel_clip_value: float = 3.0
    graph: str = "fused"

    def __post_init__(self):
        if not (0.0 <= self.phase_a and 0.0 <= self.phase_b and self.phase_a + self.phase_b <= 1.0):
            raise ValueError(f"qat phase_a={self.phase_a}, phase_b={self.phase_b}: need two "
                             "non-negative fractions that sum to at most 1")
        if self.kernel_clip not in KERNEL_CLIP_METHODS:
            raise ValueError(f"qat kernel_clip={self.kernel_clip!r}: choose one of "
                             f"{KERNEL_CLIP_METHODS}")
        if self.kernel_clip == "percentile" and not 50.0 < self.kernel_clip_value <= 100.0:
            raise ValueError(f"qat kernel_clip_value={self.kernel_clip_value}: a percentile clip "
                             "needs a value in (50, 100]")
        if self.exact_requantization and not self.bias_rounding:
            raise ValueError("qat exact_requantization needs bias_rounding")
        if self.calibration_batches < 1:
            raise ValueError(f"qat calibration_batches={self.calibration_batches} must be >= 1")
        if not 50.0 < self.range_percentile <= 100.0:
            raise ValueError(f"qat range_percentile={self.range_percentile} must be in (50, 100]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"qat ema_decay={self.ema_decay} must be in [0, 1)")
        if self.graph not in QAT_GRAPHS:
            raise ValueError(f"qat graph={self.graph!r}: choose one of {QAT_GRAPHS}")
        if self.graph == "multibranch" and self.kernel_clip != "none":
            raise ValueError("qat kernel_clip applies to fused kernels: use kernel_clip='none' "
                             "with graph='multibranch'")


@dataclasses.dataclass(frozen=True)
class TrainConfig(DictMixin):
    """Everything a training run needs besides its data paths.

    Attributes:
        stage: 1 (L1), 2 (Charbonnier + DCT + teacher distillation) or 3 (QAT of the fused graph).
        model: the student (training form); Stages 2 and 3 take it from the run they start from.
        lr_patch: side of the random LR crops; HR crops are `model.scale` times larger.
        batch_size: global batch size (split across replicas under a distribution strategy).
        steps: number of optimizer steps of the whole run.
        time_budget_minutes: if > 0, the wall time the whole run may take: after a few hundred
            steps the run is shortened (learning-rate decay included) to end within it.
        learning_rate: peak Adam learning rate.
        warmup_steps: linear warm-up before the cosine decay.
        final_learning_rate: learning rate the cosine decay ends at.
        jit_compile: XLA-compile the forward/backward pass (off by default: on a 2-core CPU it made
            the branchy student several times slower).
        log_every, eval_every, checkpoint_every: periods in steps (the end of the run always does all).
        max_checkpoints: how many checkpoints to keep.
        loss: the training objective.
        qat: QAT settings (read by Stage 3 only).
        bn_recalibration_batches: forward-only batches that re-estimate BN statistics before folding
            (Stage 3, and the switch of `fuse_at`).
        fuse_at: Stages 1-2: the fraction of the run after which the multi-branch training form is
            recalibrated, fused, and trained on as the deploy form (`fuse_step`); 0 trains the
            training form throughout. Needs a block type of `FUSES_TO_PLAIN`.
        shuffle_buffer: number of decoded crops the input pipeline shuffles over.
        seed: seed of the input pipeline and of weight initialisation.
    """
    stage: int = 1
    model: ModelConfig = ModelConfig()
    lr_patch: int = 48
    batch_size: int = 16
    steps: int = 5000
    time_budget_minutes: float = 0.0
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    final_learning_rate: float = 1e-6
    jit_compile: bool = False
    log_every: int = 100
    eval_every: int = 1000
    checkpoint_every: int = 500
    max_checkpoints: int = 3
    loss: LossConfig = LossConfig.l1_only()
    qat: QATConfig = QATConfig()
    bn_recalibration_batches: int = 64
    fuse_at: float = 0.0
    shuffle_buffer: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {self.stage!r}")
        for name, kind in (("model", ModelConfig), ("loss", LossConfig), ("qat", QATConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"TrainConfig.{name} must be a {kind.__name__}, got "
                                 f"{getattr(self, name)!r}")
        for name in ("lr_patch", "batch_size", "steps", "log_every", "eval_every",
                     "checkpoint_every", "max_checkpoints", "bn_recalibration_batches",
                     "shuffle_buffer"):
            positive_int(getattr(self, name), name)
        for name in ("time_budget_minutes", "learning_rate", "final_learning_rate",
                     "warmup_steps"):
            _non_negative(getattr(self, name), name)
        if not 0.0 <= self.fuse_at < 1.0:
            raise ValueError(f"fuse_at must be a fraction in [0, 1), got {self.fuse_at!r}")
        if self.fuse_at and (self.stage == 3 or self.model.block_type not in FUSES_TO_PLAIN):
            raise ValueError(f"fuse_at needs Stage 1 or 2 and a block type of {FUSES_TO_PLAIN}, "
                             f"got stage {self.stage}, block type {self.model.block_type!r}")

    def fuse_step(self, total_steps):
        """The step after which a run with `fuse_at` trains the deploy form (None: never).

        Args:
            total_steps: the run's length (a time budget may have shortened it).
        """
        return max(1, round(self.fuse_at * total_steps)) if self.fuse_at else None

    @classmethod
    def from_dict(cls, values):
        """Reads the JSON form; nested configs may be dicts, in today's or the untyped form."""
        values = dict(values)
        if isinstance(values.get("model"), dict):
            values["model"] = ModelConfig.from_dict(values["model"])
        if isinstance(values.get("loss"), dict):
            values["loss"] = _loss_from_dict(values["loss"])
        if isinstance(values.get("qat"), dict):
            values["qat"] = QATConfig.from_dict(values["qat"])
        return _from_fields(cls, values)


def _loss_from_dict(values):
    # Before the configs were typed, config.json named the loss: {"name": "l1"}, or {"name":
    # "stage2", **LossConfig fields} overriding the Stage-2 defaults.
    name = values.get("name")
    fields = {k: v for k, v in values.items() if k != "name"}
    if name == "l1":
        if fields:
            raise ValueError(f"loss 'l1' takes no fields, got {sorted(fields)}")
        return LossConfig.l1_only()
    if name not in (None, "stage2"):
        raise ValueError(f"unknown loss name {name!r} in a stored config (expected 'l1' or "
                         "'stage2')")
    return LossConfig.from_dict(fields)


def smoke(config):
    """Shrinks any config to a run of a few steps on tiny patches (well under a minute on a CPU)."""
    return config.replace(lr_patch=16, batch_size=4, steps=6, warmup_steps=2, log_every=2,
                          eval_every=6, checkpoint_every=3, bn_recalibration_batches=2,
                          shuffle_buffer=16, time_budget_minutes=0.0)
