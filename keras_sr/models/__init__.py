"""The student network (and the baselines ABPN and FSRCNN): building it, its re-parameterizable block
and fusing it for deployment."""
from keras_sr.models.blocks import MobileOneConv2D, fused_conv
from keras_sr.models.depth_to_space import DepthToSpace
from keras_sr.models.online import OnlineMobileOneConv2D
from keras_sr.models.reparam import check_fused, reparameterize
from keras_sr.models.student import BLOCK_TYPES, build_student, student_config

__all__ = [
    "BLOCK_TYPES",
    "DepthToSpace",
    "MobileOneConv2D",
    "OnlineMobileOneConv2D",
    "build_student",
    "check_fused",
    "fused_conv",
    "reparameterize",
    "student_config",
]
