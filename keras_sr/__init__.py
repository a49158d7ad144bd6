"""keras-sr: a tiny x3 super-resolution network trained in Keras 2 and shipped as INT8 TFLite.

tfmot 0.8.1 works only with Keras 2 (the `tf_keras` package). TensorFlow decides which Keras `tf.keras`
means when it is first imported, so the switch is set here, before any submodule imports TensorFlow.
Every module in this package uses `import tf_keras as keras`.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"
