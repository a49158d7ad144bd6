"""The one configuration type every stage uses."""
import dataclasses


def default_model():
    """Keyword arguments of `keras_sr.models.build_student` for the paper's student."""
    return {"block_type": "mobileone", "channels": 32, "num_blocks": 8, "num_branches": 4, "scale": 3}


class DictMixin:
    """JSON round trip of a config dataclass (how configs are stored in a work directory)."""

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        return cls(**values)


@dataclasses.dataclass
class TrainConfig(DictMixin):
    """Everything a training run needs besides its data paths.

    Attributes:
        stage: 1 (L1), 2 (Charbonnier + DCT + teacher distillation) or 3 (QAT of the fused graph).
        model: keyword arguments of `keras_sr.models.build_student` (training form).
        lr_patch: side of the random LR crops; HR crops are `scale` times larger.
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
        loss: `keras_sr.losses.LossConfig` fields, or {"name": "l1"} for Stage 1.
        qat: `keras_sr.quant.QATConfig` fields (Stage 3 only).
        bn_recalibration_batches: forward-only batches that re-estimate BN statistics before folding
            (Stage 3).
        shuffle_buffer: number of decoded crops the input pipeline shuffles over.
        seed: seed of the input pipeline and of weight initialisation.
    """
    stage: int = 1
    model: dict = dataclasses.field(default_factory=default_model)
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
    loss: dict = dataclasses.field(default_factory=lambda: {"name": "l1"})
    qat: dict = dataclasses.field(default_factory=dict)
    bn_recalibration_batches: int = 64
    shuffle_buffer: int = 256
    seed: int = 0

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)



def smoke(config):
    """Shrinks any config to a run of a few steps on tiny patches (well under a minute on a CPU)."""
    return config.replace(lr_patch=16, batch_size=4, steps=6, warmup_steps=2, log_every=2,
                          eval_every=6, checkpoint_every=3, bn_recalibration_batches=2,
                          shuffle_buffer=16, time_budget_minutes=0.0)
