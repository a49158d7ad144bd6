"""The QAT model's convolutions, summing their products exactly like LiteRT's int8 kernels.

The runtime computes a conv's accumulator exactly in int32, acc = sum (q_x - z_x) * q_w + q_b, and
requantizes float32(acc); the QAT graph recovers acc from its conv output y as round(y / (s_in *
s_w[c])) (`keras_sr.quant.quantizers.requantize`). A float32 conv of the fake-quant input and
kernel carries rounding noise of about 2^-24 of the sum of its absolute products, which reaches
half a step once the accumulator is a few million steps large: FSRCNN's tail (3x3x56, 504
products; accumulators up to 2.2e6 steps, measured) put 2 of 248,832 outputs one level off the
runtime's. `RuntimeConv2D` and `RuntimeDepthwiseConv2D` convolve the integer levels instead
(x / s_in and w / s_w, rounded, with a straight-through gradient, so training sees the gradients
of the fake-quant conv): products and partial sums of integers are exact in float32 below 2^24,
which holds for every sum while kh * kw * cin * 255 * 127 < 2^24 (kh * kw * cin <= 518, every conv
of the project's networks). The int32 bias is added in levels and the sum scaled by s_in * s_w[c]
once, so y is acc * s_in * s_w[c] within one float32 rounding and the recovery is exact for
|acc| < 2^22.

The QAT builder puts them in place of every Conv2D and DepthwiseConv2D when
`QATConfig.exact_requantization` is on, and links them (`link`) to the ranges of the conv's input
and kernel; unlinked, or with `runtime_rounding` off (`keras_sr.quant.converter_graph`: the
converter folds only the plain conv), they are the plain Keras layers. Their variables are the
plain layers', so checkpoints do not depend on them.
"""
import tensorflow as tf
import tf_keras as keras
from tf_keras import backend

from keras_sr.quant import quantizers as qz


def _levels(values, scale):
    """values / scale rounded to integers, with the identity gradient of values / scale.

    Exact: the rounding correction round(v) - v is exact in float32 for v within half a step of
    its integer (Sterbenz), so v + correction is that integer.
    """
    ratio = values / scale
    return ratio + tf.stop_gradient(tf.round(ratio) - ratio)


class _RuntimeConv:
    """Mixin of the two layers: the integer conv once linked (see the module docstring)."""

    runtime_rounding = True
    # A class attribute, so that Keras does not track the linked variables as this layer's.
    _ranges = None

    def link(self, input_vars, kernel_vars):
        """Sets the range variables (dicts with min_var, max_var) of the conv input and kernel."""
        self._ranges = (input_vars, kernel_vars)

    def _runtime(self, inputs, kernel, convolve, kernel_scale_shape):
        """(acc + bias levels) * s_in * s_w[c] of channel c, by `convolve` of integer levels.

        Args:
            inputs: the fake-quant input, float (B, H, W, cin) on its 8-bit grid.
            kernel: the fake-quant kernel.
            convolve: the layer's conv op, (inputs, kernel) -> (B, H, W, channels).
            kernel_scale_shape: how the (channels,) weight scales broadcast over the kernel.
        """
        input_vars, kernel_vars = self._ranges
        s_in = tf.stop_gradient(qz.activation_scale(input_vars))
        s_w = tf.stop_gradient(qz.weight_scale(kernel_vars))
        # A channel whose kernel is all zeros has no weight scale; its output is the bias alone.
        valid = s_w > 0
        safe_w = tf.where(valid, s_w, tf.ones_like(s_w))
        kernel_scale = tf.reshape(safe_w, kernel_scale_shape) if s_w.shape.rank else safe_w
        acc = convolve(_levels(inputs, s_in), _levels(kernel, kernel_scale))
        acc_scale = s_in * safe_w
        exact = (acc + _levels(self.bias, acc_scale)) * acc_scale
        return tf.where(valid, exact, acc + self.bias)

    @property
    def _rounds_like_runtime(self):
        return self._ranges is not None and self.runtime_rounding and self.use_bias


@keras.utils.register_keras_serializable(package="keras_sr")
class RuntimeConv2D(_RuntimeConv, keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose linked QAT form sums like the int8 runtime (module docstring)."""

    def call(self, inputs):
        if not self._rounds_like_runtime:
            return super().call(inputs)
        outputs = self._runtime(inputs, self.kernel, self.convolution_op, (-1,))
        return outputs if self.activation is None else self.activation(outputs)


@keras.utils.register_keras_serializable(package="keras_sr")
class RuntimeDepthwiseConv2D(_RuntimeConv, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` whose linked QAT form sums like the int8 runtime."""

    def call(self, inputs):
        if not self._rounds_like_runtime:
            return super().call(inputs)

        def convolve(x, kernel):
            return backend.depthwise_conv2d(x, kernel, strides=self.strides, padding=self.padding,
                                            dilation_rate=self.dilation_rate,
                                            data_format=self.data_format)

        # Output channel c * M + m of a (kh, kw, C, M) kernel: its scales reshape to (C, M).
        outputs = self._runtime(inputs, self.depthwise_kernel, convolve,
                                (-1, self.depth_multiplier))
        return outputs if self.activation is None else self.activation(outputs)


# The plain layer -> its runtime form.
RUNTIME_CONVS = {keras.layers.Conv2D: RuntimeConv2D,
                 keras.layers.DepthwiseConv2D: RuntimeDepthwiseConv2D}
