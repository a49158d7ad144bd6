"""PyTorch MambaIRv2-Light teacher and the offline job that writes its outputs into TFRecords.

This package imports torch and never keras_sr. `record_schema` is dependency-free so that keras_sr can
read the same contract without torch; the torch-based entry points are therefore imported lazily.
"""


def load_teacher(*args, **kwargs):
    """See `teacher_bridge.load.load_teacher`."""
    from teacher_bridge.load import load_teacher as _load_teacher

    return _load_teacher(*args, **kwargs)
