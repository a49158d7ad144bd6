"""How fast a student trains on this machine: Adam + L1 steps per second of each form.

`keras-sr-benchmark --only=train` reports `student_train_rates`; the whole job's speed probe uses
`train_steps_per_second` to plan its stages.
"""
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from keras_sr import models
from keras_sr.configs import ModelConfig


def _train_step(model, batch_size, lr_patch, jit_compile, steps_per_call=1):
    """A compiled Adam + L1 step of `model` on one fixed random [0, 1] batch.

    With `steps_per_call` > 1 one call runs that many steps in a graph loop (no Python between
    them); `_rate` counts them all.
    """
    scale = model.output_shape[1] // model.input_shape[1] if model.input_shape[1] else 3
    rng = np.random.default_rng(0)
    lr = tf.constant(rng.random((batch_size, lr_patch, lr_patch, 3), np.float32))
    hr = tf.constant(rng.random((batch_size, lr_patch * scale, lr_patch * scale, 3), np.float32))
    optimizer = keras.optimizers.Adam(1e-4)

    @tf.function(jit_compile=jit_compile)
    def forward_backward():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.abs(model(lr, training=True) - hr))
        return tape.gradient(loss, model.trainable_variables), loss

    @tf.function
    def step():
        loss = tf.constant(0.0)
        for _ in tf.range(steps_per_call):
            grads, loss = forward_backward()
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step.steps_per_call = steps_per_call
    return step


def _rate(step, steps):
    """Steps per second of `steps` steps (rounded up to whole calls of `step`)."""
    calls = -(-steps // step.steps_per_call)
    start = time.perf_counter()
    for _ in range(calls):
        loss = step()
    loss.numpy()
    return calls * step.steps_per_call / (time.perf_counter() - start)


def train_steps_per_second(model, batch_size=16, lr_patch=48, steps=30, warmup=5,
                           jit_compile=False):
    """Adam + L1 steps per second of `model` on random [0,1] batches (data loading excluded).

    Args:
        model: a student (any form); its weights are changed by the measurement.
        batch_size, lr_patch: batch shape (B, lr_patch, lr_patch, 3).
        steps: timed steps, after `warmup` untimed ones (which include tracing).
        jit_compile: XLA-compile the forward/backward pass (`TrainConfig.jit_compile`).
    """
    step = _train_step(model, batch_size, lr_patch, jit_compile)
    for _ in range(warmup):
        step().numpy()
    return _rate(step, steps)


# The training forms measured against the deploy form: the paper's BN MobileOne, its online
# (OREPA) forms with and without BN and with expanded branches, RepConv, and the plain network (a
# deploy graph trained as it is).
TRAINING_FORMS = ("mobileone", "mobileone_online", "mobileone_linear", "mobileone_expand",
                  "repconv", "plain")


def student_train_rates(model_config=None, block_types=TRAINING_FORMS, steps=30, warmup=5,
                        rounds=3, batch_size=16, lr_patch=48, jit_compile=False,
                        steps_per_call=10):
    """Train-step rates of each training form and of the fused deploy form, in one process.

    The forms are timed in turn, `rounds` times over (`steps` steps each), and each form's rate is
    its median: a load that changes during the run then shifts every form alike instead of the
    ratio between two forms timed minutes apart.

    Args:
        model_config: the `ModelConfig` of the student (default: the paper's); its block type is
            replaced by each of `block_types`.
        block_types: training forms to time.
        steps, warmup, batch_size, lr_patch, jit_compile: see `train_steps_per_second`.
        rounds: how many times every form is timed.
        steps_per_call: also time the deploy form with this many steps per `tf.function` call
            ("deploy_form_<n>_per_call"): its ratio to the deploy form is what the trainer's one
            Python call per step costs (0: leave it out).

    Returns:
        dict: "deploy_form_steps_per_s", and for each block type (and the deploy form at
        `steps_per_call`) "<type>_steps_per_s" and "<type>_ratio_to_deploy" (its rate over the
        deploy form's).
    """
    model_config = model_config or ModelConfig()
    deploy = models.build_student(model_config, reparameterized=True)
    step_fns = {"deploy_form": _train_step(deploy, batch_size, lr_patch, jit_compile)}
    for block_type in block_types:
        step_fns[block_type] = _train_step(models.build_student(model_config, block_type=block_type),
                                           batch_size, lr_patch, jit_compile)
    if steps_per_call > 1:
        step_fns[f"deploy_form_{steps_per_call}_per_call"] = _train_step(
            deploy, batch_size, lr_patch, jit_compile, steps_per_call)
    for step in step_fns.values():
        for _ in range(warmup):
            step().numpy()
    timed = {name: [] for name in step_fns}
    for _ in range(rounds):
        for name, step in step_fns.items():
            timed[name].append(_rate(step, steps))
    rates = {f"{name}_steps_per_s": float(np.median(r)) for name, r in timed.items()}
    for name in list(step_fns)[1:]:
        rates[f"{name}_ratio_to_deploy"] = (rates[f"{name}_steps_per_s"]
                                            / rates["deploy_form_steps_per_s"])
    return rates
