"""Depth-to-space (pixel shuffle) as a registered Keras layer, and the output end of every network.

A `Lambda` or a raw `tf.nn.depth_to_space` call (a TFOpLambda layer) breaks tfmot's model cloning, so the
student ends in this small serializable layer; the QAT builder gives it a no-op quantize config and the
TFLite converter maps it to one int8 DEPTH_TO_SPACE op. `upscaled_output` (the optional anchor, then
depth-to-space) is shared by the student and the baselines.
"""
import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="keras_sr")
class DepthToSpace(keras.layers.Layer):
    """Rearranges (B, H, W, C * s * s) into (B, s * H, s * W, C), as `tf.nn.depth_to_space` (NHWC).

    Args:
        block_size: the upscaling factor s.
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(self, block_size, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def call(self, inputs):
        return tf.nn.depth_to_space(inputs, self.block_size)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.block_size
        return (b, None if h is None else h * s, None if w is None else w * s, c // (s * s))

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


def upscaled_output(inputs, x, scale, anchor):
    """The output end every network shares: (B, H, W, 3 * s * s) -> (B, s * H, s * W, 3).

    Layers: with `anchor` (ABPN's output anchor, `ModelConfig.anchor`), "anchor_row" Concatenate
    of s copies of the input, "anchor" Concatenate of s copies of that and "anchor_add"
    Add(x, anchor); then "depth_to_space" DepthToSpace(s).

    Args:
        inputs: the model input, float (B, H, W, 3) RGB in [0, 1].
        x: the last conv's output (B, H, W, 3 * s * s); a residual when `anchor` is set.
        scale: the upscaling factor s.
        anchor: add the input, repeated s * s times along channels, before depth-to-space.

    Returns:
        The output tensor, unclipped (the QAT model's pinned output grid is the clip).
    """
    if anchor:
        # depth_to_space (NHWC) puts channel (i * s + j) * 3 + c of an LR pixel at HR pixel (i, j)
        # of its s x s block, channel c: with s * s copies of the input along channels, every HR
        # pixel of the block gets its LR pixel (nearest-neighbour upsampling). Built as s rows of
        # s copies because LiteRT's XNNPACK delegate runs an int8 CONCATENATION of 2-4 inputs but
        # not of 9 (measured). The copies stay on the input's int8 grid.
        row = keras.layers.Concatenate(name="anchor_row")([inputs] * scale)
        copies = keras.layers.Concatenate(name="anchor")([row] * scale)
        x = keras.layers.Add(name="anchor_add")([x, copies])
    return DepthToSpace(scale, name="depth_to_space")(x)
