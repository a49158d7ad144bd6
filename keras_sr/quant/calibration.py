"""Forward-only calibration before Stage-3 QAT: BN statistics, then activation ranges.

    model = recalibrate_bn(student, lr_batches, 64)   # step 1: exact BN statistics
    ...                                               # fold (keras_sr.models.reparameterize)
    calibrate(q_model, lr_batches, qat_config)        # step 3: activation ranges of the QAT model

Neither updates a weight: both run the model with `training=True` on training batches and keep
only the statistics.

BN recalibration. The moving statistics a model ends training with are an exponential average over
weights that kept changing; folding them into the deploy convs bakes that lag in. Recalibration
replaces them with the exact mean over N batches of the statistics each BN sees in training mode
with the final weights:

    moving_mean     = mean_t E_t[x]
    moving_variance = mean_t Var_t[x]

This is the momentum-free cumulative average (PyTorch's `momentum=None`). Var_t is the batch
variance exactly as the layer's own moving-average update uses it: Keras's fused BN (the default for
NHWC) feeds the unbiased variance (n / (n - 1) times the biased one, n = B * H * W) into its moving
variance, in eager, graph and XLA mode alike. Each BN's per-batch statistics are read by running the
model with `training=True` and momentum 0 (the moving statistics then equal the last batch's) and
are summed in float64; nothing else changes and no weight is updated.
"""
import itertools

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from keras_sr.configs import QATConfig
from keras_sr.quant.curriculum import quantizer_variables


def take_inputs(dataset, num_batches):
    """Yields up to `num_batches` network inputs from `dataset`.

    Args:
        dataset: an iterable of batches: dicts with key "lr" (the `make_train_dataset` format),
            tuples whose first item is the input, or input tensors; inputs are float (B, H, W, 3)
            in [0, 1].
        num_batches: how many batches to take.
    """
    for batch in itertools.islice(dataset, num_batches):
        if isinstance(batch, dict):
            if "lr" not in batch:
                raise ValueError(f"dataset elements are dicts without an 'lr' key: {sorted(batch)}")
            batch = batch["lr"]
        elif isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield tf.convert_to_tensor(batch, tf.float32)


def batch_norm_layers(model):
    """Every `keras.layers.BatchNormalization` in `model`, however deeply nested (fixed order)."""
    return [m for m in model.submodules if isinstance(m, keras.layers.BatchNormalization)]


def copy_model(model):
    """A new model with the same config and weights (layers must be registered serializable)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def recalibrate_bn(model, dataset, num_batches=64):
    """Returns a copy of `model` with BN moving statistics averaged exactly over `num_batches`.

    Args:
        model: a Keras model (the multi-branch student); it is not modified.
        dataset: batches as accepted by `take_inputs`, float RGB in [0, 1].
        num_batches: forward passes to average over (the paper uses 64).

    Returns:
        The recalibrated copy. A model without BN comes back as a plain copy.

    Raises:
        ValueError: if the dataset yields no batch.
    """
    new_model = copy_model(model)
    layers = batch_norm_layers(new_model)
    if not layers:
        return new_model
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        # With momentum 0 each training-mode call leaves exactly that batch's statistics behind.
        layer.momentum = 0.0
    forward = tf.function(lambda x: new_model(x, training=True))
    stats = [(layer.moving_mean, layer.moving_variance) for layer in layers]
    sums = [[np.zeros(v.shape, np.float64) for v in pair] for pair in stats]
    count = 0
    try:
        for x in take_inputs(dataset, num_batches):
            forward(x)
            for total, pair in zip(sums, stats):
                for acc, variable in zip(total, pair):
                    acc += variable.numpy()
            count += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if count == 0:
        raise ValueError("BN recalibration got no batch from the dataset")
    if count < num_batches:
        logging.warning("BN recalibration: the dataset ended after %d of %d batches", count,
                        num_batches)
    for total, pair in zip(sums, stats):
        for acc, variable in zip(total, pair):
            variable.assign((acc / count).astype(np.float32))
    logging.info("BN recalibration: %d BN layers re-estimated over %d batches", len(layers), count)
    return new_model


def calibrate(q_model, dataset, config=None):
    """Sets every live activation range to the mean over batches of the batch range.

    The batch range is the one phase A follows (`quantizers.batch_range` at
    `config.range_percentile`, set when the model was built).

    Runs `config.calibration_batches` forward passes with `training=True` (no weight update), with
    the moving-average decay of batch t (1-based) set to (t - 1) / t, so each range ends as the
    exact mean of the per-batch ranges and tfmot's [-6, 6] start leaves no trace. Frozen ranges stay
    as they are.

    Args:
        q_model: a model from `build_qat_model`.
        dataset: batches as accepted by `take_inputs` (float RGB in [0, 1]).
        config: `QATConfig` (for `calibration_batches`).

    Returns:
        The number of batches used.
    """
    config = config or QATConfig()
    act_vars = quantizer_variables(q_model, "activation")
    decays = [float(v["ema_decay"].numpy()) for v in act_vars]
    forward = tf.function(lambda x: q_model(x, training=True))
    count = 0
    try:
        for count, x in enumerate(take_inputs(dataset, config.calibration_batches), start=1):
            for variables in act_vars:
                variables["ema_decay"].assign((count - 1) / count)
            forward(x)
    finally:
        for variables, decay in zip(act_vars, decays):
            variables["ema_decay"].assign(decay)
    if count == 0:
        raise ValueError("QAT calibration got no batch from the dataset")
    logging.info("QAT calibration: %d activation ranges over %d batches", len(act_vars), count)
    return count
