"""Depth-to-space (pixel shuffle) as a registered Keras layer.

A `Lambda` or a raw `tf.nn.depth_to_space` call (a TFOpLambda layer) breaks tfmot's model cloning, so the
student ends in this small serializable layer; the QAT builder gives it a no-op quantize config and the
TFLite converter maps it to one int8 DEPTH_TO_SPACE op.
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
