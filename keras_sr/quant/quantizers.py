"""Fake-quant quantizers for QAT of the fused student (tfmot 0.8.1, int8 TFLite semantics).

tfmot has no way to freeze a range and models neither the converter's int32 bias rounding nor the
integer requantization of the runtime, so the QAT graph uses these quantizers instead of tfmot's
defaults:

- `ActivationQuantizer`: asymmetric per-tensor uint8-style range, an exponential moving average of
  the batch min/max while live. Its decay is a variable (calibration sets it per batch for an exact
  mean) and a boolean `frozen` variable, read with `tf.cond`, stops the updates without a retrace.
  On a conv output it can be linked (`link`) to the conv's input and kernel ranges; it then
  reproduces the int8 runtime's requantization bit for bit (`requantize`).
- `WeightQuantizer`: symmetric, narrow-range ([-127, 127], zero point 0) per-output-channel weights,
  the TFLite int8 weight spec; the range follows the current weights until its `frozen` variable is
  set. `DepthwiseWeightQuantizer`: the same per output channel of a depthwise kernel.
- `BiasQuantizer`: rounds the bias to the grid the converter stores it on, int32 at scale
  s_in * s_w[c] (input scale times the channel's weight scale), with a straight-through gradient.
- `PinnedRangeQuantizer`: a fixed range (model input and the tail output, where [0, 1] is the clip);
  linkable like `ActivationQuantizer` on the tail.

The flags and decays are weights of the quantized layers, so checkpoints, `get_weights` and
SavedModels carry them. Every quantizer keeps the variable dicts it built in `built_vars`, which is
how `keras_sr.quant.build` and `keras_sr.quant.curriculum` find them (per model, never through globals).

Why the requantization matters: plain fake-quant computes a conv in float32 and rounds
(x - min) / scale, while LiteRT (XNNPACK) accumulates int8 x int8 products exactly in int32 and
rounds float32(acc) * (s_in * s_w[c] / s_out) to nearest-even. The two disagree on ~1e-5 of the
values per layer (where a value lies within float32 noise of a rounding boundary). In the
fused MobileOne student such a one-step flip in a wide-range hidden tensor (8-bit steps of ~0.3)
survives along the identity path of every later block and reaches the output: on Set14, 0.3-3 % of
the output values were more than 1 pixel level apart, by up to 8-25 levels. With the accumulator
recovered and requantized the runtime's way, every conv output matches XNNPACK exactly.

Reference: tfmot_qat.md sections 5.3-5.6 (calibration, freezing, weight clipping, bias rounding).
"""
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

_tfmot_quantizers = tfmot.quantization.keras.quantizers

NUM_BITS = 8
# Steps of an 8-bit grid: 255 for activations (uint8 / int8 with a zero point), 254 for narrow-range
# symmetric weights (int8 in [-127, 127]).
_ACTIVATION_STEPS = 2 ** NUM_BITS - 1
_WEIGHT_STEPS = 2 ** NUM_BITS - 2


def _fake_quant(inputs, min_var, max_var, narrow_range):
    if len(min_var.shape) == 1:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            inputs, min_var, max_var, num_bits=NUM_BITS, narrow_range=narrow_range)
    return tf.quantization.fake_quant_with_min_max_vars(
        inputs, min_var, max_var, num_bits=NUM_BITS, narrow_range=narrow_range)


def _add_flag(layer, name):
    return layer.add_weight(name + "_frozen", shape=(), dtype=tf.bool, initializer="zeros",
                            trainable=False)


def _range_scale(min_var, max_var):
    # The converter computes a FakeQuant range's scale in float64 and stores it as float32; the
    # runtime requantizes with that. In float32, max - min can round where float64 is exact (a
    # range across 0), leaving a scale one bit off that tipped 1 of 248,832 ABPN outputs.
    width = tf.cast(max_var, tf.float64) - tf.cast(min_var, tf.float64)
    return tf.cast(width / _ACTIVATION_STEPS, tf.float32)


def activation_scale(variables):
    """Scale of an 8-bit asymmetric grid over [min_var, max_var] (the converter's formula)."""
    return _range_scale(variables["min_var"], variables["max_var"])


def activation_grid(min_var, max_var):
    """(scale, zero point, lowest value, highest value) of the 8-bit asymmetric grid of a range.

    The zero point is the uint8 level of 0 (the grid is shifted so that 0 lies on it).
    """
    scale = _range_scale(min_var, max_var)
    zero_point = tf.clip_by_value(tf.round(-min_var / scale), 0.0, _ACTIVATION_STEPS)
    return scale, zero_point, -zero_point * scale, (_ACTIVATION_STEPS - zero_point) * scale


def weight_scale(variables):
    """Scale(s) of the narrow-range symmetric weight grid: max(|min|, |max|) / 127."""
    return tf.maximum(-variables["min_var"], variables["max_var"]) / (_WEIGHT_STEPS / 2)


def accumulator_scale(input_vars, kernel_vars):
    """s_in * s_w[c]: the real value of one int32 accumulator step of a conv (per output channel).

    The product is formed in float32 like the runtime does, so it is bit-identical to the scale the
    converter gives the int32 bias and XNNPACK uses for requantization.
    """
    return activation_scale(input_vars) * weight_scale(kernel_vars)


def requantize(inputs, min_var, max_var, acc_scale):
    """Fake-quant of a conv output exactly as LiteRT's XNNPACK kernels requantize it.

    The conv output `inputs` (fake-quant input and kernel, int32-rounded bias, after a fused ReLU)
    is acc * acc_scale up to float32 noise far below half a step, so acc = round(inputs /
    acc_scale) is the runtime's exact int32 accumulator. The runtime then computes
    q = round_half_even(float32(acc) * m) with m = acc_scale / s_out in float32, clamps q to the
    8-bit grid of [min_var, max_var] and the result is q * s_out. The gradient is the
    straight-through estimator of fake-quant (1 inside the range, 0 outside).

    Args:
        inputs: float conv output, channels last.
        min_var, max_var: the output range (scalars; 0 must lie inside).
        acc_scale: `accumulator_scale`, shape () or (channels,).

    Returns:
        The requantized tensor, same shape, on the grid of the range.
    """
    s_out, zero_point, low, high = activation_grid(min_var, max_var)
    valid = acc_scale > 0
    safe = tf.where(valid, acc_scale, tf.ones_like(acc_scale))
    # A channel whose kernel is all zeros has no accumulator scale; its output is the bias alone.
    acc = tf.where(valid, tf.round(inputs / safe), inputs / s_out)
    multiplier = tf.where(valid, safe / s_out, tf.ones_like(safe))
    steps = tf.clip_by_value(tf.round(acc * multiplier), -zero_point,
                             _ACTIVATION_STEPS - zero_point)
    clipped = tf.clip_by_value(inputs, low, high)
    return clipped + tf.stop_gradient(steps * s_out - clipped)


class _Linked:
    """Mixin of the quantizers that need a conv's input and kernel ranges, wired by `link` after
    `quantize_apply` builds the model (the quantizer of the tensor feeding the conv, and the
    conv's kernel quantizer)."""

    _input_vars = None
    _kernel_vars = None

    def link(self, input_vars, kernel_vars):
        """Sets the range variables (dicts with min_var, max_var) of the conv input and kernel."""
        self._input_vars = input_vars
        self._kernel_vars = kernel_vars

    @property
    def linked(self):
        return self._input_vars is not None

    def accumulator_scale(self):
        return accumulator_scale(self._input_vars, self._kernel_vars)


class _Requantizing(_Linked):
    """Mixin of output quantizers: runtime requantization once linked, plain fake-quant before.

    `runtime_rounding` (read when a graph is traced) switches the requantization off: the
    TFLite converter only recognises plain FakeQuant ops (`keras_sr.quant.converter_graph`).
    """

    runtime_rounding = True

    def _quantize(self, inputs, min_var, max_var):
        if self.linked and self.runtime_rounding:
            return requantize(inputs, min_var, max_var, self.accumulator_scale())
        return _fake_quant(inputs, min_var, max_var, narrow_range=False)


class _Recording:
    """Mixin: keeps the variable dict of every tensor the quantizer was built for."""

    def _record(self, variables):
        if not hasattr(self, "built_vars"):
            self.built_vars = []
        self.built_vars.append(variables)
        return variables


def batch_range(inputs, percentile=100.0):
    """(low, high) of a batch for an activation range: 0 is always inside.

    Args:
        inputs: any float tensor.
        percentile: high is the value at this percentile of all elements (100: the maximum) and
            low the one at 100 - percentile (only computed when the batch has negative values).
            Fused MobileOne features are sparse and heavy-tailed (the maximum of a batch is ~2x its
            99.99th percentile), so a percentile below 100 gives much finer steps for the price of
            clipping a few peaks.
    """
    flat = tf.reshape(inputs, [-1])
    if percentile >= 100.0:
        return tf.minimum(tf.reduce_min(flat), 0.0), tf.maximum(tf.reduce_max(flat), 0.0)
    # The k-th largest value, k = ceil((1 - percentile / 100) * n) >= 1.
    fraction = 1.0 - percentile / 100.0
    k = tf.maximum(1, tf.cast(tf.math.ceil(fraction * tf.cast(tf.size(flat), tf.float32)),
                              tf.int32))

    def kth_largest(values):
        return tf.math.top_k(values, k, sorted=True).values[-1]

    high = tf.maximum(kth_largest(flat), 0.0)
    low = tf.cond(tf.reduce_min(flat) < 0.0, lambda: tf.minimum(-kth_largest(-flat), 0.0),
                  lambda: tf.constant(0.0))
    return low, high


@keras.utils.register_keras_serializable(package="keras_sr")
class ActivationQuantizer(_Recording, _Requantizing, _tfmot_quantizers.MovingAverageQuantizer):
    """Asymmetric per-tensor 8-bit activation quantizer with a freezable moving-average range.

    With `training=False` it fake-quantizes with the stored range. With `training=True` it first
    moves the range towards the batch range (`r <- decay * r + (1 - decay) * batch`, see
    `batch_range`), unless its `frozen` variable is set. Linked to a conv (`link`), it rounds like
    the runtime (`requantize`); otherwise (the Add output) it is plain fake-quant.

    Args:
        ema_decay: initial value of the decay variable (tfmot's fixed default is 0.999).
        percentile: the batch statistic of the range (`batch_range`; 100: min/max).
    """

    group = "activation"

    def __init__(self, ema_decay=0.999, percentile=100.0):
        super().__init__(num_bits=NUM_BITS, per_axis=False, symmetric=False, narrow_range=False)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"range percentile must be in (50, 100], got {percentile}")
        self.ema_decay = float(ema_decay)
        self.percentile = float(percentile)

    def build(self, tensor_shape, name, layer):
        variables = super().build(tensor_shape, name, layer)
        variables["frozen"] = _add_flag(layer, name)
        variables["ema_decay"] = layer.add_weight(
            name + "_ema_decay", shape=(), initializer=keras.initializers.Constant(self.ema_decay),
            trainable=False)
        return self._record(variables)

    def __call__(self, inputs, training, weights, **kwargs):
        def stored():
            return self._quantize(inputs, weights["min_var"], weights["max_var"])

        if not training:
            return stored()

        def observed():
            batch_min, batch_max = batch_range(inputs, self.percentile)
            rate = 1.0 - weights["ema_decay"]
            new_min = weights["min_var"].assign_sub((weights["min_var"] - batch_min) * rate)
            new_max = weights["max_var"].assign_sub((weights["max_var"] - batch_max) * rate)
            return self._quantize(inputs, new_min, new_max)

        return tf.cond(weights["frozen"], stored, observed)

    def get_config(self):
        return {"ema_decay": self.ema_decay, "percentile": self.percentile}


@keras.utils.register_keras_serializable(package="keras_sr")
class WeightQuantizer(_Recording, _tfmot_quantizers.LastValueQuantizer):
    """Symmetric narrow-range 8-bit weight quantizer (TFLite int8 weights), freezable.

    The range of output channel c is [-m_c, m_c] with m_c = max |w[..., c]| of the current weights
    (scale m_c / 127) while live; once `frozen` is set the stored range is used and the trainer's
    `post_update` keeps the latent weights inside it.

    Args:
        per_axis: one range per output channel (last kernel axis) instead of one per tensor.
    """

    group = "weight"

    def __init__(self, per_axis=True):
        super().__init__(num_bits=NUM_BITS, per_axis=per_axis, symmetric=True, narrow_range=True)

    def build(self, tensor_shape, name, layer):
        variables = super().build(tensor_shape, name, layer)
        variables["frozen"] = _add_flag(layer, name)
        return self._record(variables)

    def __call__(self, inputs, training, weights, **kwargs):
        def stored():
            return _fake_quant(inputs, weights["min_var"], weights["max_var"], narrow_range=True)

        if not training:
            return stored()

        def observed():
            return super(WeightQuantizer, self).__call__(inputs, True, weights)

        return tf.cond(weights["frozen"], stored, observed)

    def get_config(self):
        return {"per_axis": self.per_axis}


def depthwise_channels_last(shape):
    """(kh, kw, 1, C * M): the layout of a depthwise kernel (kh, kw, C, M) with one axis per
    output channel c * M + m last, as TFLite stores it ((1, kh, kw, C * M)); a reshape."""
    kh, kw, channels, multiplier = shape
    return (kh, kw, 1, channels * multiplier)


@keras.utils.register_keras_serializable(package="keras_sr")
class DepthwiseWeightQuantizer(WeightQuantizer):
    """`WeightQuantizer` of a depthwise kernel (kh, kw, C, M): one range per output channel.

    A depthwise kernel's output channels are its last two axes (channel c * M + m), so the
    kernel is fake-quantized in the `depthwise_channels_last` layout and reshaped back. tfmot's
    own depthwise quantizer takes its per-axis ranges along M alone, one range for the whole
    kernel when M = 1 (tensorflow/model-optimization #808).
    """

    def build(self, tensor_shape, name, layer):
        return super().build(depthwise_channels_last(tensor_shape), name, layer)

    def __call__(self, inputs, training, weights, **kwargs):
        flat = tf.reshape(inputs, depthwise_channels_last(inputs.shape))
        return tf.reshape(super().__call__(flat, training, weights, **kwargs), inputs.shape)


@keras.utils.register_keras_serializable(package="keras_sr")
class PinnedRangeQuantizer(_Recording, _Requantizing, _tfmot_quantizers.Quantizer):
    """8-bit asymmetric quantizer with a constant range, e.g. [0, 1] (scale 1/255, zero point 0).

    On the model input it makes the uint8 input tensor hold raw pixels; on the tail output it is the
    clip to [0, 1] and makes the uint8 output hold raw pixels (tfmot_qat.md section 4). There it is
    linked to the tail conv and rounds like the runtime.

    Args:
        min_value, max_value: the range; it must contain 0.
    """

    def __init__(self, min_value=0.0, max_value=1.0):
        if not min_value <= 0.0 < max_value:
            raise ValueError(f"a quantization range must contain 0, got [{min_value}, {max_value}]")
        self.min_value = float(min_value)
        self.max_value = float(max_value)

    def build(self, tensor_shape, name, layer):
        # Variables (never updated) rather than constants, so a bias quantizer downstream reads
        # every producer's range the same way.
        return self._record({
            "min_var": layer.add_weight(name + "_min", shape=(), trainable=False,
                                        initializer=keras.initializers.Constant(self.min_value)),
            "max_var": layer.add_weight(name + "_max", shape=(), trainable=False,
                                        initializer=keras.initializers.Constant(self.max_value)),
        })

    def __call__(self, inputs, training, weights, **kwargs):
        return self._quantize(inputs, weights["min_var"], weights["max_var"])

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


@keras.utils.register_keras_serializable(package="keras_sr")
class BiasQuantizer(_Linked, _tfmot_quantizers.Quantizer):
    """Rounds a conv bias to the converter's int32 grid, scale s_in * s_w[c], straight-through.

    The converter stores each bias as round(b / (s_in * s_w[c])) in int32; float QAT without this
    rounding was the whole per-layer Keras-vs-TFLite mismatch (tfmot_qat.md section 5.6). The scales
    depend on two other quantizers' ranges (`link`). Unlinked it passes the bias through, which
    only happens while `quantize_apply` builds the model.
    """

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        if not self.linked:
            return inputs
        scale = self.accumulator_scale()
        safe = tf.where(scale > 0, scale, tf.ones_like(scale))
        rounded = tf.where(scale > 0, tf.round(inputs / safe) * safe, inputs)
        return inputs + tf.stop_gradient(rounded - inputs)

    def get_config(self):
        return {}


def custom_objects():
    """The quantizers by registered name, for `quantize_scope`."""
    classes = (ActivationQuantizer, WeightQuantizer, DepthwiseWeightQuantizer, PinnedRangeQuantizer,
               BiasQuantizer)
    return {keras.utils.get_registered_name(c): c for c in classes}
