"""QuantizeConfigs of the fused graphs' layer kinds (Conv2D, DepthwiseConv2D, Add, DepthToSpace,
Concatenate): the student's and the baselines'.

- `ConvQuantizeConfig`: per-channel symmetric int8 kernel, bias rounded to the converter's int32
  grid, and either the activation quantized after the fused ReLU, or (tail) a pinned output range
  that is the [0, 1] clip, or (the tail of an anchored student, whose output is a residual) a
  learned range of the linear output; the output rounds like the runtime once linked
  (`keras_sr.quant.quantizers.requantize`). A separate ReLU layer would make tfmot drop the kernel
  fake-quant; the fused activation is required (tfmot_qat.md section 3).
- `DepthwiseQuantizeConfig`: the same for a DepthwiseConv2D (the "repdw" student), with one weight
  range per channel of the depthwise kernel.
- `AddQuantizeConfig`: the sum is quantized (the TFLite ADD has its own output scale), on a learned
  range (the skip Add) or a pinned one (the anchor Add, where [0, 1] is the clip).
- `NoOpQuantizeConfig`: depth-to-space only moves values; the converter carries the tail's scale
  through it. Likewise the anchor's Concatenate of copies of the input, which stays on the
  input's grid.
- `MobileOneQuantizeConfig`: the `--qat_graph=multibranch` ablation (QAT on the training form): each
  branch kernel of a MobileOneConv2D is fake-quantized per channel, its batch norms stay float,
  and the block's ReLU output is quantized. That graph is never exported: it is fused after QAT
  (`keras_sr.quant.fold.fuse_after_qat`).

Each config owns its quantizer instances, so after `quantize_apply` the range variables of every
tensor are reachable from `wrapper.quantize_config` (see `output_vars`).
"""
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from keras_sr.models import MobileOneConv2D
from keras_sr.quant import quantizers as qz

_QuantizeConfig = tfmot.quantization.keras.QuantizeConfig


@keras.utils.register_keras_serializable(package="keras_sr")
class ConvQuantizeConfig(_QuantizeConfig):
    """Conv2D with bias: int8 weights, int32-rounded bias, quantized (fused-activation) output.

    Args:
        per_axis: per-output-channel weight ranges.
        ema_decay: initial moving-average decay of the output range.
        percentile: batch statistic of the output range (`quantizers.batch_range`).
        output_range: None for a moving-average output range, of a hidden conv (after its fused
            ReLU) or of a linear conv whose output is not the model's (the residual tail of an
            anchored student); or a fixed (min, max) for a linear output conv, whose fake-quant
            is then also the clip.
        bias_rounding: emulate the converter's int32 bias rounding.
        exact_requantization: round the output like the int8 runtime (exact int32 accumulator,
            float32 requantization, round half to even); needs `bias_rounding`.
    """

    # The layer class, its kernel attribute and the kernel's quantizer (`DepthwiseQuantizeConfig`
    # overrides them).
    layer_class = keras.layers.Conv2D
    kernel_attribute = "kernel"
    weight_quantizer_class = qz.WeightQuantizer

    def __init__(self, per_axis=True, ema_decay=0.999, percentile=100.0, output_range=None,
                 bias_rounding=True, exact_requantization=True):
        if exact_requantization and not bias_rounding:
            raise ValueError("exact_requantization needs bias_rounding (the int32 accumulator "
                             "includes the int32 bias)")
        self.per_axis = bool(per_axis)
        self.ema_decay = float(ema_decay)
        self.percentile = float(percentile)
        self.output_range = None if output_range is None else tuple(float(v) for v in output_range)
        self.bias_rounding = bool(bias_rounding)
        self.exact_requantization = bool(exact_requantization)
        self.kernel_quantizer = self.weight_quantizer_class(per_axis=self.per_axis)
        self.bias_quantizer = qz.BiasQuantizer() if self.bias_rounding else None
        if self.output_range is None:
            self.activation_quantizer = qz.ActivationQuantizer(self.ema_decay, self.percentile)
            self.output_quantizer = None
        else:
            self.activation_quantizer = None
            self.output_quantizer = qz.PinnedRangeQuantizer(*self.output_range)

    def _check(self, layer):
        if not isinstance(layer, self.layer_class) or not layer.use_bias:
            raise ValueError(f"{layer.name}: {type(self).__name__} needs a "
                             f"{self.layer_class.__name__} with a bias")
        activation = keras.activations.serialize(layer.activation)
        expected = ("linear",) if self.output_range is not None else ("relu", "linear")
        if activation not in expected:
            raise ValueError(f"{layer.name}: expected activation {' or '.join(expected)!r}, got "
                             f"{activation!r} (a hidden conv needs a fused ReLU; the output conv "
                             "must be linear)")

    def get_weights_and_quantizers(self, layer):
        self._check(layer)
        pairs = [(getattr(layer, self.kernel_attribute), self.kernel_quantizer)]
        if self.bias_quantizer is not None:
            pairs.append((layer.bias, self.bias_quantizer))
        return pairs

    def get_activations_and_quantizers(self, layer):
        if self.activation_quantizer is None:
            return []
        return [(layer.activation, self.activation_quantizer)]

    def set_quantize_weights(self, layer, quantize_weights):
        setattr(layer, self.kernel_attribute, quantize_weights[0])
        if self.bias_quantizer is not None:
            layer.bias = quantize_weights[1]

    def set_quantize_activations(self, layer, quantize_activations):
        if quantize_activations:
            layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return [] if self.output_quantizer is None else [self.output_quantizer]

    def output_vars(self):
        """Range variables (min_var, max_var, ...) of the layer's output tensor."""
        return self.output_tensor_quantizer().built_vars[0]

    def output_tensor_quantizer(self):
        """The quantizer of the layer's output (after the fused activation)."""
        return self.activation_quantizer or self.output_quantizer

    def link(self, input_vars):
        """Wires the quantizers that need the range of the conv's input (after quantize_apply).

        Args:
            input_vars: range variables (min_var, max_var) of the tensor feeding the conv.
        """
        kernel_vars = self.kernel_quantizer.built_vars[0]
        if self.bias_quantizer is not None:
            self.bias_quantizer.link(input_vars, kernel_vars)
        if self.exact_requantization:
            self.output_tensor_quantizer().link(input_vars, kernel_vars)

    def get_config(self):
        return {"per_axis": self.per_axis, "ema_decay": self.ema_decay,
                "percentile": self.percentile,
                "output_range": None if self.output_range is None else list(self.output_range),
                "bias_rounding": self.bias_rounding,
                "exact_requantization": self.exact_requantization}


@keras.utils.register_keras_serializable(package="keras_sr")
class DepthwiseQuantizeConfig(ConvQuantizeConfig):
    """DepthwiseConv2D with bias, quantized like `ConvQuantizeConfig` (same arguments).

    The weight ranges are per output channel of the depthwise kernel (its channel axis, not its
    depth multiplier: `quantizers.DepthwiseWeightQuantizer`), the grid TFLite's int8
    DEPTHWISE_CONV_2D keeps its filter on; the bias and the output round like the runtime, as a
    dense conv's (XNNPACK requantizes both the same way).
    """

    layer_class = keras.layers.DepthwiseConv2D
    kernel_attribute = "depthwise_kernel"
    weight_quantizer_class = qz.DepthwiseWeightQuantizer


@keras.utils.register_keras_serializable(package="keras_sr")
class NoOpQuantizeConfig(_QuantizeConfig):
    """Leaves a weightless layer (depth-to-space) without any fake-quant."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


@keras.utils.register_keras_serializable(package="keras_sr")
class AddQuantizeConfig(NoOpQuantizeConfig):
    """Add: only the sum is quantized, with a freezable moving-average range or a fixed one.

    Args:
        ema_decay: initial moving-average decay of the output range.
        percentile: batch statistic of the output range (`quantizers.batch_range`).
        output_range: None (a learned range), or a fixed (min, max): the anchor Add, whose sum is
            the model output and whose fake-quant is then also the [0, 1] clip.
    """

    def __init__(self, ema_decay=0.999, percentile=100.0, output_range=None):
        self.ema_decay = float(ema_decay)
        self.percentile = float(percentile)
        self.output_range = None if output_range is None else tuple(float(v) for v in output_range)
        if self.output_range is None:
            self.output_quantizer = qz.ActivationQuantizer(self.ema_decay, self.percentile)
        else:
            self.output_quantizer = qz.PinnedRangeQuantizer(*self.output_range)

    def get_output_quantizers(self, layer):
        return [self.output_quantizer]

    def output_vars(self):
        return self.output_quantizer.built_vars[0]

    def get_config(self):
        return {"ema_decay": self.ema_decay, "percentile": self.percentile,
                "output_range": None if self.output_range is None else list(self.output_range)}


@keras.utils.register_keras_serializable(package="keras_sr")
class MobileOneQuantizeConfig(_QuantizeConfig):
    """Training-form MobileOneConv2D (dense, ReLU): int8 branch kernels, float BN, int8 output.

    The k x k kernel (all k branches, one output channel per branch channel) and the 1x1 kernel get
    one symmetric narrow-range weight quantizer each (per output channel with `per_axis`); the
    batch norms and the identity branch stay float, and the block's ReLU output is quantized with
    a freezable moving-average range, as after a fused conv.

    Args:
        per_axis, ema_decay, percentile: as for `ConvQuantizeConfig`.
    """

    def __init__(self, per_axis=True, ema_decay=0.999, percentile=100.0):
        self.per_axis = bool(per_axis)
        self.ema_decay = float(ema_decay)
        self.percentile = float(percentile)
        self.kernel_quantizer = qz.WeightQuantizer(per_axis=self.per_axis)
        self.scale_kernel_quantizer = qz.WeightQuantizer(per_axis=self.per_axis)
        self.activation_quantizer = qz.ActivationQuantizer(self.ema_decay, self.percentile)

    def get_weights_and_quantizers(self, layer):
        if (not isinstance(layer, MobileOneConv2D) or layer.depthwise
                or keras.activations.serialize(layer.activation) != "relu"):
            raise ValueError(f"{layer.name}: MobileOneQuantizeConfig needs a dense "
                             "MobileOneConv2D with a ReLU")
        # The wrapper builds the block, whose convs are otherwise only built by their first call;
        # their kernels must exist now to get quantizers.
        convs = [c for c in (layer.conv_kxk, layer.conv_scale) if c is not None]
        for conv in convs:
            if not conv.built:
                conv.build(layer._build_input_shape)  # pylint: disable=protected-access
        quantizers = (self.kernel_quantizer, self.scale_kernel_quantizer)
        return [(conv.kernel, quantizer) for conv, quantizer in zip(convs, quantizers)]

    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, self.activation_quantizer)]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.conv_kxk.kernel = quantize_weights[0]
        if layer.conv_scale is not None:
            layer.conv_scale.kernel = quantize_weights[1]

    def set_quantize_activations(self, layer, quantize_activations):
        layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return []

    def output_vars(self):
        return self.activation_quantizer.built_vars[0]

    def get_config(self):
        return {"per_axis": self.per_axis, "ema_decay": self.ema_decay,
                "percentile": self.percentile}


def custom_objects():
    """Configs and quantizers by registered name, for `quantize_scope`."""
    classes = (ConvQuantizeConfig, DepthwiseQuantizeConfig, AddQuantizeConfig, NoOpQuantizeConfig,
               MobileOneQuantizeConfig)
    return {**qz.custom_objects(), **{keras.utils.get_registered_name(c): c for c in classes}}
