"""Building the fake-quant (QAT) model of the fused deploy graph with tfmot.

    q = build_qat_model(fused, qat_config)     # a new model in phase A; `fused` is not modified

`build_qat_model` applies tfmot's `quantize_annotate_layer` + `quantize_apply` inside
`quantize_scope` with the project's configs (`keras_sr.quant.configs`): per-channel symmetric int8
weights, activations quantized after each fused ReLU, the Add output quantized, depth-to-space
without quantizers, the input range pinned to [0, 1], the tail output range fixed to [0, 1] (the
clip), biases rounded to the converter's int32 grid, and every conv output rounded the way the
int8 runtime requantizes it, from an accumulator summed like the runtime's
(`keras_sr.quant.integer_conv`), so the Keras QAT model and the exported model under XNNPACK are
bit-identical (`converter_graph` gives the converter the plain convs and FakeQuant ops it folds).
DepthwiseConv2D (the "repdw" student) is quantized like Conv2D, with per-channel depthwise weight
ranges. The baselines (`ModelConfig.arch` "abpn", "fsrcnn") are such graphs too: ABPN ends like an
anchored student.

An anchored student (`ModelConfig.anchor`) ends in tail -> Add(tail, anchor) -> depth-to-space:
the anchor's Concatenates copy the input's [0, 1] grid (no quantizer), the tail output is a
residual with a learned range like a hidden activation, and the anchor Add's output is the one
fixed to [0, 1]; that Add sums like the runtime's ADD (`keras_sr.quant.integer_add.RuntimeAdd`).

With `QATConfig.graph == "multibranch"` (an ablation) it wraps the training form instead: branch
kernels fake-quantized per channel, BN float, each block's ReLU output quantized; stem, Add, tail
and depth-to-space as in the fused graph (`keras_sr.quant.fold.fuse_after_qat` folds it after QAT).
`qat_checkpoint_model` builds the graph a Stage-3 checkpoint holds.
"""
import contextlib

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
# QuantizeLayer is not exported by tfmot's public API; the project pins tfmot 0.8.1.
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer

from keras_sr.configs import KERNEL_CLIP_METHODS, QATConfig
from keras_sr.models import MobileOneConv2D, build_student
from keras_sr.models.depth_to_space import DepthToSpace
from keras_sr.quant import quantize_configs as configs
from keras_sr.quant import quantizers as qz
from keras_sr.quant.integer_add import RuntimeAdd
from keras_sr.quant.integer_conv import RUNTIME_CONVS

_tfq = tfmot.quantization.keras
_transforms = _tfq.graph_transformations.transforms

# Model input and output are RGB in [0, 1]; as 8-bit grids (scale 1/255, zero point 0) the uint8
# tensors of the exported model hold raw pixel values (tfmot_qat.md section 14).
IO_RANGE = (0.0, 1.0)


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
    # The fused graph has no BN or separate activation, and its only concats (the anchor's) copy
    # one tensor, so the pinned input is the only rewrite the default 8-bit transforms would have
    # done that the graph needs.
    def apply(self, model, layer_quantize_map):
        return _tfq.graph_transformations.model_transformer.ModelTransformer(
            model, [_PinnedInputQuantize()], set(layer_quantize_map),
            layer_quantize_map).transform()


class _Scheme(_tfq.QuantizeScheme):
    def get_layout_transformer(self):
        return _LayoutTransform()

    def get_quantize_registry(self):
        return _tfq.default_8bit.Default8BitQuantizeRegistry()


def _output_layer(model):
    """The layer whose output is the model's, moved by depth-to-space only: the tail conv, or the
    anchor Add of an anchored student."""
    (name,) = model.output_names
    layer = model.get_layer(name)
    while isinstance(layer, DepthToSpace):
        layer = layer.inbound_nodes[0].inbound_layers
    return layer


def _quantize_config(layer, config, output_layer):
    # The model output's range is pinned to [0, 1] (the clip); every other range is learned.
    output_range = IO_RANGE if layer is output_layer else None
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        kind = (configs.DepthwiseQuantizeConfig if isinstance(layer, keras.layers.DepthwiseConv2D)
                else configs.ConvQuantizeConfig)
        return kind(
            per_axis=config.per_channel, ema_decay=config.ema_decay,
            percentile=config.range_percentile, output_range=output_range,
            bias_rounding=config.bias_rounding, exact_requantization=config.exact_requantization)
    if isinstance(layer, keras.layers.Add):
        return configs.AddQuantizeConfig(config.ema_decay, config.range_percentile, output_range)
    if isinstance(layer, DepthToSpace):
        return configs.NoOpQuantizeConfig()
    if isinstance(layer, keras.layers.Concatenate) and len(
            {id(p) for p in tf.nest.flatten(layer.inbound_nodes[0].inbound_layers)}) == 1:
        # The anchor: copies of one quantized tensor need no grid of their own.
        return configs.NoOpQuantizeConfig()
    if isinstance(layer, MobileOneConv2D) and config.graph == "multibranch":
        return configs.MobileOneQuantizeConfig(config.per_channel, config.ema_decay,
                                               config.range_percentile)
    raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) is not part of the fused "
                     "deploy graph (Conv2D or DepthwiseConv2D with fused ReLU or linear output, "
                     "Add, DepthToSpace, Concatenate of copies of one tensor); "
                     "fuse the model with keras_sr.models.reparameterize first (or set "
                     "QATConfig.graph='multibranch' for QAT on the training form)")


def _annotate(fused_model, config):
    output_layer = _output_layer(fused_model)

    def clone(layer):
        kind = layer.__class__
        if config.exact_requantization:
            # Convs that sum, and an output Add that rounds, like the runtime (`integer_conv`,
            # `integer_add`): what the uint8 output holds depends on both.
            kind = RUNTIME_CONVS.get(kind, kind)
            if layer is output_layer and kind is keras.layers.Add:
                kind = RuntimeAdd
        copy = kind.from_config(layer.get_config())
        return _tfq.quantize_annotate_layer(copy, _quantize_config(layer, config, output_layer))

    annotated = keras.models.clone_model(fused_model, clone_function=clone)
    annotated.set_weights(fused_model.get_weights())
    return annotated


def _scope():
    # tfmot's scope already knows QuantizeLayer and its wrappers; ours adds the project's classes.
    return _tfq.quantize_scope(configs.custom_objects())


def wrappers(q_model):
    """The QuantizeWrappers of the model, in graph order."""
    return [layer for layer in q_model.layers if isinstance(layer, _tfq.QuantizeWrapper)]


def conv_wrappers(q_model):
    """The QuantizeWrappers of the model's convolutions, in graph order."""
    return [w for w in wrappers(q_model)
            if isinstance(w.quantize_config, configs.ConvQuantizeConfig)]


def latent_conv_weights(wrapper):
    """The (kernel, bias) variables a conv QuantizeWrapper trains (before fake-quant)."""
    by_rank = {len(v.shape): v for v in wrapper.trainable_weights}
    return by_rank[4], by_rank[1]


def _producers(layer):
    return tf.nest.flatten(layer.inbound_nodes[0].inbound_layers)


def _output_vars(layer):
    """Range variables of the quantized tensor `layer` outputs."""
    if isinstance(layer, quantize_layer.QuantizeLayer):
        return layer.quantizer.built_vars[0]
    if isinstance(layer, _tfq.QuantizeWrapper) and hasattr(layer.quantize_config, "output_vars"):
        return layer.quantize_config.output_vars()
    if isinstance(layer, _tfq.QuantizeWrapper) and isinstance(layer.layer,
                                                              keras.layers.Concatenate):
        return _output_vars(_producers(layer)[0])  # copies of one tensor, on its grid
    raise ValueError(f"layer {layer.name!r} feeds a conv or Add but has no quantized output")


def _link_runtime_rounding(q_model):
    for wrapper in conv_wrappers(q_model):
        producers = _producers(wrapper)
        if len(producers) != 1:
            raise ValueError(f"{wrapper.name} has {len(producers)} inputs, expected 1")
        input_vars = _output_vars(producers[0])
        wrapper.quantize_config.link(input_vars)
        if isinstance(wrapper.layer, _RUNTIME_CONV_TYPES):
            wrapper.layer.link(input_vars, wrapper.quantize_config.kernel_quantizer.built_vars[0])
    for wrapper in _runtime_adds(q_model):
        wrapper.layer.link([_output_vars(p) for p in _producers(wrapper)],
                           wrapper.quantize_config.output_vars())


_RUNTIME_CONV_TYPES = tuple(RUNTIME_CONVS.values())


def _runtime_adds(q_model):
    return [w for w in wrappers(q_model) if isinstance(w.layer, RuntimeAdd)]


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

    Every freeze flag starts False, which is phase A of the curriculum.

    Args:
        fused_model: the deploy-form student or baseline (`build_student(reparameterized=True)`
            or `reparameterize(model)`): Conv2D / DepthwiseConv2D with fused ReLU, Add, a linear
            tail Conv2D and DepthToSpace; input float RGB in [0, 1]. It is not modified. With
            `config.graph == "multibranch"`: the training-form student instead.
        config: `QATConfig`; its kernel clip is applied to the new model's kernels.

    Returns:
        The QAT model: (B, H, W, 3) in [0, 1] -> (B, 3H, 3W, 3) on the 1/255 grid of [0, 1].
        Activation ranges start at tfmot's [-6, 6]: run `calibrate` before training.
    """
    config = config or QATConfig()
    with _scope():
        q_model = _tfq.quantize_apply(_annotate(fused_model, config), scheme=_Scheme())
    _link_runtime_rounding(q_model)
    if config.kernel_clip != "none":
        for wrapper in conv_wrappers(q_model):
            kernel, _ = latent_conv_weights(wrapper)
            value = kernel.numpy()
            if isinstance(wrapper.quantize_config, configs.DepthwiseQuantizeConfig):
                value = value.reshape(qz.depthwise_channels_last(value.shape))  # channels last
            kernel.assign(clip_kernel_outliers(value, config.kernel_clip,
                                               config.kernel_clip_value).reshape(kernel.shape))
    return q_model


@contextlib.contextmanager
def converter_graph(model):
    """Context in which graphs traced from `model` hold plain FakeQuant ops on the conv outputs.

    The QAT model rounds its conv outputs (and an anchor Add's sum) like the int8 runtime
    (`QATConfig.exact_requantization`); the TFLite converter only folds plain Add and FakeQuant
    ops, so export traces the model inside this context.
    The converted model computes what the rounding emulates. A model without conv quantizers (an
    FP32 model) traces unchanged.
    """
    rounding = [w.quantize_config.output_tensor_quantizer() for w in conv_wrappers(model)]
    rounding += [w.layer for w in _runtime_adds(model)]
    rounding += [w.layer for w in conv_wrappers(model) if isinstance(w.layer, _RUNTIME_CONV_TYPES)]
    for item in rounding:
        item.runtime_rounding = False
    try:
        yield model
    finally:
        for item in rounding:
            item.runtime_rounding = True


def qat_checkpoint_model(model_config, qat_config):
    """The untrained QAT model whose variables a Stage-3 checkpoint holds.

    Args:
        model_config: the `ModelConfig` of the run.
        qat_config: its `QATConfig`: the fused graph, or the training form for "multibranch".
    """
    student = build_student(model_config, reparameterized=qat_config.graph != "multibranch")
    return build_qat_model(student, qat_config)
