"""Fake-quant quantizers for QAT of the fused student (tfmot 0.8.1, int8 TFLite semantics).

tfmot has no way to freeze a range and does not model the converter's int32 bias rounding, so the
QAT graph uses these four quantizers instead of tfmot's defaults:

- `ActivationQuantizer`: asymmetric per-tensor uint8-style range, an exponential moving average of
  the batch min/max while live. Its decay is a variable (calibration sets it per batch for an exact
  mean) and a boolean `frozen` variable, read with `tf.cond`, stops the updates without a retrace.
- `WeightQuantizer`: symmetric, narrow-range ([-127, 127], zero point 0) per-output-channel weights,
  the TFLite int8 weight spec; the range follows the current weights until its `frozen` variable is
  set.
- `BiasQuantizer`: rounds the bias to the grid the converter stores it on, int32 at scale
  s_in * s_w[c] (input scale times the channel's weight scale), with a straight-through gradient.
- `PinnedRangeQuantizer`: a fixed range (model input and the tail output, where [0, 1] is the clip).

The flags and decays are weights of the quantized layers, so checkpoints, `get_weights` and
SavedModels carry them. Every quantizer keeps the variable dicts it built in `built_vars`, which is
how `keras_sr.quant.qat` finds them (per model, never through globals).

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


class _Recording:
    """Mixin: keeps the variable dict of every tensor the quantizer was built for."""

    def _record(self, variables):
        if not hasattr(self, "built_vars"):
            self.built_vars = []
        self.built_vars.append(variables)
        return variables


@keras.utils.register_keras_serializable(package="keras_sr")
class ActivationQuantizer(_Recording, _tfmot_quantizers.MovingAverageQuantizer):
    """Asymmetric per-tensor 8-bit activation quantizer with a freezable moving-average range.

    With `training=False` it fake-quantizes with the stored range. With `training=True` it first
    moves the range towards the batch min/max (`r <- decay * r + (1 - decay) * batch`, 0 always
    inside), unless its `frozen` variable is set.

    Args:
        ema_decay: initial value of the decay variable (tfmot's fixed default is 0.999).
    """

    group = "activation"

    def __init__(self, ema_decay=0.999):
        super().__init__(num_bits=NUM_BITS, per_axis=False, symmetric=False, narrow_range=False)
        self.ema_decay = float(ema_decay)

    def build(self, tensor_shape, name, layer):
        variables = super().build(tensor_shape, name, layer)
        variables["frozen"] = _add_flag(layer, name)
        variables["ema_decay"] = layer.add_weight(
            name + "_ema_decay", shape=(), initializer=keras.initializers.Constant(self.ema_decay),
            trainable=False)
        return self._record(variables)

    def __call__(self, inputs, training, weights, **kwargs):
        def stored():
            return _fake_quant(inputs, weights["min_var"], weights["max_var"], narrow_range=False)

        if not training:
            return stored()

        def observed():
            # TFLite needs 0 inside every range.
            batch_min = tf.minimum(tf.reduce_min(inputs), 0.0)
            batch_max = tf.maximum(tf.reduce_max(inputs), 0.0)
            rate = 1.0 - weights["ema_decay"]
            new_min = weights["min_var"].assign_sub((weights["min_var"] - batch_min) * rate)
            new_max = weights["max_var"].assign_sub((weights["max_var"] - batch_max) * rate)
            return tf.quantization.fake_quant_with_min_max_vars(
                inputs, new_min, new_max, num_bits=NUM_BITS, narrow_range=False)

        return tf.cond(weights["frozen"], stored, observed)

    def get_config(self):
        return {"ema_decay": self.ema_decay}


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


@keras.utils.register_keras_serializable(package="keras_sr")
class PinnedRangeQuantizer(_Recording, _tfmot_quantizers.Quantizer):
    """8-bit asymmetric quantizer with a constant range, e.g. [0, 1] (scale 1/255, zero point 0).

    On the model input it makes the uint8 input tensor hold raw pixels; on the tail output it is the
    clip to [0, 1] and makes the uint8 output hold raw pixels (tfmot_qat.md section 4).

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
        return _fake_quant(inputs, weights["min_var"], weights["max_var"], narrow_range=False)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


def activation_scale(variables):
    """Scale of an 8-bit asymmetric grid over [min_var, max_var] (the converter's formula)."""
    return (variables["max_var"] - variables["min_var"]) / _ACTIVATION_STEPS


def weight_scale(variables):
    """Scale(s) of the narrow-range symmetric weight grid: max(|min|, |max|) / 127."""
    return tf.maximum(-variables["min_var"], variables["max_var"]) / (_WEIGHT_STEPS / 2)


@keras.utils.register_keras_serializable(package="keras_sr")
class BiasQuantizer(_tfmot_quantizers.Quantizer):
    """Rounds a conv bias to the converter's int32 grid, scale s_in * s_w[c], straight-through.

    The converter stores each bias as round(b / (s_in * s_w[c])) in int32; float QAT without this
    rounding was the whole per-layer Keras-vs-TFLite mismatch (tfmot_qat.md section 5.6). The scales
    depend on two other quantizers' ranges, wired by `link` after `quantize_apply` (the quantizer of
    the tensor feeding the conv, and the conv's kernel quantizer). Unlinked it passes the bias
    through, which only happens while `quantize_apply` builds the model.
    """

    def __init__(self):
        self._input_vars = None
        self._kernel_vars = None

    def link(self, input_vars, kernel_vars):
        """Sets the range variables (dicts with min_var, max_var) of the input and of the kernel."""
        self._input_vars = input_vars
        self._kernel_vars = kernel_vars

    @property
    def linked(self):
        return self._input_vars is not None

    def build(self, tensor_shape, name, layer):
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        if not self.linked:
            return inputs
        scale = activation_scale(self._input_vars) * weight_scale(self._kernel_vars)
        safe = tf.where(scale > 0, scale, tf.ones_like(scale))
        rounded = tf.where(scale > 0, tf.round(inputs / safe) * safe, inputs)
        return inputs + tf.stop_gradient(rounded - inputs)

    def get_config(self):
        return {}


def custom_objects():
    """The quantizers by registered name, for `quantize_scope`."""
    classes = (ActivationQuantizer, WeightQuantizer, PinnedRangeQuantizer, BiasQuantizer)
    return {keras.utils.get_registered_name(c): c for c in classes}
