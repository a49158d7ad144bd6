"""Re-parameterizable convolution block (MobileOne / RepVGG) and its fused single-conv form.

At training time a `MobileOneConv2D` is a sum of convolution + batch-norm branches; at inference
every branch is affine, so the sum folds exactly into one convolution with bias (`fused_weights`).
The student builds the fused form from plain Keras layers (`fused_conv`), so a deploy graph holds no
custom block layer and tfmot can quantize it with its default registry.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from keras_sr.configs.base import positive_int


def fused_conv(filters, kernel_size, depthwise=False, activation="relu", name=None):
    """Returns the plain Keras layer that a `MobileOneConv2D` with these arguments folds into.

    Args:
        filters: output channels; must equal the input channels when `depthwise` is True.
        kernel_size: odd int, the square kernel size.
        depthwise: a `DepthwiseConv2D` (depth multiplier 1) instead of a `Conv2D`.
        activation: activation fused into the layer (a Keras activation name or None).
        name: layer name.

    Returns:
        An unbuilt `keras.layers.Conv2D(filters, kernel_size, padding="same")` or
        `keras.layers.DepthwiseConv2D(kernel_size, padding="same")`, with bias and the activation.
    """
    if depthwise:
        return keras.layers.DepthwiseConv2D(
            kernel_size, padding="same", activation=activation, name=name)
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", activation=activation, name=name)


def bn_affine(bn):
    """Returns inference-time BN as float64 (scale, shift): bn(x) = x * scale + shift."""
    gamma, beta, mean, variance = (
        np.asarray(v.numpy(), np.float64)
        for v in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return scale, beta - mean * scale


def _kernel(conv):
    """Returns the kernel variable of a Conv2D or DepthwiseConv2D."""
    return conv.depthwise_kernel if isinstance(conv, keras.layers.DepthwiseConv2D) else conv.kernel


def block_geometry(filters, kernel_size, num_branches):
    """Validates a re-parameterizable block's (filters, kernel_size, num_branches) as ints.

    Raises:
        ValueError: a size that is not a positive int, or an even kernel size.
    """
    filters = positive_int(filters, "filters")
    kernel_size = positive_int(kernel_size, "kernel_size")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (the 1x1 and identity branches sit on the "
                         f"centre tap), got {kernel_size}")
    return filters, kernel_size, positive_int(num_branches, "num_branches")


def input_channels(layer, input_shape):
    """The (known) channel count of a block layer's input shape; raises ValueError naming it."""
    channels = input_shape[-1]
    if channels is None:
        raise ValueError(f"{layer.name}: the input channel count must be known, got shape "
                         f"{input_shape}")
    return channels


def block_config(layer):
    """The `get_config` entries every re-parameterizable block layer has."""
    return {"filters": layer.filters, "kernel_size": layer.kernel_size,
            "num_branches": layer.num_branches,
            "activation": keras.activations.serialize(layer.activation)}


@keras.utils.register_keras_serializable(package="keras_sr")
class MobileOneConv2D(keras.layers.Layer):
    """Training form of a re-parameterizable convolution (MobileOne, arXiv 2206.04040).

    Computes `activation(sum of branches)` with stride 1 and "same" padding. The branches:
    - `num_branches` parallel `kernel_size` x `kernel_size` convolutions (no bias), each followed by
      its own batch norm;
    - a 1x1 convolution + batch norm ("scale" branch), only when `kernel_size` > 1;
    - a batch norm of the input ("identity" branch), only when input and output channels match.
    With `num_branches=1` this is the RepVGG block (arXiv 2101.03697). With `depthwise=True` every
    convolution is depthwise, as in the first half of a MobileOne block.

    At inference (`training=False`) every branch is affine, and `fused_weights()` returns the kernel
    and bias of the one convolution (`fused_layer()`) that computes the same output. The layer never
    changes its own form: the student is re-parameterized by building a new model.

    The k parallel convolutions run as one convolution with `k * filters` output channels and one
    batch norm over those channels. Batch norm acts per channel, so this is exactly k separate
    conv + BN branches, in fewer and larger ops. Sub-layer names are fixed (checkpoints depend on
    them):
    - `conv_kxk`: `Conv2D(k * filters, kernel_size, use_bias=False)`; branch j owns output channels
      `[j * filters, (j + 1) * filters)`. Depthwise: `DepthwiseConv2D(kernel_size,
      depth_multiplier=k, use_bias=False)`; branch j owns output channels `c * k + j` (the Keras
      depth-multiplier layout).
    - `bn_kxk`: `BatchNormalization` over the `k * filters` channels of `conv_kxk`.
    - `conv_scale`, `bn_scale`: the 1x1 branch (`Conv2D(filters, 1)` or `DepthwiseConv2D(1)`), or
      None.
    - `bn_identity`: the identity branch, created in `build()`, or None.
    All batch norms use the Keras defaults (momentum 0.99, epsilon 1e-3).

    Input: float tensor (B, H, W, C_in), any range (in the student: ReLU outputs, values >= 0).
    Output: float tensor (B, H, W, filters); >= 0 with the default ReLU, unbounded otherwise.

    Args:
        filters: output channels. With `depthwise=True` it must equal C_in.
        kernel_size: odd int, size of the parallel convolutions.
        num_branches: number k of parallel `kernel_size` convolutions, >= 1.
        depthwise: use depthwise convolutions in every branch.
        activation: applied to the branch sum (Keras activation name or callable; None for linear).
        **kwargs: passed to `keras.layers.Layer` (e.g. `name`).

    Example:
        layer = MobileOneConv2D(32, 3, num_branches=4, name="block_0")
        y = layer(x)                                 # x: (B, H, W, 32)
        kernel, bias = layer.fused_weights()         # float64, (3, 3, 32, 32) and (32,)
    """

    def __init__(self, filters, kernel_size=3, num_branches=4, depthwise=False, activation="relu",
                 **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.num_branches = block_geometry(
            filters, kernel_size, num_branches)
        self.depthwise = bool(depthwise)
        self.activation = keras.activations.get(activation)

        k = self.num_branches
        if self.depthwise:
            self.conv_kxk = keras.layers.DepthwiseConv2D(
                self.kernel_size, padding="same", depth_multiplier=k, use_bias=False,
                name="conv_kxk")
        else:
            self.conv_kxk = keras.layers.Conv2D(
                k * self.filters, self.kernel_size, padding="same", use_bias=False, name="conv_kxk")
        self.bn_kxk = keras.layers.BatchNormalization(name="bn_kxk")
        self.conv_scale = self.bn_scale = None
        if self.kernel_size > 1:
            if self.depthwise:
                self.conv_scale = keras.layers.DepthwiseConv2D(1, use_bias=False, name="conv_scale")
            else:
                self.conv_scale = keras.layers.Conv2D(
                    self.filters, 1, use_bias=False, name="conv_scale")
            self.bn_scale = keras.layers.BatchNormalization(name="bn_scale")
        self.bn_identity = None

    def build(self, input_shape):
        in_channels = input_channels(self, input_shape)
        if self.depthwise and in_channels != self.filters:
            raise ValueError(f"{self.name}: a depthwise MobileOneConv2D needs filters == input "
                             f"channels, got filters={self.filters} and {in_channels} input "
                             "channels")
        if in_channels == self.filters:
            self.bn_identity = keras.layers.BatchNormalization(name="bn_identity")
        super().build(input_shape)

    def call(self, inputs, training=None):
        z = self.bn_kxk(self.conv_kxk(inputs), training=training)
        if self.num_branches > 1:
            # Depthwise output channel c * k + j belongs to branch j, dense channel j * C + c.
            split = [self.filters, self.num_branches]
            if not self.depthwise:
                split.reverse()
            z = tf.reshape(z, tf.concat([tf.shape(z)[:-1], split], axis=0))
            z = tf.reduce_sum(z, axis=-1 if self.depthwise else -2)
        branches = [z]
        if self.conv_scale is not None:
            branches.append(self.bn_scale(self.conv_scale(inputs), training=training))
        if self.bn_identity is not None:
            branches.append(self.bn_identity(inputs, training=training))
        return self.activation(tf.add_n(branches))

    def fused_weights(self):
        """Returns (kernel, bias) of the equivalent `fused_conv` layer, as float64 NumPy arrays.

        Folds every batch norm at its moving statistics into its convolution (kernel * gamma / std,
        bias beta - mean * gamma / std), pads the 1x1 kernel to the centre tap, writes the identity
        branch as a centre-tap diagonal kernel and sums the branches. Kernel shape (kernel_size,
        kernel_size, C_in, filters), or (kernel_size, kernel_size, filters, 1) for depthwise; bias
        shape (filters,).
        """
        if not self.built:
            raise ValueError(f"{self.name}: fused_weights() needs a built layer (call it on an "
                             "input first)")
        k, c = self.num_branches, self.filters
        scale, shift = bn_affine(self.bn_kxk)
        kernel = np.asarray(_kernel(self.conv_kxk).numpy(), np.float64)
        if self.depthwise:
            kernel = (kernel * scale.reshape(c, k)).sum(axis=-1, keepdims=True)
            bias = shift.reshape(c, k).sum(axis=-1)
        else:
            kernel = kernel.reshape(kernel.shape[:3] + (k, c))
            kernel = (kernel * scale.reshape(k, c)).sum(axis=3)
            bias = shift.reshape(k, c).sum(axis=0)
        centre = self.kernel_size // 2
        if self.conv_scale is not None:
            scale, shift = bn_affine(self.bn_scale)
            scale_kernel = np.asarray(_kernel(self.conv_scale).numpy()[0, 0], np.float64)
            kernel[centre, centre] += scale_kernel * (scale[:, None] if self.depthwise else scale)
            bias += shift
        if self.bn_identity is not None:
            scale, shift = bn_affine(self.bn_identity)
            if self.depthwise:
                kernel[centre, centre, :, 0] += scale
            else:
                kernel[centre, centre, np.arange(c), np.arange(c)] += scale
            bias += shift
        return kernel, bias

    def fused_layer(self):
        """Returns an unbuilt `fused_conv` layer with this layer's name, geometry and activation."""
        return fused_conv(self.filters, self.kernel_size, depthwise=self.depthwise,
                          activation=self.activation, name=self.name)

    def get_config(self):
        return {**super().get_config(), **block_config(self), "depthwise": self.depthwise}
