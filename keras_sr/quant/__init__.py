"""Stage 3: BN recalibration, fused-graph QAT with tfmot, and its trainer hooks.

See `keras_sr.quant.qat` for the workflow.
"""
from keras_sr.quant.bn_recalibration import recalibrate_bn
from keras_sr.quant.qat import (IO_RANGE, QATConfig, build_qat_model, calibrate, check_fused,
                                clip_kernel_outliers, converter_graph, float_twin, fuse_after_qat,
                                get_phase, load_qat_model, phase_for_step, post_update, set_phase)

__all__ = ["IO_RANGE", "QATConfig", "build_qat_model", "calibrate", "check_fused",
           "clip_kernel_outliers", "converter_graph", "float_twin", "fuse_after_qat", "get_phase",
           "load_qat_model", "phase_for_step", "post_update", "recalibrate_bn", "set_phase"]
