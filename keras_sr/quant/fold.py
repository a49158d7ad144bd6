"""Turning a QAT model into the other forms export and evaluation need.

- `float_twin`: the FP32 fused graph holding the QAT model's latent (unquantized) weights, the
  "FP32 twin" the INT8 model is compared with.
- `fuse_after_qat`: the `QATConfig.graph = "multibranch"` ablation trains the training form with
  fake-quantized branch kernels; after QAT its latent weights are folded into the fused graph,
  which takes the learned activation ranges and freezes every grid, so export, parity and
  evaluation use a fused QAT model either way.
"""
import tensorflow as tf
import tf_keras as keras

from keras_sr.models import MobileOneConv2D, reparameterize
from keras_sr.quant.build import build_qat_model, conv_wrappers, latent_conv_weights, wrappers
from keras_sr.quant.curriculum import quantized_kernels, set_phase


def float_twin(q_model, fused_template):
    """An FP32 copy of `fused_template` holding the QAT model's latent (unquantized) weights.

    Args:
        q_model: a model from `build_qat_model`.
        fused_template: a deploy-form model with the same layer names (e.g. a fresh
            `build_student(reparameterized=True, ...)`); it is not modified.
    """
    twin = keras.models.clone_model(fused_template)
    for wrapper in conv_wrappers(q_model):
        twin.get_layer(wrapper.layer.name).set_weights(
            [v.numpy() for v in latent_conv_weights(wrapper)])
    return twin


def fuse_after_qat(q_model, student, config):
    """The fused QAT model of a multi-branch QAT model (`QATConfig.graph == "multibranch"`).

    The latent branch weights and BN statistics are folded (`reparameterize`) into the fused graph,
    whose QAT model (`build_qat_model`) takes the learned activation ranges of the block outputs
    and the Add, and weight ranges that fit its fused kernels; every grid is then frozen (phase C).
    The fused kernels are quantized once instead of per branch, so the two models differ by that
    rounding.

    Args:
        q_model: a multi-branch QAT model (`build_qat_model(student, config)`); not modified.
        student: a training-form student with the same layer names (e.g. a fresh
            `build_student(...)`); not modified.
        config: the `QATConfig` of `q_model`.

    Returns:
        The fused QAT model in phase C, ready for `keras_sr.export.tflite_lib.convert_qat`.
    """
    twin = keras.models.clone_model(student)
    for wrapper in wrappers(q_model):
        target = twin.get_layer(wrapper.layer.name)
        if isinstance(target, MobileOneConv2D):
            # _weight_vars follows MobileOneQuantizeConfig: the k x k kernel, then the 1x1 one.
            latent = [w for w, _, _ in wrapper._weight_vars]  # pylint: disable=protected-access
            convs = [c for c in (target.conv_kxk, target.conv_scale) if c is not None]
            for conv, kernel in zip(convs, latent):
                conv.kernel.assign(kernel)
            for name in ("bn_kxk", "bn_scale", "bn_identity"):
                if getattr(target, name) is not None:
                    getattr(target, name).set_weights(getattr(wrapper.layer, name).get_weights())
        elif isinstance(target, keras.layers.Conv2D):
            target.set_weights([v.numpy() for v in latent_conv_weights(wrapper)])
    fused = build_qat_model(reparameterize(twin),
                            config.replace(graph="fused", kernel_clip="none"))
    # Every quantized tensor of the fused graph is the output of a same-named layer of q_model
    # (a fused conv of its block); the pinned [0, 1] ranges copy onto themselves.
    for wrapper in wrappers(fused):
        if hasattr(wrapper.quantize_config, "output_vars"):
            source = q_model.get_layer(wrapper.name).quantize_config.output_vars()
            for key in ("min_var", "max_var"):
                wrapper.quantize_config.output_vars()[key].assign(source[key])
    for kernel, ranges in quantized_kernels(fused):
        reach = tf.reduce_max(tf.abs(kernel), axis=[0, 1, 2])
        if len(ranges["max_var"].shape) == 0:
            reach = tf.reduce_max(reach)
        ranges["min_var"].assign(-reach)
        ranges["max_var"].assign(reach)
    set_phase(fused, "C")
    return fused
