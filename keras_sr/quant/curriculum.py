"""The QAT curriculum and the trainer hooks of Stage 3.

Curriculum (`QATConfig.phase_a`, `phase_b`: fractions of the QAT steps; phase C takes the rest):
    A  all observers live (activation ranges follow a moving average of a batch percentile);
    B  activation grids frozen, weight ranges follow the weights (straight-through estimator);
    C  all grids frozen, each kernel clipped to its frozen per-channel range after every update.
The phase flags are variables of the model read with `tf.cond`, so one compiled train step serves
all phases, and checkpoints carry them. The trainer calls
`set_phase(q, phase_for_step(qat_config, step, total_steps))` before each step (Python) and
`post_update(q)` after each update (graph-safe, in the compiled step).
"""
import tensorflow as tf

from keras_sr.configs import QAT_PHASES
from keras_sr.quant import quantizers as qz
from keras_sr.quant.build import wrappers


def phase_for_step(config, step, total_steps):
    """The curriculum phase ("A", "B" or "C") of a step.

    Args:
        config: `QATConfig`.
        step: 1-based number of the step about to run (what the trainer's `on_step` receives).
        total_steps: number of QAT steps. Phase A covers steps 1..round(phase_a * total_steps),
            B the steps up to round((phase_a + phase_b) * total_steps), C the rest.
    """
    if step <= round(config.phase_a * total_steps):
        return "A"
    if step <= round((config.phase_a + config.phase_b) * total_steps):
        return "B"
    return "C"


def quantizer_variables(q_model, group):
    """Variable dicts of every quantizer of `group` ("activation" or "weight") in the model."""
    found = []
    for wrapper in wrappers(q_model):
        config = wrapper.quantize_config
        for name in ("kernel_quantizer", "scale_kernel_quantizer", "activation_quantizer",
                     "output_quantizer"):
            quantizer = getattr(config, name, None)
            if getattr(quantizer, "group", None) == group:
                found.extend(quantizer.built_vars)
    return found


def set_phase(q_model, phase):
    """Sets the freeze flags of phase "A", "B" or "C" (eager; no retrace of a compiled step)."""
    if phase not in QAT_PHASES:
        raise ValueError(f"QAT phase must be one of {QAT_PHASES}, got {phase!r}")
    for variables in quantizer_variables(q_model, "activation"):
        variables["frozen"].assign(phase in ("B", "C"))
    for variables in quantizer_variables(q_model, "weight"):
        variables["frozen"].assign(phase == "C")


def get_phase(q_model):
    """The phase the freeze flags of `q_model` encode."""
    activation = all(bool(v["frozen"].numpy()) for v in quantizer_variables(q_model, "activation"))
    weight = all(bool(v["frozen"].numpy()) for v in quantizer_variables(q_model, "weight"))
    return "C" if weight else "B" if activation else "A"


def post_update(q_model):
    """Clips every kernel to its weight quantizer's range when that range is frozen (phase C).

    Graph-safe: call it in the compiled train step after `apply_gradients`. Outside phase C it
    assigns the kernels unchanged (a kernel may only be clipped to a range that no longer follows
    it).
    """
    for kernel, ranges in quantized_kernels(q_model):
        # Per-channel ranges follow the kernel's output channels, which are its last axis or, in
        # a depthwise kernel (kh, kw, C, 1), its channel axis: both are last in a (taps, channels)
        # reshape.
        channels = ranges["max_var"].shape.num_elements()
        flat = tf.reshape(kernel, [-1, channels])
        clipped = tf.reshape(tf.clip_by_value(flat, ranges["min_var"], ranges["max_var"]),
                             kernel.shape)
        kernel.assign(tf.where(ranges["frozen"], clipped, kernel))


def quantized_kernels(q_model):
    """(latent kernel variable, its weight quantizer's variable dict) of every quantized kernel.

    Covers the fused convs and, in a multi-branch QAT model, every branch kernel of a block.
    """
    # QuantizeWrapper keeps (latent weight, quantizer, quantizer variables) in _weight_vars; the
    # layer's own kernel attribute holds the fake-quant tensor after a call.
    # pylint: disable=protected-access
    return [(weight, variables) for wrapper in wrappers(q_model)
            for weight, quantizer, variables in wrapper._weight_vars
            if isinstance(quantizer, qz.WeightQuantizer)]
