"""The anchor Add of the QAT model, rounding its sum exactly like LiteRT's XNNPACK int8 ADD.

The converter maps a quantized Add to one int8 ADD. XNNPACK does not compute it in float: with
r_i = float32(s_i / s_out) (input and output scales), shift = 20 - floor(log2(max_i r_i)) and
integer multipliers m_i = round_half_even(r_i * 2^shift), it adds

    acc = (q_a - z_a) * m_a + (q_b - z_b) * m_b + 2^(shift - 1)

in int32 and outputs q = clamp((acc >> shift) + z_out) (an arithmetic shift: it floors, so halves
round up). Fake-quant of the float sum agrees except where the sum lies within about 1e-4 of a
step of a half-way point, where the 22-bit multipliers tip the rounding. Measured on every (anchor,
residual) level pair of the anchor Add (anchor on the output grid): none differed for 18 random
residual ranges, but 4-14 % did for residual steps of 0.5, 1.25, 1.5 or 2.5 output steps (or
within 2e-7 of them), one level apart each. This Add is the model output, so nothing downstream
hides a flip. `RuntimeAdd` computes the runtime's integers instead, so the Keras QAT model and
the exported model agree bit for bit whatever range the residual learns.

XNNPACK takes a quantized ADD only for r_i in [2^-10, 2^8) (else LiteRT's builtin kernel, which
rounds otherwise, runs it); the anchor Add's r are 1 (anchor) and the residual range's width.
"""
import tensorflow as tf
import tf_keras as keras

from keras_sr.quant import quantizers as qz

# XNNPACK's fixed-point ADD keeps the largest multiplier in [2^20, 2^21) (before rounding).
_MULTIPLIER_BITS = 20


def _exponent(positive):
    """floor(log2(x)) of a positive float32, read from its bits as XNNPACK does (exact)."""
    return tf.bitwise.right_shift(tf.bitcast(positive, tf.int32), 23) - 127


def requantize_add(inputs, input_vars, output_vars):
    """The sum of two fake-quantized tensors, requantized exactly as XNNPACK's int8 ADD does.

    Args:
        inputs: two float tensors of one shape, each on the 8-bit grid of its range.
        input_vars: their range variables (dicts with min_var, max_var).
        output_vars: the range variables of the sum.

    Returns:
        The sum on the output grid (clamped to it), with the straight-through gradient of
        fake-quant (1 inside the output range, 0 outside).
    """
    s_out, z_out, low, high = qz.activation_grid(output_vars["min_var"], output_vars["max_var"])
    grids = [qz.activation_grid(v["min_var"], v["max_var"]) for v in input_vars]
    ratios = [scale / s_out for scale, _, _, _ in grids]
    shift = _MULTIPLIER_BITS - _exponent(tf.maximum(ratios[0], ratios[1]))
    # Every integer below stays under 2^31, so float64 holds it exactly.
    power = tf.cast(tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.cast(shift, tf.int64)),
                    tf.float64)
    acc = power / 2.0
    for x, ratio, (scale, _, _, _) in zip(inputs, ratios, grids):
        steps = tf.cast(tf.round(x / scale), tf.float64)  # q - z of the input, exact
        acc += steps * tf.round(tf.cast(ratio, tf.float64) * power)
    steps = tf.cast(tf.floor(acc / power), tf.float32)
    steps = tf.clip_by_value(steps, -z_out, 2.0 ** qz.NUM_BITS - 1.0 - z_out)
    clipped = tf.clip_by_value(inputs[0] + inputs[1], low, high)
    return clipped + tf.stop_gradient(steps * s_out - clipped)


@keras.utils.register_keras_serializable(package="keras_sr")
class RuntimeAdd(keras.layers.Add):
    """`keras.layers.Add` of two quantized tensors whose sum rounds like the int8 runtime's ADD.

    The QAT builder puts it in place of the anchor Add and links it (`link`) to the ranges of its
    inputs and its output; unlinked, or with `runtime_rounding` off (the TFLite converter folds
    only plain FakeQuant ops, `keras_sr.quant.converter_graph`), it is a plain Add. Its output
    quantizer (the pinned [0, 1] range) leaves the on-grid sum unchanged.
    """

    runtime_rounding = True
    _ranges = None

    def link(self, input_vars, output_vars):
        """Sets the range variables of the two inputs (a list) and of the output."""
        if len(input_vars) != 2:
            raise ValueError(f"{self.name}: RuntimeAdd adds two tensors, got {len(input_vars)}")
        self._ranges = (list(input_vars), output_vars)

    def _merge_function(self, inputs):
        if self._ranges is None or not self.runtime_rounding:
            return super()._merge_function(inputs)
        return requantize_add(inputs, *self._ranges)
