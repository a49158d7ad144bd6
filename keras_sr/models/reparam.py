"""Re-parameterization: training-form student -> deploy-form student, by rebuilding.

The deploy model is built from the training model's config, with every re-parameterizable layer
(`MobileOneConv2D`, `OnlineMobileOneConv2D`) replaced by the plain layer it folds into (its
`fused_layer()`), and gets fused weights (`fused_weights()`); every other layer keeps its weights.
The input model is never modified.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from keras_sr.models.blocks import MobileOneConv2D
from keras_sr.models.online import OnlineMobileOneConv2D

# The layers that fold into a plain conv: each has fused_layer() and fused_weights().
REPARAMETERIZABLE = (MobileOneConv2D, OnlineMobileOneConv2D)


def reparameterize(model):
    """Returns a new deploy-form copy of a functional model, with every block layer fused.

    Layer names are kept. At `training=False` the copy computes the same function as `model` (up to
    float32 rounding: the folding itself runs in float64). A model without re-parameterizable layers
    (e.g. one that is already fused) comes back as an equal copy.

    Args:
        model: a functional `keras.Model`, e.g. from `build_student`.

    Returns:
        A new functional `keras.Model` with the same inputs, outputs and layer names.

    Raises:
        ValueError: if `model` is not a functional Keras model.
    """
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise ValueError(f"reparameterize needs a functional tf_keras Model, got "
                         f"{type(model).__module__}.{type(model).__name__}")
    config = model.get_config()
    for layer_config in config["layers"]:
        layer = model.get_layer(layer_config["name"])
        if isinstance(layer, REPARAMETERIZABLE):
            layer_config.update(keras.layers.serialize(layer.fused_layer()))
    fused = keras.Model.from_config(config)
    for layer in fused.layers:
        source = model.get_layer(layer.name)
        if isinstance(source, REPARAMETERIZABLE):
            weights = source.fused_weights()
        else:
            weights = source.get_weights()
        layer.set_weights(
            [np.asarray(w, v.dtype.as_numpy_dtype) for w, v in zip(weights, layer.weights)])
    return fused


def check_fused(model, fused, batch, atol=1e-4, rtol=1e-5):
    """Raises unless the fused model reproduces the multi-branch one on `batch` (training=False).

    Args:
        model: the training-form student.
        fused: its re-parameterized deploy form.
        batch: float (B, H, W, 3) in [0, 1].
        atol, rtol: the largest allowed absolute difference is atol + rtol * max |model output|
            (float32 rounding of the fold grows with the size of the activations).

    Returns:
        The largest absolute difference.

    Raises:
        ValueError: if the outputs differ by more than allowed.
    """
    reference = model(batch, training=False)
    diff = float(tf.reduce_max(tf.abs(fused(batch, training=False) - reference)))
    allowed = atol + rtol * float(tf.reduce_max(tf.abs(reference)))
    if not diff <= allowed:
        raise ValueError(f"the fused model differs from the multi-branch model by up to {diff:.3g} "
                         f"(allowed {allowed:.3g}): re-parameterization is broken")
    logging.info("fused vs multi-branch: max |difference| %.3g (allowed %.3g)", diff, allowed)
    return diff
