"""Stage 3: quantization-aware training of the fused (deploy) graph with tfmot.

The QAT model is a model builder, not a second trainer. The Stage-3 wiring (`keras_sr.train.stages`)
does, before the ordinary training loop:

    model = recalibrate_bn(student, lr_batches, 64)   # exact BN statistics, forward passes only
    fused = keras_sr.models.reparameterize(model)
    check_fused(model, fused, batch)                  # raises if the fused graph differs
    q = build_qat_model(fused, qat_config)            # fake-quant model, phase A
    calibrate(q, lr_batches, qat_config)              # activation ranges before the first update

and trains `q` with two hooks: `set_phase(q, phase_for_step(qat_config, step, total_steps))` before
each step (Python) and `post_update(q)` after each update (graph-safe, in the compiled step).

`build_qat_model` applies tfmot's `quantize_annotate_layer` + `quantize_apply` inside
`quantize_scope` with the project's configs (`keras_sr.quant.configs`): per-channel symmetric int8
weights, activations quantized after each fused ReLU, the Add output quantized, depth-to-space
without quantizers, the input range pinned to [0, 1], the tail output range fixed to [0, 1] (the
clip), biases rounded to the converter's int32 grid, and every conv output rounded the way the
int8 runtime requantizes it, so the Keras QAT model and the exported model under XNNPACK are
bit-identical (`converter_graph` gives the converter the plain FakeQuant ops it folds).

Curriculum (`QATConfig.phase_a`, `phase_b`: fractions of the QAT steps; phase C takes the rest):
    A  all observers live (activation ranges follow a moving average of a batch percentile);
    B  activation grids frozen, weight ranges follow the weights (straight-through estimator);
    C  all grids frozen, each kernel clipped to its frozen per-channel range after every update.
The phase flags are variables of the model read with `tf.cond`, so one compiled train step serves
all phases, and checkpoints carry them.

Ablation `QATConfig.graph = "multibranch"` (issue 3; the fused graph stays the default): QAT runs on
the training form instead (`build_qat_model(student, config)`: branch kernels fake-quantized per
channel, BN float, each block's ReLU output quantized; stem, Add, tail and depth-to-space as in
the fused graph), with the same hooks. After QAT, `fuse_after_qat` folds the latent weights into
the fused graph, gives it the learned activation ranges and freezes every grid, so export, parity
and evaluation use the fused QAT model unchanged (`load_qat_model` does this for such a run).
"""
import contextlib
import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from absl import logging
# QuantizeLayer is not exported by tfmot's public API; the project pins tfmot 0.8.1.
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer

from keras_sr.configs.base import DictMixin
from keras_sr.models.blocks import MobileOneConv2D
from keras_sr.models.depth_to_space import DepthToSpace
from keras_sr.quant import configs
from keras_sr.quant import quantizers as qz
from keras_sr.quant.bn_recalibration import take_inputs

_tfq = tfmot.quantization.keras
_transforms = _tfq.graph_transformations.transforms

# Model input and output are RGB in [0, 1]; as 8-bit grids (scale 1/255, zero point 0) the uint8
# tensors of the exported model hold raw pixel values (tfmot_qat.md section 14).
IO_RANGE = (0.0, 1.0)
PHASES = ("A", "B", "C")
KERNEL_CLIP_METHODS = ("none", "std", "percentile")
GRAPHS = ("fused", "multibranch")


@dataclasses.dataclass
class QATConfig(DictMixin):
    """Settings of Stage-3 QAT (the "qat" entry of a Stage-3 config.json).

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
            accumulator, float32 requantization, round half to even), so the Keras QAT model and
            the exported model agree bit for bit on the convs (needs bias_rounding).
        kernel_clip: outlier clipping of each fused kernel per output channel at QAT start:
            "none", "std" (to mean +- kernel_clip_value * std) or "percentile" (to the
            [100 - v, v] percentiles, v = kernel_clip_value).
        kernel_clip_value: k for "std", the upper percentile (e.g. 99.9) for "percentile".
        graph: the graph QAT trains: "fused" (the deploy graph, default) or "multibranch" (the
            training form, fused after QAT by `fuse_after_qat`; an ablation, needs the dense
            "mobileone"/"repconv" student and kernel_clip "none").
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
        if self.graph not in GRAPHS:
            raise ValueError(f"qat graph={self.graph!r}: choose one of {GRAPHS}")
        if self.graph == "multibranch" and self.kernel_clip != "none":
            raise ValueError("qat kernel_clip applies to fused kernels: use kernel_clip='none' "
                             "with graph='multibranch'")


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


# --------------------------------------------------------------------------------------------------
# Building the fake-quant model.

class _PinnedInputQuantize(_transforms.Transform):
    """InputLayer -> InputLayer + QuantizeLayer with a fixed [0, 1] range.

    tfmot's own transform puts a running-min/max quantizer there, which would widen if an input ever
    left [0, 1]; a pinned range keeps the uint8 input equal to the pixel values.
    """

    def pattern(self):
        return _transforms.LayerPattern("InputLayer")

    def replacement(self, match_layer):
        layer = quantize_layer.QuantizeLayer(qz.PinnedRangeQuantizer(*IO_RANGE))
        config = keras.layers.serialize(layer, use_legacy_format=True)
        config["name"] = layer.name
        return _transforms.LayerNode(config, input_layers=[match_layer])

    def custom_objects(self):
        return {"QuantizeLayer": quantize_layer.QuantizeLayer, **qz.custom_objects()}


class _LayoutTransform(_tfq.QuantizeLayoutTransform):
    # The fused graph has no BN, concat or separate activation, so the pinned input is the only
    # rewrite the default 8-bit transforms would have done.
    def apply(self, model, layer_quantize_map):
        return _tfq.graph_transformations.model_transformer.ModelTransformer(
            model, [_PinnedInputQuantize()], set(layer_quantize_map),
            layer_quantize_map).transform()


class _Scheme(_tfq.QuantizeScheme):
    def get_layout_transformer(self):
        return _LayoutTransform()

    def get_quantize_registry(self):
        return _tfq.default_8bit.Default8BitQuantizeRegistry()


def _quantize_config(layer, config):
    if isinstance(layer, keras.layers.Conv2D):
        linear = keras.activations.serialize(layer.activation) == "linear"
        return configs.ConvQuantizeConfig(
            per_axis=config.per_channel, ema_decay=config.ema_decay,
            percentile=config.range_percentile, output_range=IO_RANGE if linear else None,
            bias_rounding=config.bias_rounding, exact_requantization=config.exact_requantization)
    if isinstance(layer, keras.layers.Add):
        return configs.AddQuantizeConfig(config.ema_decay, config.range_percentile)
    if isinstance(layer, DepthToSpace):
        return configs.NoOpQuantizeConfig()
    if isinstance(layer, MobileOneConv2D) and config.graph == "multibranch":
        return configs.MobileOneQuantizeConfig(config.per_channel, config.ema_decay,
                                               config.range_percentile)
    raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) is not part of the fused "
                     "deploy graph (Conv2D with fused ReLU or linear output, Add, DepthToSpace); "
                     "fuse the model with keras_sr.models.reparameterize first (or set "
                     "QATConfig.graph='multibranch' for QAT on the training form)")


def _annotate(fused_model, config):
    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        return _tfq.quantize_annotate_layer(copy, _quantize_config(layer, config))

    annotated = keras.models.clone_model(fused_model, clone_function=clone)
    annotated.set_weights(fused_model.get_weights())
    return annotated


def _scope():
    # tfmot's scope already knows QuantizeLayer and its wrappers; ours adds the project's classes.
    return _tfq.quantize_scope(configs.custom_objects())


def _wrappers(q_model):
    return [layer for layer in q_model.layers if isinstance(layer, _tfq.QuantizeWrapper)]


def conv_wrappers(q_model):
    """The QuantizeWrappers of the model's convolutions, in graph order."""
    return [w for w in _wrappers(q_model)
            if isinstance(w.quantize_config, configs.ConvQuantizeConfig)]


def latent_conv_weights(wrapper):
    """The (kernel, bias) variables a conv QuantizeWrapper trains (before fake-quant)."""
    by_rank = {len(v.shape): v for v in wrapper.trainable_weights}
    return by_rank[4], by_rank[1]


def _output_vars(layer):
    """Range variables of the quantized tensor `layer` outputs."""
    if isinstance(layer, quantize_layer.QuantizeLayer):
        return layer.quantizer.built_vars[0]
    if isinstance(layer, _tfq.QuantizeWrapper) and hasattr(layer.quantize_config, "output_vars"):
        return layer.quantize_config.output_vars()
    raise ValueError(f"layer {layer.name!r} feeds a conv but has no quantized output")


def _link_conv_quantizers(q_model):
    for wrapper in conv_wrappers(q_model):
        producers = tf.nest.flatten(wrapper.inbound_nodes[0].inbound_layers)
        if len(producers) != 1:
            raise ValueError(f"{wrapper.name} has {len(producers)} inputs, expected 1")
        wrapper.quantize_config.link(_output_vars(producers[0]))


def clip_kernel_outliers(kernel, method, value):
    """Clips a (kh, kw, cin, cout) kernel per output channel.

    Args:
        kernel: NumPy array, output channels last.
        method: "none", "std" (to mean +- value * std of the channel) or "percentile" (to the
            channel's [100 - value, value] percentiles).
        value: k for "std", the upper percentile for "percentile".

    Returns:
        The clipped kernel (a new array).
    """
    flat = kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)
    if method == "none":
        return kernel.copy()
    if method == "std":
        mean, std = flat.mean(axis=0), flat.std(axis=0)
        low, high = mean - value * std, mean + value * std
    elif method == "percentile":
        low, high = np.percentile(flat, [100.0 - value, value], axis=0)
    else:
        raise ValueError(f"kernel clip method {method!r} is not one of {KERNEL_CLIP_METHODS}")
    return np.clip(kernel, low, high).astype(kernel.dtype)


def build_qat_model(fused_model, config=None):
    """Wraps the fused deploy graph in the project's fake-quant configs (a new model, phase A).

    Args:
        fused_model: the deploy-form student (`build_student(reparameterized=True)` or
            `reparameterize(model)`): Conv2D with fused ReLU, Add, a linear tail Conv2D and
            DepthToSpace; input float RGB in [0, 1]. It is not modified. With
            `config.graph == "multibranch"`: the training-form student instead.
        config: `QATConfig`; its kernel clip is applied to the new model's kernels.

    Returns:
        The QAT model: (B, H, W, 3) in [0, 1] -> (B, 3H, 3W, 3) on the 1/255 grid of [0, 1].
        Activation ranges start at tfmot's [-6, 6]: run `calibrate` before training.
    """
    config = config or QATConfig()
    with _scope():
        q_model = _tfq.quantize_apply(_annotate(fused_model, config), scheme=_Scheme())
    _link_conv_quantizers(q_model)
    if config.kernel_clip != "none":
        for wrapper in conv_wrappers(q_model):
            kernel, _ = latent_conv_weights(wrapper)
            kernel.assign(clip_kernel_outliers(kernel.numpy(), config.kernel_clip,
                                               config.kernel_clip_value))
    set_phase(q_model, "A")
    return q_model


@contextlib.contextmanager
def converter_graph(model):
    """Context in which graphs traced from `model` hold plain FakeQuant ops on the conv outputs.

    The QAT model rounds its conv outputs like the int8 runtime (`QATConfig.exact_requantization`);
    the TFLite converter only folds FakeQuant ops, so export traces the model inside this context.
    The converted model computes what the rounding emulates. A model without conv quantizers (an
    FP32 model) traces unchanged.
    """
    quantizers = [w.quantize_config.output_tensor_quantizer() for w in conv_wrappers(model)]
    for quantizer in quantizers:
        quantizer.runtime_rounding = False
    try:
        yield model
    finally:
        for quantizer in quantizers:
            quantizer.runtime_rounding = True


# --------------------------------------------------------------------------------------------------
# Phases, calibration and the trainer hooks.

def quantizer_variables(q_model, group):
    """Variable dicts of every quantizer of `group` ("activation" or "weight") in the model."""
    found = []
    for wrapper in _wrappers(q_model):
        config = wrapper.quantize_config
        for name in ("kernel_quantizer", "scale_kernel_quantizer", "activation_quantizer",
                     "output_quantizer"):
            quantizer = getattr(config, name, None)
            if getattr(quantizer, "group", None) == group:
                found.extend(quantizer.built_vars)
    return found


def set_phase(q_model, phase):
    """Sets the freeze flags of phase "A", "B" or "C" (eager; no retrace of a compiled step)."""
    if phase not in PHASES:
        raise ValueError(f"QAT phase must be one of {PHASES}, got {phase!r}")
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
        clipped = tf.clip_by_value(kernel, ranges["min_var"], ranges["max_var"])
        kernel.assign(tf.where(ranges["frozen"], clipped, kernel))


def quantized_kernels(q_model):
    """(latent kernel variable, its weight quantizer's variable dict) of every quantized kernel.

    Covers the fused convs and, in a multi-branch QAT model, every branch kernel of a block.
    """
    # QuantizeWrapper keeps (latent weight, quantizer, quantizer variables) in _weight_vars; the
    # layer's own kernel attribute holds the fake-quant tensor after a call.
    # pylint: disable=protected-access
    return [(weight, variables) for wrapper in _wrappers(q_model)
            for weight, quantizer, variables in wrapper._weight_vars
            if isinstance(quantizer, qz.WeightQuantizer)]


def calibrate(q_model, dataset, config=None):
    """Sets every live activation range to the mean over batches of the batch range.

    The batch range is the one phase A follows (`quantizers.batch_range` at
    `config.range_percentile`, set when the model was built).

    Runs `config.calibration_batches` forward passes with `training=True` (no weight update), with
    the moving-average decay of batch t (1-based) set to (t - 1) / t, so each range ends as the
    exact mean of the per-batch ranges and tfmot's [-6, 6] start leaves no trace. Frozen ranges stay
    as they are.

    Args:
        q_model: a model from `build_qat_model`.
        dataset: batches as accepted by `take_inputs` (float RGB in [0, 1]).
        config: `QATConfig` (for `calibration_batches`).

    Returns:
        The number of batches used.
    """
    config = config or QATConfig()
    act_vars = quantizer_variables(q_model, "activation")
    decays = [float(v["ema_decay"].numpy()) for v in act_vars]
    forward = tf.function(lambda x: q_model(x, training=True))
    count = 0
    try:
        for count, x in enumerate(take_inputs(dataset, config.calibration_batches), start=1):
            for variables in act_vars:
                variables["ema_decay"].assign((count - 1) / count)
            forward(x)
    finally:
        for variables, decay in zip(act_vars, decays):
            variables["ema_decay"].assign(decay)
    if count == 0:
        raise ValueError("QAT calibration got no batch from the dataset")
    logging.info("QAT calibration: %d activation ranges over %d batches", len(act_vars), count)
    return count


def check_fused(model, fused, batch, atol=1e-4, rtol=1e-5):
    """Raises unless the fused model reproduces the multi-branch one on `batch` (training=False).

    Args:
        model: the training-form student.
        fused: its re-parameterized deploy form.
        batch: float (B, H, W, 3) in [0, 1].
        atol, rtol: the largest allowed absolute difference is atol + rtol * max |model output|
            (float32 rounding of the fold grows with the size of the activations).

    Returns:
        The largest absolute difference.

    Raises:
        ValueError: if the outputs differ by more than allowed.
    """
    reference = model(batch, training=False)
    diff = float(tf.reduce_max(tf.abs(fused(batch, training=False) - reference)))
    allowed = atol + rtol * float(tf.reduce_max(tf.abs(reference)))
    if not diff <= allowed:
        raise ValueError(f"the fused model differs from the multi-branch model by up to {diff:.3g} "
                         f"(allowed {allowed:.3g}): re-parameterization is broken")
    logging.info("fused vs multi-branch: max |difference| %.3g (allowed %.3g)", diff, allowed)
    return diff


def float_twin(q_model, fused_template):
    """An FP32 copy of `fused_template` holding the QAT model's latent (unquantized) weights.

    Args:
        q_model: a model from `build_qat_model`.
        fused_template: a deploy-form model with the same layer names (e.g. a fresh
            `build_student(reparameterized=True, ...)`); it is not modified.
    """
    twin = keras.models.clone_model(fused_template)
    for wrapper in conv_wrappers(q_model):
        twin.get_layer(wrapper.layer.name).set_weights(
            [v.numpy() for v in latent_conv_weights(wrapper)])
    return twin


def fuse_after_qat(q_model, student, config):
    """The fused QAT model of a multi-branch QAT model (`QATConfig.graph == "multibranch"`).

    The latent branch weights and BN statistics are folded (`reparameterize`) into the fused graph,
    whose QAT model (`build_qat_model`) takes the learned activation ranges of the block outputs
    and the Add, and weight ranges that fit its fused kernels; every grid is then frozen (phase C).
    The fused kernels are quantized once instead of per branch, so the two models differ by that
    rounding.

    Args:
        q_model: a multi-branch QAT model (`build_qat_model(student, config)`); not modified.
        student: a training-form student with the same layer names (e.g. a fresh
            `build_student(...)`); not modified.
        config: the `QATConfig` of `q_model`.

    Returns:
        The fused QAT model in phase C, ready for `keras_sr.export.tflite_lib.convert_qat`.
    """
    from keras_sr import models

    twin = keras.models.clone_model(student)
    for wrapper in _wrappers(q_model):
        target = twin.get_layer(wrapper.layer.name)
        if isinstance(target, MobileOneConv2D):
            # _weight_vars follows MobileOneQuantizeConfig: the k x k kernel, then the 1x1 one.
            latent = [w for w, _, _ in wrapper._weight_vars]  # pylint: disable=protected-access
            convs = [c for c in (target.conv_kxk, target.conv_scale) if c is not None]
            for conv, kernel in zip(convs, latent):
                conv.kernel.assign(kernel)
            for name in ("bn_kxk", "bn_scale", "bn_identity"):
                if getattr(target, name) is not None:
                    getattr(target, name).set_weights(getattr(wrapper.layer, name).get_weights())
        elif isinstance(target, keras.layers.Conv2D):
            target.set_weights([v.numpy() for v in latent_conv_weights(wrapper)])
    fused = build_qat_model(models.reparameterize(twin),
                            dataclasses.replace(config, graph="fused", kernel_clip="none"))
    # Every quantized tensor of the fused graph is the output of a same-named layer of q_model
    # (a fused conv of its block); the pinned [0, 1] ranges copy onto themselves.
    for wrapper in _wrappers(fused):
        if hasattr(wrapper.quantize_config, "output_vars"):
            source = q_model.get_layer(wrapper.name).quantize_config.output_vars()
            for key in ("min_var", "max_var"):
                wrapper.quantize_config.output_vars()[key].assign(source[key])
    for kernel, ranges in quantized_kernels(fused):
        reach = tf.reduce_max(tf.abs(kernel), axis=[0, 1, 2])
        if len(ranges["max_var"].shape) == 0:
            reach = tf.reduce_max(reach)
        ranges["min_var"].assign(-reach)
        ranges["max_var"].assign(reach)
    set_phase(fused, "C")
    return fused


def load_qat_model(workdir, checkpoint=None):
    """Rebuilds a Stage-3 QAT model from its work directory and restores a checkpoint.

    Args:
        workdir: a training work directory whose config.json has "model" (build_student kwargs) and
            "qat" (QATConfig fields), and whose checkpoints/ holds tf.train.Checkpoint(model=...).
        checkpoint: a checkpoint prefix; the latest one in workdir/checkpoints when None.

    Returns:
        The QAT model with the restored weights, ranges and phase flags; for a
        `graph == "multibranch"` run, its fused form (`fuse_after_qat`).
    """
    from keras_sr import models
    from keras_sr.train import workdir as wd

    _, checkpoint = wd.resolve_checkpoint(checkpoint or workdir)
    config = wd.read_json(os.path.join(workdir, wd.CONFIG))
    if "model" not in config:
        raise ValueError(f"{workdir}/{wd.CONFIG} has no 'model' entry")
    qat_config = QATConfig.from_dict(config.get("qat") or {})
    multibranch = qat_config.graph == "multibranch"
    student = models.build_student(**{**config["model"], "reparameterized": not multibranch})
    q_model = build_qat_model(student, qat_config)
    status = tf.train.Checkpoint(model=q_model).read(checkpoint).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(f"{checkpoint} does not hold the QAT model of {workdir}/{wd.CONFIG}: "
                         f"{e}") from None
    return fuse_after_qat(q_model, student, qat_config) if multibranch else q_model
