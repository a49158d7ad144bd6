"""PyTorch MambaIRv2-Light teacher and the offline job that writes its outputs into TFRecords.

This package imports torch and, from keras_sr, only the dependency-free `keras_sr.common` (the record
contract, file and image I/O, metrics), never TensorFlow: the teacher job runs where TensorFlow is
absent. Importing the package itself loads no torch; the torch-based entry points are imported lazily.
"""


def load_teacher(*args, **kwargs):
    """See `teacher_bridge.load.load_teacher`."""
    from teacher_bridge.load import load_teacher as _load_teacher

    return _load_teacher(*args, **kwargs)
