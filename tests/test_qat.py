"""Stage-3 QAT library: BN recalibration, calibration, curriculum freezing, clipping, checkpoints.

The session fixture `qat_run` (conftest.py, also used by test_export.py) builds the fused
student's QAT model, calibrates it and trains it for a few steps of each phase on tiny synthetic
images; `anchored_qat_run` does the same for a small student with the output anchor.
"""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from conftest import (QAT_CONFIG, TOTAL_STEPS, fused_student, make_train_step, synthetic_pair)

from keras_sr import configs, models, quant, workdir
from keras_sr.common import fileio
from keras_sr.export import tflite_lib
from keras_sr.models.depth_to_space import DepthToSpace
from keras_sr.quant.integer_add import RuntimeAdd
from keras_sr.quant.integer_conv import RuntimeConv2D, RuntimeDepthwiseConv2D

def _max_change(before, after):
    return max(float(np.max(np.abs(a - b))) for a, b in zip(before, after))


def test_phase_schedule():
    config = configs.QATConfig(phase_a=0.4, phase_b=0.3)
    phases = "".join(quant.phase_for_step(config, step, 10) for step in range(1, 11))
    assert phases == "AAAABBBCCC"
    assert quant.phase_for_step(configs.QATConfig(phase_a=1.0, phase_b=0.0), 10, 10) == "A"


@pytest.mark.parametrize("values, message", [
    ({"phase_a": 0.8, "phase_b": 0.3}, "sum to at most 1"), ({"phase_a": -0.1}, "non-negative"),
    ({"kernel_clip": "max"}, "kernel_clip='max'"), ({"ema_decay": 1.0}, r"ema_decay=1.0 must be"),
    ({"calibration_batches": 0}, "calibration_batches=0"), ({"phase_c": 0.2}, r"\['phase_c'\]"),
    ({"range_percentile": 50.0}, r"range_percentile=50.0"),
    ({"range_percentile": 100.1}, r"range_percentile=100.1"),
    ({"bias_rounding": False}, "exact_requantization needs bias_rounding"),
    ({"graph": "unfused"}, "graph='unfused'"),
    ({"graph": "multibranch", "kernel_clip": "std"}, "use kernel_clip='none'")])
def test_qat_config_rejects_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        configs.QATConfig.from_dict(values)


def test_curriculum_freezes_ranges(qat_run):
    act, weight, kernel = (dict(zip(qat_run.snapshots, parts))
                           for parts in zip(*qat_run.snapshots.values()))
    # Phase A: everything moves.
    assert _max_change(act["A"], act["B"]) > 1e-4
    assert _max_change(weight["A"], weight["B"]) > 1e-5
    # Phase B: activation grids frozen exactly, weight ranges follow the weights.
    assert _max_change(act["B"], act["C"]) == 0.0
    assert _max_change(weight["B"], weight["C"]) > 1e-5
    # Phase C: all grids frozen, weights still train.
    assert _max_change(act["C"], act["end"]) == 0.0
    assert _max_change(weight["C"], weight["end"]) == 0.0
    assert _max_change(kernel["C"], kernel["end"]) > 1e-5
    assert quant.get_phase(qat_run.q_model) == "C"
    # One compiled step served all phases (the first call traces twice: optimizer slot creation).
    assert qat_run.train_step.experimental_get_tracing_count() == qat_run.traces_after_first


def test_phase_c_keeps_weights_in_frozen_ranges(qat_run):
    q_model = qat_run.q_model
    for wrapper in quant.conv_wrappers(q_model):
        kernel, _ = quant.latent_conv_weights(wrapper)
        ranges = wrapper.quantize_config.kernel_quantizer.built_vars[0]
        k, low, high = kernel.numpy(), ranges["min_var"].numpy(), ranges["max_var"].numpy()
        assert np.all(k >= low) and np.all(k <= high), wrapper.name


def test_post_update_clips_only_frozen_ranges():
    q_model = quant.build_qat_model(fused_student(channels=4, num_blocks=1), QAT_CONFIG)
    wrapper = q_model.get_layer("quant_block_0")
    kernel, _ = quant.latent_conv_weights(wrapper)
    ranges = wrapper.quantize_config.kernel_quantizer.built_vars[0]
    ranges["min_var"].assign(-0.1 * np.ones(4, np.float32))
    ranges["max_var"].assign(0.1 * np.ones(4, np.float32))
    outlier = np.zeros(kernel.shape, np.float32)
    outlier[1, 1, 0, 2], outlier[0, 0, 3, 1] = 0.5, -0.7
    kernel.assign(outlier)
    quant.set_phase(q_model, "B")
    quant.post_update(q_model)
    np.testing.assert_array_equal(kernel.numpy(), outlier)
    quant.set_phase(q_model, "C")
    quant.post_update(q_model)
    expected = np.clip(outlier, -0.1, 0.1)
    np.testing.assert_array_equal(kernel.numpy(), expected)


@pytest.mark.parametrize("percentile", [100.0, 99.9])
def test_calibration_is_the_exact_mean_of_batch_ranges(percentile):
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    config = configs.QATConfig(calibration_batches=4, range_percentile=percentile)
    q_model = quant.build_qat_model(fused_student(channels=8, num_blocks=2), config)
    batches = [synthetic_pair(rng, batch=2)[0] for _ in range(config.calibration_batches)]
    assert quant.calibrate(q_model, batches, config) == len(batches)

    # Reference for the stem: int8 weights on the symmetric per-channel grid of the current kernel,
    # bias on the int32 grid at scale (1/255) * s_w, ReLU, then the mean over batches of the k-th
    # largest value (k = 1 at percentile 100, 5 of the 2 x 16 x 16 x 8 values at 99.9).
    k = {100.0: 1, 99.9: 5}[percentile]
    wrapper = q_model.get_layer("quant_stem")
    kernel, bias = (v.numpy().astype(np.float64) for v in quant.latent_conv_weights(wrapper))
    s_w = np.abs(kernel).max(axis=(0, 1, 2)) / 127.0
    kernel_q = np.round(kernel / s_w) * s_w
    bias_q = np.round(bias / (s_w / 255.0)) * (s_w / 255.0)
    highs = [np.sort(tf.nn.relu(tf.nn.conv2d(x.astype(np.float64), kernel_q, 1, "SAME") + bias_q)
                     .numpy().ravel())[-k] for x in batches]
    stem_range = wrapper.quantize_config.output_vars()
    assert float(stem_range["min_var"].numpy()) == 0.0
    np.testing.assert_allclose(stem_range["max_var"].numpy(), np.mean(highs), rtol=1e-5)
    # The decay variables are back at their training value.
    assert all(np.isclose(v["ema_decay"].numpy(), config.ema_decay)
               for v in quant.quantizer_variables(q_model, "activation"))


def _integer_conv_reference(x_q, s_in, w_q, s_w, b_q, s_out):
    """LiteRT/XNNPACK int8 conv: exact int32 accumulator, float32 requantization, round half to
    even, clamp to [0, 255] (fused ReLU, zero point 0); returns the real values q * s_out."""
    acc = tf.nn.conv2d(x_q.astype(np.float64), w_q.astype(np.float64), 1, "SAME").numpy() + b_q
    assert np.abs(acc).max() < 2 ** 24
    multiplier = (np.float32(s_in) * s_w.astype(np.float32)) / np.float32(s_out)
    q = np.clip(np.rint(acc.astype(np.float32) * multiplier), 0, 255)
    return (q * np.float32(s_out)).astype(np.float32)


@pytest.mark.parametrize("scales", ["random", "powers_of_two"])
def test_requantize_reproduces_integer_arithmetic(scales):
    """A conv's float fake-quant output, requantized, equals the runtime's integer result exactly.

    With power-of-two scales every float value is exact and 1/16 of the accumulators land on a
    rounding tie: the runtime rounds those half to even, plain fake-quant rounds them up.
    """
    rng = np.random.default_rng(7)
    if scales == "random":
        s_in, s_out = np.float32(0.37 / 255), np.float32(6.1 / 255)
        s_w = rng.uniform(0.002, 0.02, 16).astype(np.float32)
        x_max, w_max = 255, 127
    else:
        s_in, s_out = np.float32(2.0 ** -8), np.float32(2.0 ** -11)
        s_w = np.full(16, 2.0 ** -7, np.float32)  # requantization multiplier 1/16
        x_max, w_max = 31, 16  # keeps most outputs inside the 8-bit range
    x_q = rng.integers(0, x_max + 1, (2, 12, 12, 16))
    w_q = rng.integers(-w_max, w_max + 1, (3, 3, 16, 16))
    b_q = rng.integers(-3000, 3000, 16)
    # The float graph of the QAT model: fake-quant input and kernel, int32-grid bias, ReLU.
    acc_scale = np.float32(s_in) * s_w
    y = tf.nn.relu(tf.nn.conv2d((x_q * s_in).astype(np.float32), (w_q * s_w).astype(np.float32),
                                1, "SAME") + (b_q * acc_scale).astype(np.float32))
    expected = _integer_conv_reference(x_q, s_in, w_q, s_w, b_q, s_out)
    high = tf.constant(s_out * 255)
    got = quant.quantizers.requantize(y, tf.constant(0.0), high, acc_scale)
    np.testing.assert_array_equal(got.numpy(), expected)
    assert 0 < np.mean(expected == 255 * s_out) < 0.5  # the clamp is exercised
    if scales == "powers_of_two":
        plain = tf.quantization.fake_quant_with_min_max_vars(y, 0.0, high).numpy()
        assert np.mean(plain != expected) > 0.01
    # Straight-through gradient: 1 inside the range, 0 where the output is clamped.
    with tf.GradientTape() as tape:
        tape.watch(y)
        out = quant.quantizers.requantize(y, tf.constant(0.0), high, acc_scale)
    grad = tape.gradient(out, y).numpy()
    np.testing.assert_array_equal(grad, (y.numpy() <= s_out * 255).astype(np.float32))


@pytest.mark.parametrize("percentile", [100.0, 99.9, 97.0])
def test_batch_range_percentile(percentile):
    x = np.random.default_rng(8).standard_t(3, (4, 9, 9, 5)).astype(np.float32)
    low, high = quant.quantizers.batch_range(tf.constant(x), percentile)
    k = int(np.ceil((1 - percentile / 100) * x.size)) if percentile < 100 else 1
    ordered = np.sort(x.ravel())
    assert float(high) == ordered[-k] and float(low) == ordered[k - 1]
    # Non-negative activations (ReLU): the low end is 0.
    low, high = quant.quantizers.batch_range(tf.constant(np.abs(x)), percentile)
    assert float(low) == 0.0 and float(high) == np.sort(np.abs(x).ravel())[-k]


def test_checkpoint_round_trip(qat_run, tmp_path):
    q_model = qat_run.q_model
    step = tf.Variable(TOTAL_STEPS, dtype=tf.int64)
    path = tf.train.Checkpoint(model=q_model, optimizer=qat_run.optimizer, step=step).save(
        os.fspath(tmp_path / "ckpt"))

    restored = quant.build_qat_model(fused_student(), QAT_CONFIG)  # never called before restoring
    optimizer = keras.optimizers.Adam(2e-3)
    restored_step = tf.Variable(0, dtype=tf.int64)
    status = tf.train.Checkpoint(model=restored, optimizer=optimizer, step=restored_step).read(path)
    status.expect_partial()  # the save counter is not restored on purpose
    status.assert_existing_objects_matched()
    assert int(restored_step) == TOTAL_STEPS
    assert quant.get_phase(restored) == "C"
    for saved, loaded in zip(q_model.variables, restored.variables):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy(), err_msg=loaded.name)
    lr = qat_run.pairs[0][0]
    np.testing.assert_array_equal(q_model(lr, training=False).numpy(),
                                  restored(lr, training=False).numpy())
    # Training resumes on the restored model (same compiled-step recipe).
    loss = make_train_step(restored, optimizer)(*qat_run.pairs[1])
    assert np.isfinite(float(loss))


def test_kernel_outlier_clip_per_channel():
    rng = np.random.default_rng(2)
    kernel = rng.normal(0.0, [0.1, 1.0], (3, 3, 16, 2)).astype(np.float32)
    kernel[1, 1, 0, 0] = 5.0
    clipped = quant.clip_kernel_outliers(kernel, "std", 3.0)
    flat = kernel.reshape(-1, 2).astype(np.float64)
    low, high = flat.mean(0) - 3.0 * flat.std(0), flat.mean(0) + 3.0 * flat.std(0)
    assert clipped[1, 1, 0, 0] == pytest.approx(high[0], rel=1e-6)
    np.testing.assert_allclose(clipped, np.clip(kernel, low, high), rtol=1e-6)
    clipped = quant.clip_kernel_outliers(kernel, "percentile", 99.0)
    low, high = np.percentile(flat, [1.0, 99.0], axis=0)
    assert clipped.max(axis=(0, 1, 2)) == pytest.approx(high, rel=1e-6)
    assert clipped.min(axis=(0, 1, 2)) == pytest.approx(low, rel=1e-6)


def test_build_rejects_a_separate_relu_layer():
    x = keras.Input((None, None, 3))
    h = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, padding="same")(x))
    model = keras.Model(x, DepthToSpace(2)(keras.layers.Conv2D(12, 3, padding="same")(h)))
    with pytest.raises(ValueError, match="not part of the fused deploy graph"):
        quant.build_qat_model(model, QAT_CONFIG)


def test_check_fused_fails_loudly():
    model = fused_student(channels=4, num_blocks=1)
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    x = np.random.default_rng(3).uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)
    assert models.check_fused(model, twin, x) == 0.0
    twin.get_layer("tail").bias.assign_add(np.full(27, 1e-3, np.float32))
    with pytest.raises(ValueError, match="differs from the multi-branch model"):
        models.check_fused(model, twin, x)


@keras.utils.register_keras_serializable(package="test_qat")
class _ConvBN(keras.layers.Layer):
    """1x1 conv followed by BN, nested in a layer like the MobileOne branches."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 1)
        self.bn = keras.layers.BatchNormalization(momentum=0.9)

    def call(self, inputs, training=None):
        return self.bn(self.conv(inputs), training=training)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def _bn_reference(batches, gamma, beta, eps, kernel, bias):
    """NumPy float64 cumulative averages of both BNs' training-mode batch statistics."""
    stats = {"a": [], "b": []}
    for x in batches:
        x = x.astype(np.float64)
        mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
        # Keras BN normalises with the biased batch variance but averages the unbiased one.
        stats["a"].append((mean, x.var(axis=(0, 1, 2), ddof=1)))
        h = (x - mean) / np.sqrt(var + eps) * gamma + beta
        y = h @ kernel + bias
        stats["b"].append((y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2), ddof=1)))
    return {k: tuple(np.mean(s, axis=0) for s in zip(*v)) for k, v in stats.items()}


def test_recalibrate_bn_is_an_exact_cumulative_average():
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    x = keras.Input((None, None, 3))
    bn_a = keras.layers.BatchNormalization(name="bn_a")
    model = keras.Model(x, _ConvBN(5, name="nested")(bn_a(x)))
    bn_a.set_weights([rng.uniform(0.5, 2, 3), rng.normal(0, 1, 3), np.zeros(3), np.ones(3)])
    before = [w.copy() for w in model.get_weights()]
    batches = [rng.normal(rng.normal(0, 2, 3), rng.uniform(0.5, 3, 3), (2, 6, 7, 3))
               .astype(np.float32) for _ in range(5)]

    recalibrated = quant.recalibrate_bn(model, (b for b in batches), num_batches=5)

    for saved, now in zip(before, model.get_weights()):  # the input model is untouched
        np.testing.assert_array_equal(saved, now)
    gamma, beta, _, _ = bn_a.get_weights()
    kernel, bias = model.get_layer("nested").conv.get_weights()
    reference = _bn_reference(batches, gamma, beta, bn_a.epsilon, kernel[0, 0], bias)
    got_a = recalibrated.get_layer("bn_a")
    got_b = recalibrated.get_layer("nested").bn
    for got, (mean, var) in ((got_a, reference["a"]), (got_b, reference["b"])):
        np.testing.assert_allclose(got.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.moving_variance.numpy(), var, rtol=1e-5, atol=1e-6)
        assert got.momentum != 0.0  # restored after the forward passes


def test_stage3_pipeline_on_the_training_form():
    """recalibrate_bn -> reparameterize -> check_fused -> build_qat_model -> calibrate."""
    keras.utils.set_random_seed(6)
    rng = np.random.default_rng(6)
    student = models.build_student(channels=8, num_blocks=2, num_branches=2)
    batches = [synthetic_pair(rng, batch=2)[0] for _ in range(3)]
    recalibrated = quant.recalibrate_bn(student, batches, num_batches=3)
    bns = quant.calibration.batch_norm_layers(recalibrated)
    assert len(bns) == 6  # kxk, 1x1 and identity branch of both blocks
    assert not np.allclose(bns[0].moving_variance.numpy(), 1.0)  # no longer the initial statistics
    fused = models.reparameterize(recalibrated)
    assert models.check_fused(recalibrated, fused, batches[0]) < 1e-5
    q_model = quant.build_qat_model(fused, QAT_CONFIG)
    quant.calibrate(q_model, batches, QAT_CONFIG)
    # Before any training the fake-quant model follows its float graph up to quantization noise.
    x = batches[1]
    mse = np.mean((q_model(x, training=False).numpy() - np.clip(fused(x).numpy(), 0, 1)) ** 2)
    assert 10 * np.log10(1 / mse) > 30, mse


def test_multibranch_qat_fuses_after_training(tmp_path):
    """graph="multibranch": QAT on the training form, then fused into an int8-exportable model."""
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    config = configs.QATConfig(phase_a=0.4, phase_b=0.3, calibration_batches=2, graph="multibranch")
    model_kwargs = {"channels": 8, "num_blocks": 2, "num_branches": 2}
    pairs = [synthetic_pair(rng, batch=2) for _ in range(4)]
    # As in Stage 3: BN statistics first, so the ranges observed in training mode fit inference.
    student = quant.recalibrate_bn(models.build_student(**model_kwargs),
                                   [lr for lr, _ in pairs], num_batches=4)
    q_model = quant.build_qat_model(student, config)
    quant.calibrate(q_model, (lr for lr, _ in pairs), config)
    train_step = make_train_step(q_model, keras.optimizers.Adam(1e-3))
    for step in range(1, 7):
        quant.set_phase(q_model, quant.phase_for_step(config, step, 6))
        train_step(*pairs[step % len(pairs)])
    assert quant.get_phase(q_model) == "C"
    # post_update kept every branch kernel inside its frozen per-channel range.
    branch_kernels = [(w, v) for w, v in quant.quantized_kernels(q_model) if "conv_" in w.name]
    assert len(branch_kernels) == 4  # k x k and 1x1 kernels of both blocks
    for kernel, ranges in branch_kernels:
        assert np.all(np.abs(kernel.numpy()) <= ranges["max_var"].numpy() + 1e-7), kernel.name

    fused = quant.fuse_after_qat(q_model, student, config)
    assert quant.get_phase(fused) == "C"
    assert not any(isinstance(layer.layer, models.MobileOneConv2D)
                   for layer in quant.wrappers(fused))
    x = pairs[0][0]
    reference = q_model(x, training=False).numpy()
    diff = np.abs(fused(x, training=False).numpy() - reference)
    # The two differ by the rounding of fused vs per-branch kernels (the identity branch widens the
    # fused per-channel ranges): measured mean |difference| 0.0137 (max 0.19). The same fused
    # model with tfmot's initial [-6, 6] activation ranges instead of the learned ones (the block
    # outputs reach ~16): 0.046 (max 0.90).
    template = models.build_student(reparameterized=True, **model_kwargs)
    uncopied = quant.build_qat_model(quant.float_twin(fused, template),
                                     configs.QATConfig(graph="fused"))
    for (_, source), (_, target) in zip(quant.quantized_kernels(fused),
                                        quant.quantized_kernels(uncopied)):
        for key in ("min_var", "max_var", "frozen"):
            target[key].assign(source[key])
    uncopied_diff = np.abs(uncopied(x, training=False).numpy() - reference)
    assert diff.mean() < 6 / 255 and diff.mean() < uncopied_diff.mean() / 2, (
        diff.mean(), uncopied_diff.mean())

    # A Stage-3 work dir of such a run loads as the fused model.
    tf.train.Checkpoint(model=q_model).save(os.fspath(tmp_path / workdir.CHECKPOINTS / "ckpt"))
    run_config = configs.TrainConfig(stage=3, model=configs.ModelConfig(**model_kwargs), qat=config)
    fileio.write_json(os.fspath(tmp_path / workdir.CONFIG), run_config.to_dict())
    loaded = workdir.load(os.fspath(tmp_path), "qat")
    np.testing.assert_array_equal(loaded(x, training=False).numpy(),
                                  fused(x, training=False).numpy())
    tflite_lib.check_int8(tflite_lib.convert_qat(loaded, (1, 16, 16, 3)))


def test_anchored_qat_graph(anchored_qat_run):
    """Anchor copies carry the input grid, the residual tail a learned range, the anchor Add [0, 1]."""
    q_model = anchored_qat_run.q_model
    by_name = {w.layer.name: w for w in quant.wrappers(q_model)}
    for name in ("anchor_row", "anchor"):
        assert type(by_name[name].quantize_config) is quant.quantize_configs.NoOpQuantizeConfig
    add = by_name["anchor_add"]
    assert isinstance(add.layer, RuntimeAdd)
    (tail_vars, anchor_vars), add_vars = add.layer._ranges  # pylint: disable=protected-access
    (input_layer,) = [layer for layer in q_model.layers if type(layer).__name__ == "QuantizeLayer"]
    input_vars = input_layer.quantizer.built_vars[0]
    assert anchor_vars is input_vars  # the anchor is the pinned input, copied
    assert [float(add_vars[k]) for k in ("min_var", "max_var")] == [0.0, 1.0]
    tail = by_name["tail"].quantize_config
    assert tail_vars is tail.output_vars()
    # A residual: a learned range on both sides of 0, frozen by the curriculum like an activation.
    assert float(tail_vars["min_var"]) < -0.05 and float(tail_vars["max_var"]) > 0.05
    assert any(v is tail_vars for v in quant.quantizer_variables(q_model, "activation"))
    assert bool(tail_vars["frozen"])
    # The Add output is what the model outputs: its [0, 1] grid, rearranged.
    x = anchored_qat_run.pairs[0][0]
    y = q_model(x, training=False).numpy()
    assert y.min() >= 0.0 and y.max() <= 1.0
    np.testing.assert_allclose(y * 255.0, np.round(y * 255.0), atol=1e-4)


def _reloaded_stage3_run(run, tmp_path):
    """Saves a `small_qat_run` as a Stage-3 work directory and loads it back from config.json.

    Returns:
        (input batch, the reloaded "qat" model, its "float_twin"); the reloaded QAT model is
        checked to equal the saved one exactly.
    """
    run_config = configs.TrainConfig(stage=3, model=run.model_config, qat=QAT_CONFIG)
    fileio.write_json(os.fspath(tmp_path / workdir.CONFIG), run_config.to_dict())
    tf.train.Checkpoint(model=run.q_model).save(os.fspath(tmp_path / workdir.CHECKPOINTS / "ckpt"))
    x = run.pairs[1][0]
    loaded = workdir.load(os.fspath(tmp_path), "qat")
    np.testing.assert_array_equal(loaded(x, training=False).numpy(),
                                  run.q_model(x, training=False).numpy())
    return x, loaded, workdir.load(os.fspath(tmp_path), "float_twin")


def test_anchored_stage3_workdir_loads_every_form(anchored_qat_run, tmp_path):
    """qat_checkpoint_model rebuilds the anchored QAT graph; the float twin keeps the anchor."""
    x, loaded, twin = _reloaded_stage3_run(anchored_qat_run, tmp_path)
    assert models.student_config(twin)["anchor"]
    # The twin holds the latent weights: it follows the fake-quant model up to quantization noise.
    diff = twin(x, training=False).numpy() - loaded(x, training=False).numpy()
    assert np.abs(diff).mean() < 2 / 255, np.abs(diff).mean()


# Slow (over 10 s on a fast 2-core CPU): kept out of the default run (`--run-slow`).
@pytest.mark.slow
def test_multibranch_qat_with_the_anchor():
    """The multi-branch ablation quantizes an anchored student too and fuses it after QAT."""
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    config = configs.QATConfig(calibration_batches=2, graph="multibranch")
    student = models.build_student(channels=8, num_blocks=2, num_branches=2, anchor=True)
    batches = [synthetic_pair(rng, batch=2) for _ in range(2)]
    student = quant.recalibrate_bn(student, [lr for lr, _ in batches], num_batches=2)
    q_model = quant.build_qat_model(student, config)
    quant.calibrate(q_model, (lr for lr, _ in batches), config)
    make_train_step(q_model, keras.optimizers.Adam(1e-3))(*batches[0])
    fused = quant.fuse_after_qat(q_model, student, config)
    learned = q_model.get_layer("quant_tail").quantize_config.output_vars()
    copied = fused.get_layer("quant_tail").quantize_config.output_vars()
    assert float(learned["min_var"]) < 0
    for key in ("min_var", "max_var"):
        assert float(copied[key]) == float(learned[key])
    assert isinstance(fused.get_layer("quant_anchor_add").layer, RuntimeAdd)
    x = batches[1][0]
    diff = np.abs(fused(x, training=False).numpy() - q_model(x, training=False).numpy())
    assert diff.mean() < 6 / 255, diff.mean()
    tflite_lib.check_int8(tflite_lib.convert_qat(fused, (1, 16, 16, 3)))


# ----------------------------------------------------------------------------------------------
# Depthwise convolutions, exact integer sums, and the baselines through QAT.

def test_depthwise_kernels_get_per_channel_ranges_and_clipping():
    config = configs.QATConfig(calibration_batches=1, kernel_clip="percentile",
                               kernel_clip_value=90.0)
    fused = models.build_student(block_type="repdw", channels=4, num_blocks=1, reparameterized=True)
    rng = np.random.default_rng(9)
    # Channels of very different sizes: one shared range would show.
    dw_kernel = rng.normal(0.0, 1.0, (3, 3, 4, 1)) * np.array([1.0, 0.1, 3.0, 0.5])[:, None]
    fused.get_layer("block_0_dw").depthwise_kernel.assign(dw_kernel)
    q_model = quant.build_qat_model(fused, config)
    wrapper = q_model.get_layer("quant_block_0_dw")
    assert type(wrapper.quantize_config) is quant.quantize_configs.DepthwiseQuantizeConfig
    assert type(wrapper.layer) is RuntimeDepthwiseConv2D and wrapper.layer._ranges is not None
    kernel, bias = quant.latent_conv_weights(wrapper)
    assert kernel.shape == (3, 3, 4, 1) and bias.shape == (4,)
    # The outlier clip ran per channel of the depthwise kernel (its axis 2).
    high = np.percentile(dw_kernel.reshape(9, 4), 90.0, axis=0)
    np.testing.assert_allclose(kernel.numpy().reshape(9, 4).max(axis=0), high, rtol=1e-5)
    quant.calibrate(q_model, [synthetic_pair(rng, batch=1)[0]], config)
    q_model(synthetic_pair(rng, batch=1)[0], training=True)  # live weight ranges follow
    ranges = wrapper.quantize_config.kernel_quantizer.built_vars[0]
    assert ranges["max_var"].shape == (4,)
    np.testing.assert_allclose(ranges["max_var"].numpy(), np.abs(kernel.numpy()).max(axis=(0, 1, 3)),
                               rtol=1e-6)
    # Phase C clips each channel to its own frozen range.
    limits = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    ranges["min_var"].assign(-limits)
    ranges["max_var"].assign(limits)
    outliers = np.ones((3, 3, 4, 1), np.float32) * np.float32([0.5, -0.05, -0.7, 0.35])[:, None]
    kernel.assign(outliers)
    quant.set_phase(q_model, "C")
    quant.post_update(q_model)
    np.testing.assert_array_equal(kernel.numpy(),
                                  np.clip(outliers, -limits[:, None], limits[:, None]))


def test_runtime_conv_sums_exactly_where_a_float32_conv_does_not():
    """Large accumulators (3x3x56 products, about 2e6 steps): the runtime conv's output is the
    exact int32 accumulator times s_in * s_w; a plain float32 conv misses it by whole steps."""
    rng = np.random.default_rng(11)
    cin, cout = 56, 8
    x_levels = rng.integers(0, 256, (2, 9, 9, cin))
    w_levels = rng.integers(0, 65, (3, 3, cin, cout))
    b_levels = rng.integers(-3000, 3000, cout)
    input_max = np.float32(0.37)
    kernel_max = rng.uniform(0.05, 0.5, cout).astype(np.float32)
    variables = {"min_var": tf.Variable(0.0), "max_var": tf.Variable(input_max)}
    kernel_vars = {"min_var": tf.Variable(-kernel_max), "max_var": tf.Variable(kernel_max)}
    s_in = quant.quantizers.activation_scale(variables).numpy()
    s_w = quant.quantizers.weight_scale(kernel_vars).numpy()
    acc_scale = s_in * s_w
    layer = RuntimeConv2D(cout, 3, padding="same")
    x = tf.constant((x_levels * s_in).astype(np.float32))
    layer.build(x.shape)
    layer.set_weights([(w_levels * s_w).astype(np.float32), (b_levels * acc_scale).astype(np.float32)])
    layer.link(variables, kernel_vars)
    exact = tf.nn.conv2d(x_levels.astype(np.float64), w_levels.astype(np.float64), 1,
                         "SAME").numpy() + b_levels
    assert np.abs(exact).max() > 2e6
    got = np.round(layer(x).numpy() / acc_scale)
    np.testing.assert_array_equal(got, exact)
    layer.runtime_rounding = False  # the plain float32 conv
    assert np.mean(np.round(layer(x).numpy() / acc_scale) != exact) > 0.01
    # Training sees the plain conv's gradients.
    layer.runtime_rounding = True
    gradients = []
    for runtime in (True, False):
        layer.runtime_rounding = runtime
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x) * 10.0))
        gradients.append(tape.gradient(loss, [x, layer.kernel, layer.bias]))
    for runtime, plain in zip(*gradients):
        np.testing.assert_allclose(runtime.numpy(), plain.numpy(), rtol=1e-3,
                                   atol=1e-3 * np.abs(plain.numpy()).max())


def test_every_arch_quantizes_like_the_student(arch_qat_run):
    """Every conv: the student's exact requantization; ABPN's anchor: the student's anchor."""
    q_model = arch_qat_run.q_model
    convs = [layer for layer in arch_qat_run.fused.layers
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    wrappers = quant.conv_wrappers(q_model)
    assert [w.layer.name for w in wrappers] == [c.name for c in convs]
    for wrapper in wrappers:
        depthwise = isinstance(wrapper.layer, keras.layers.DepthwiseConv2D)
        assert type(wrapper.layer) is (RuntimeDepthwiseConv2D if depthwise else RuntimeConv2D)
        assert wrapper.layer._ranges is not None  # pylint: disable=protected-access
        assert wrapper.quantize_config.output_tensor_quantizer().linked, wrapper.name
        assert wrapper.quantize_config.bias_quantizer.linked, wrapper.name
        ranges = wrapper.quantize_config.kernel_quantizer.built_vars[0]
        assert ranges["max_var"].shape == (wrapper.layer.bias.shape[0],), wrapper.name
    by_name = {w.layer.name: w for w in quant.wrappers(q_model)}
    tail_range = by_name["tail"].quantize_config.output_range
    if arch_qat_run.model_config.anchor:
        assert tail_range is None and isinstance(by_name["anchor_add"].layer, RuntimeAdd)
        assert by_name["anchor_add"].quantize_config.output_range == (0.0, 1.0)
        for name in ("anchor_row", "anchor"):
            assert type(by_name[name].quantize_config) is quant.quantize_configs.NoOpQuantizeConfig
    else:
        assert tail_range == (0.0, 1.0)
    x = arch_qat_run.pairs[0][0]
    y = q_model(x, training=False).numpy()
    assert y.shape == (4, 48, 48, 3) and y.min() >= 0.0 and y.max() <= 1.0
    np.testing.assert_allclose(y * 255.0, np.round(y * 255.0), atol=1e-4)


def test_stage3_workdir_of_every_arch_loads_every_form(arch_qat_run, tmp_path):
    """Checkpoints are rebuilt from config.json: the QAT model and the float twin of its arch."""
    x, loaded, twin = _reloaded_stage3_run(arch_qat_run, tmp_path)
    kwargs = models.student_config(twin)
    assert kwargs.get("arch", "student") == arch_qat_run.model_config.arch
    # The twin holds the latent weights, and follows the fake-quant model up to quantization noise.
    expected = quant.float_twin(arch_qat_run.q_model, models.build_student(
        arch_qat_run.model_config, reparameterized=True))
    assert twin.get_config() == expected.get_config()
    for a, b in zip(twin.get_weights(), expected.get_weights()):
        np.testing.assert_array_equal(a, b)
    diff = twin(x, training=False).numpy() - loaded(x, training=False).numpy()
    assert np.abs(diff).mean() < 2 / 255, np.abs(diff).mean()
