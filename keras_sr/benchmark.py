"""Speed measurements reported by `tools/benchmark.py` (targets live there, not in tests)."""
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from keras_sr import models


def train_steps_per_second(model, batch_size=16, lr_patch=48, steps=30, warmup=5,
                           jit_compile=False):
    """Adam + L1 steps per second of `model` on random [0,1] batches (data loading excluded).

    Args:
        model: a student (any form); its weights are changed by the measurement.
        batch_size, lr_patch: batch shape (B, lr_patch, lr_patch, 3).
        steps: timed steps, after `warmup` untimed ones (which include tracing).
        jit_compile: XLA-compile the forward/backward pass (`TrainConfig.jit_compile`).
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
        grads, loss = forward_backward()
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for _ in range(warmup):
        step().numpy()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.numpy()
    return steps / (time.perf_counter() - start)


def student_train_rates(model_kwargs=None, **kwargs):
    """Train-step rates of the multi-branch training form and of the fused deploy form."""
    model_kwargs = model_kwargs or {}
    return {
        "training_form_steps_per_s": train_steps_per_second(
            models.build_student(**model_kwargs), **kwargs),
        "deploy_form_steps_per_s": train_steps_per_second(
            models.build_student(reparameterized=True, **model_kwargs), **kwargs),
    }
