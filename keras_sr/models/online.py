"""Online re-parameterization (OREPA, arXiv 2204.00826): the MobileOne branches at one conv's cost.

`MobileOneConv2D` runs every branch (k 3x3 convs, a 1x1 conv, an identity) with its own batch norm,
so a step costs about k + 1 convolutions. BN is what prevents summing the branches before the
convolution: its batch statistics make each branch non-linear in training. OREPA replaces each
branch's BN by a learnable per-channel scale, which keeps every branch linear, so the block can sum
the scaled branch kernels into one k x k kernel inside the forward pass and run a single
convolution; one BN after that convolution keeps training stable at a high learning rate. The
gradient still reaches every branch's own kernel and scale through the sum, which is where the
over-parameterization acts on the optimization.

With `normalize=False` the block has no BN at all: a bias follows the convolution and the scales
start at 1/sqrt(k + 2), so that the merged kernel starts with the variance of one Glorot kernel
(the k + 2 branches add up their variances) and the un-normalized network does not blow up with
depth. It then costs what the plain network costs, and the branches act on the optimization only
(a linear over-parameterization of each kernel).

With `expansion=e` (block type "mobileone_expand") each branch kernel is itself a product: a
k x k conv from C_in to e channels followed by a 1x1 conv back to C, multiplied out into one
k x k kernel before the convolution (a collapsible linear block: ExpandNets, NeurIPS 2020; SESR,
MLSys 2022). A sum of kernels (the linear form) trained by Adam is close to the plain kernel with
other per-tap learning rates; a product is not, which is where a deep linear parameterization can
speed up optimization. Multiplying out costs k * kh * kw * C_in * e * C multiply-adds per step
(2.4 M for the default block, against about 340 M for its convolution on a batch of 16 48x48
patches), so the step still costs what the plain network's costs.

The deploy form is the same one `MobileOneConv2D` folds into: the summed kernel with the post-BN
folded in is one `fused_conv` (a Conv2D with bias and the ReLU), so the default student keeps its
82,683 deploy parameters.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from keras_sr.configs.base import positive_int
from keras_sr.models.blocks import (block_config, block_geometry, bn_affine, fused_conv,
                                    input_channels)


def _float64(variable):
    return np.asarray(variable.numpy(), np.float64)


def _uniform(variance):
    """A zero-mean uniform initializer with this variance (on [-l, l] it is l^2 / 3)."""
    limit = (3.0 * variance) ** 0.5
    return keras.initializers.RandomUniform(-limit, limit)


class _StackedGlorot(keras.initializers.Initializer):
    """Glorot-uniform for each of the k kernels stacked on the first axis (fans of one kernel).

    Each kernel gets its own initializer: an unseeded Keras initializer called twice returns the
    same values, and identical branches (with identical scales) would stay identical in training.
    """

    def __call__(self, shape, dtype=None, **kwargs):
        return tf.stack([keras.initializers.GlorotUniform()(shape[1:], dtype=dtype)
                         for _ in range(shape[0])])


@keras.utils.register_keras_serializable(package="keras_sr")
class OnlineMobileOneConv2D(keras.layers.Layer):
    """Training form of a MobileOne block whose branches merge into one kernel before the conv.

    Computes `activation(BN(conv(x, K)))` (or `activation(conv(x, K) + b)` with
    `normalize=False`), stride 1, "same" padding, with the kernel

        K = sum_j s_j * W_j  +  pad(s_1 * W_1)  +  s_id * I

    where W_j (j < k) are the `num_branches` kernel_size x kernel_size branch kernels (with
    `expansion` e: W_j = A_j B_j, A_j a kernel_size x kernel_size kernel C_in -> e and B_j a 1x1
    kernel e -> C), W_1 the 1x1 kernel (only when kernel_size > 1), I the identity as a
    centre-tap kernel (only when input and output channels match), and s_j, s_1, s_id learnable
    per-output-channel scales (initialised to 1 with the BN, so that every branch starts with the
    weight it has in the BN form, where each branch starts as a unit-variance term; 1/sqrt(k + 2)
    without). The sum runs in the forward
    pass, so training costs one convolution (and one BN) per block.

    At inference BN is affine, and `fused_weights()` returns the kernel and bias of the single
    `fused_conv` (`fused_layer()`) that computes the same output.

    Weights (names fixed, checkpoints depend on them): `kernel_kxk` (k, kh, kw, C_in, C), or
    with expansion `kernel_kxk` (k, kh, kw, C_in, e) and `projection_kxk` (k, e, C),
    `scale_kxk` (k, C), `kernel_1x1` (C_in, C) and `scale_1x1` (C,) when kernel_size > 1,
    `scale_identity` (C,) when C_in == C, and the sub-layer `bn` (BatchNormalization, Keras
    defaults), or the weight `bias` (C,) with `normalize=False`.

    Input: float tensor (B, H, W, C_in). Output: float tensor (B, H, W, filters); >= 0 with the
    default ReLU.

    Args:
        filters: output channels C.
        kernel_size: odd int, size of the branch kernels.
        num_branches: number k of kernel_size x kernel_size branches, >= 1.
        activation: applied after the BN (Keras activation name or callable; None for linear).
        normalize: one BN after the convolution (OREPA); False: a bias instead.
        expansion: 0, or the channels e of each branch's inner product (see above).
        **kwargs: passed to `keras.layers.Layer` (e.g. `name`).
    """

    def __init__(self, filters, kernel_size=3, num_branches=4, activation="relu", normalize=True,
                 expansion=0, **kwargs):
        super().__init__(**kwargs)
        self.expansion = 0 if not expansion else positive_int(expansion, "expansion")
        self.filters, self.kernel_size, self.num_branches = block_geometry(
            filters, kernel_size, num_branches)
        self.activation = keras.activations.get(activation)
        self.normalize = bool(normalize)
        self.bn = keras.layers.BatchNormalization(name="bn") if self.normalize else None
        self.kernel_1x1 = self.scale_1x1 = self.scale_identity = self.bias = None
        self.projection_kxk = None

    def build(self, input_shape):
        in_channels = input_channels(self, input_shape)
        k, c, size = self.num_branches, self.filters, self.kernel_size
        ones = keras.initializers.Constant(1.0 if self.normalize else (k + 2) ** -0.5)
        if self.expansion:
            # Var(A_j) = 1 / (kh kw C_in) and Var(B_j) = 1 / e: each product A_j B_j starts with
            # the variance of a Glorot kernel with C_in == C, like the branches without expansion.
            self.kernel_kxk = self.add_weight(
                "kernel_kxk", (k, size, size, in_channels, self.expansion),
                initializer=_uniform(1.0 / (size * size * in_channels)))
            self.projection_kxk = self.add_weight("projection_kxk", (k, self.expansion, c),
                                                  initializer=_uniform(1.0 / self.expansion))
        else:
            self.kernel_kxk = self.add_weight("kernel_kxk", (k, size, size, in_channels, c),
                                              initializer=_StackedGlorot())
        self.scale_kxk = self.add_weight("scale_kxk", (k, c), initializer=ones)
        if size > 1:
            self.kernel_1x1 = self.add_weight("kernel_1x1", (in_channels, c),
                                              initializer="glorot_uniform")
            self.scale_1x1 = self.add_weight("scale_1x1", (c,), initializer=ones)
        if in_channels == c:
            self.scale_identity = self.add_weight("scale_identity", (c,), initializer=ones)
        if not self.normalize:
            self.bias = self.add_weight("bias", (c,), initializer="zeros")
        super().build(input_shape)

    def merged_kernel(self):
        """The kernel K of the branch sum, (kernel_size, kernel_size, C_in, filters), a tensor."""
        branches = self.kernel_kxk
        if self.expansion:
            branches = tf.einsum("jhwie,jeo->jhwio", branches, self.projection_kxk)
        kernel = tf.einsum("jhwio,jo->hwio", branches, self.scale_kxk)
        centre = self._centre_tap()
        if centre is not None:
            kernel += tf.pad(centre[None, None], [[self.kernel_size // 2] * 2] * 2 + [[0, 0]] * 2)
        return kernel

    def _centre_tap(self):
        """The 1x1 and identity branches as one (C_in, filters) matrix, or None."""
        tap = None
        if self.kernel_1x1 is not None:
            tap = self.kernel_1x1 * self.scale_1x1
        if self.scale_identity is not None:
            identity = tf.linalg.diag(self.scale_identity)
            tap = identity if tap is None else tap + identity
        return tap

    def call(self, inputs, training=None):
        z = tf.nn.conv2d(inputs, self.merged_kernel(), strides=1, padding="SAME")
        z = self.bn(z, training=training) if self.normalize else z + self.bias
        return self.activation(z)

    def fused_weights(self):
        """Returns (kernel, bias) of the equivalent `fused_conv` layer, as float64 NumPy arrays.

        The branch sum is recomputed in float64 and the post-BN, at its moving statistics, is
        folded in: kernel K * gamma / std, bias beta - mean * gamma / std (without BN: K and b).
        Shapes
        (kernel_size, kernel_size, C_in, filters) and (filters,).
        """
        if not self.built:
            raise ValueError(f"{self.name}: fused_weights() needs a built layer (call it on an "
                             "input first)")
        branches = _float64(self.kernel_kxk)
        if self.expansion:
            branches = np.einsum("jhwie,jeo->jhwio", branches, _float64(self.projection_kxk))
        kernel = np.einsum("jhwio,jo->hwio", branches, _float64(self.scale_kxk))
        centre = self.kernel_size // 2
        if self.kernel_1x1 is not None:
            kernel[centre, centre] += _float64(self.kernel_1x1) * _float64(self.scale_1x1)
        if self.scale_identity is not None:
            kernel[centre, centre] += np.diag(_float64(self.scale_identity))
        if not self.normalize:
            return kernel, _float64(self.bias)
        scale, shift = bn_affine(self.bn)
        return kernel * scale, shift

    def fused_kernel_moment(self, kernel_kxk_moment, kernel_1x1_moment, power):
        """Estimates an Adam moment of the fused kernel from those of the branch kernels.

        Only for the linear form (`normalize=False`), where the merged kernel K is the fused
        kernel and the gradient of branch kernel j is `s_j * g` (g: the gradient of K, per output
        channel). Least squares over the branches that see a tap then gives
        g = sum_j s_j m_j / sum_j s_j^2 for the first moment (power 1) and
        sum_j s_j^2 v_j / sum_j s_j^4 for the second (power 2). This lets the deploy form of a
        `fuse_at` run continue with Adam's statistics instead of restarting them.

        Args:
            kernel_kxk_moment: the moment of `kernel_kxk`, (k, kh, kw, C_in, C).
            kernel_1x1_moment: the moment of `kernel_1x1`, (C_in, C), or None when there is none.
            power: 1 (first moment) or 2 (second moment).

        Returns:
            float32 NumPy array (kernel_size, kernel_size, C_in, filters).
        """
        if self.normalize or self.expansion or power not in (1, 2):
            raise ValueError(f"{self.name}: moments carry over only for the linear form "
                             f"(normalize=False, expansion=0) and power 1 or 2, got normalize="
                             f"{self.normalize}, expansion={self.expansion}, power={power}")
        weights = _float64(self.scale_kxk) ** power  # (k, C)
        numerator = np.einsum("jhwio,jo->hwio", np.asarray(kernel_kxk_moment, np.float64), weights)
        denominator = np.broadcast_to(np.sum(weights ** 2, axis=0), numerator.shape).copy()
        if self.kernel_1x1 is not None and kernel_1x1_moment is not None:
            centre = self.kernel_size // 2
            weight_1x1 = _float64(self.scale_1x1) ** power
            numerator[centre, centre] += np.asarray(kernel_1x1_moment, np.float64) * weight_1x1
            denominator[centre, centre] += weight_1x1 ** 2
        return (numerator / np.maximum(denominator, 1e-30)).astype(np.float32)

    def fused_layer(self):
        """The unbuilt dense `fused_conv` this block folds into (same name and activation)."""
        return fused_conv(self.filters, self.kernel_size, activation=self.activation,
                          name=self.name)

    def get_config(self):
        return {**super().get_config(), **block_config(self), "normalize": self.normalize,
                "expansion": self.expansion}
