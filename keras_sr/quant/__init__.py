"""Stage 3: fused-graph QAT with tfmot, as a model builder plus the hooks the training loop calls.

The Stage-3 wiring (`keras_sr.train.stages`) does, before the ordinary training loop:

    model = recalibrate_bn(student, lr_batches, 64)   # calibration: exact BN statistics
    fused = keras_sr.models.reparameterize(model)
    keras_sr.models.check_fused(model, fused, batch)  # raises if the fused graph differs
    q = build_qat_model(fused, qat_config)            # build: the fake-quant model, phase A
    calibrate(q, lr_batches, qat_config)              # calibration: activation ranges

and trains `q` with the curriculum hooks `set_phase` / `phase_for_step` and `post_update`
(`curriculum`). `fold` turns a QAT model into its FP32 twin, or a multi-branch QAT model (an
ablation) into the fused QAT model that ships. Modules, bottom to top: `quantizers`, `configs`
(tfmot QuantizeConfigs), `integer_add` (an anchored student's output Add, rounding like the
runtime), `integer_conv` (convolutions summing like the runtime), `build`, `curriculum`,
`calibration`, `fold`.
"""
from keras_sr.quant.build import (IO_RANGE, build_qat_model, clip_kernel_outliers, conv_wrappers,
                                  converter_graph, latent_conv_weights, qat_checkpoint_model,
                                  wrappers)
from keras_sr.quant.calibration import calibrate, recalibrate_bn
from keras_sr.quant.curriculum import (get_phase, phase_for_step, post_update, quantized_kernels,
                                       quantizer_variables, set_phase)
from keras_sr.quant.fold import float_twin, fuse_after_qat

__all__ = ["IO_RANGE", "build_qat_model", "calibrate", "clip_kernel_outliers", "conv_wrappers",
           "converter_graph", "float_twin", "fuse_after_qat", "get_phase", "latent_conv_weights",
           "phase_for_step", "post_update", "qat_checkpoint_model", "quantized_kernels",
           "quantizer_variables", "recalibrate_bn", "set_phase", "wrappers"]
