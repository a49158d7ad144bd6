"""Losses against independent NumPy references on random [0, 1] images."""
import math

import numpy as np
import pytest
import tensorflow as tf

from keras_sr import configs, losses


@pytest.fixture(autouse=True, scope="module")
def _full_float32_matmul():
    # On Ampere+ GPUs TensorFlow runs float32 matmuls (the DCT's einsums) in TF32 by default, about
    # 1e-3 relative error; the tight tolerances against float64 references need plain float32.
    enabled = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(enabled)


def _images(seed, shape=(2, 6, 9, 3)):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def _dct2_reference(x):
    """Orthonormal 2-D DCT-II of (B, H, W, C) by the explicit double cosine sum, in float64."""
    x = x.astype(np.float64)
    _, height, width, _ = x.shape
    h = np.arange(height)[:, None]
    w = np.arange(width)[None, :]
    out = np.zeros_like(x)
    for u in range(height):
        for v in range(width):
            a_u = math.sqrt((1.0 if u == 0 else 2.0) / height)
            a_v = math.sqrt((1.0 if v == 0 else 2.0) / width)
            basis = (np.cos(math.pi * (2 * h + 1) * u / (2 * height))
                     * np.cos(math.pi * (2 * w + 1) * v / (2 * width)))
            out[:, u, v, :] = a_u * a_v * np.sum(x * basis[None, :, :, None], axis=(1, 2))
    return out


def _noisy_teacher(hr, seed, sigma):
    noise = np.random.default_rng(seed).normal(0.0, sigma, hr.shape)
    return np.clip(hr + noise, 0.0, 1.0).astype(np.float32)


def _kd_weights_reference(teacher, y, gamma, w_min, w_max):
    error = np.abs(teacher.astype(np.float64) - y).mean(axis=-1)
    return np.clip(np.exp(-gamma * error), w_min, w_max)


def _kd_reference(y_hat, teacher, y, gamma, w_min, w_max):
    weights = _kd_weights_reference(teacher, y, gamma, w_min, w_max)
    return np.mean(weights * np.abs(y_hat.astype(np.float64) - teacher).mean(axis=-1))


def _charbonnier_reference(y_hat, y, eps):
    return np.mean(np.sqrt((y_hat.astype(np.float64) - y) ** 2 + eps ** 2))


def _stage2_reference(y_hat, hr, teacher, cfg):
    total = (cfg.charbonnier_weight * _charbonnier_reference(y_hat, hr, cfg.eps)
             + cfg.dct_weight * np.mean(np.abs(_dct2_reference(y_hat) - _dct2_reference(hr))))
    if teacher is not None:
        total += cfg.kd_weight * _kd_reference(y_hat, teacher, hr, cfg.gamma, cfg.w_min, cfg.w_max)
    return total


def test_l1_and_charbonnier_match_numpy():
    y_hat, y = _images(0), _images(1)
    np.testing.assert_allclose(losses.l1(y_hat, y).numpy(),
                               np.mean(np.abs(y_hat.astype(np.float64) - y)), rtol=1e-5)
    for eps in (1e-3, 0.1):
        np.testing.assert_allclose(losses.charbonnier(y_hat, y, eps).numpy(),
                                   _charbonnier_reference(y_hat, y, eps), rtol=1e-5)
    # eps^2 sits inside the square root: a perfect prediction costs exactly eps.
    np.testing.assert_allclose(losses.charbonnier(y, y, 1e-3).numpy(), 1e-3, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 7, 192])
def test_dct_matrix_is_orthonormal_and_matches_the_formula(n):
    c = losses.dct_matrix(n).numpy().astype(np.float64)
    np.testing.assert_allclose(c @ c.T, np.eye(n), atol=2e-6)
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    expected = np.where(k == 0, math.sqrt(1.0 / n), math.sqrt(2.0 / n)) * np.cos(
        math.pi * (2 * i + 1) * k / (2 * n))
    np.testing.assert_allclose(c, expected, atol=1e-6)


def test_dct2d_matches_the_explicit_cosine_sum():
    x = _images(2, (2, 6, 5, 3))
    np.testing.assert_allclose(losses.dct2d(x).numpy(), _dct2_reference(x), atol=2e-6)


def test_dct2d_of_constant_and_basis_images():
    height, width = 4, 6
    constant = np.full((1, height, width, 3), 0.25, np.float32)
    coeffs = losses.dct2d(constant).numpy()
    # All the energy of a constant image is in the DC term: 0.25 * sqrt(H * W).
    np.testing.assert_allclose(coeffs[0, 0, 0], 0.25 * math.sqrt(height * width), rtol=1e-6)
    coeffs[0, 0, 0] = 0.0
    np.testing.assert_allclose(coeffs, 0.0, atol=1e-6)
    # The (k, l) = (1, 2) basis image maps to one coefficient; orthonormality makes it sum(basis^2).
    h, w = np.arange(height)[:, None], np.arange(width)[None, :]
    basis = (np.cos(math.pi * (2 * h + 1) * 1 / (2 * height))
             * np.cos(math.pi * (2 * w + 1) * 2 / (2 * width)))
    coeffs = losses.dct2d(basis[None, :, :, None].astype(np.float32)).numpy()[0, :, :, 0]
    expected = np.zeros((height, width))
    expected[1, 2] = np.sum(basis ** 2) * math.sqrt(2.0 / height) * math.sqrt(2.0 / width)
    np.testing.assert_allclose(coeffs, expected, atol=1e-6)


def test_dct_l1_matches_numpy():
    y_hat, y = _images(3), _images(4)
    expected = np.mean(np.abs(_dct2_reference(y_hat) - _dct2_reference(y)))
    np.testing.assert_allclose(losses.dct_l1(y_hat, y).numpy(), expected, rtol=1e-5)


def test_kd_weights_reach_w_max_for_an_exact_teacher_and_w_min_far_off():
    hr = _images(5)
    exact = losses.kd_weights(hr, hr, gamma=20.0, w_min=0.1, w_max=0.8).numpy()
    np.testing.assert_array_equal(exact, np.full(hr.shape[:3], 0.8, np.float32))
    np.testing.assert_array_equal(losses.kd_weights(hr, hr, 20.0, 0.1, 1.0).numpy(), 1.0)
    far_off = losses.kd_weights(1.0 - hr, hr, gamma=20.0, w_min=0.1, w_max=1.0).numpy()
    far_error = np.abs(1.0 - 2.0 * hr).mean(axis=-1)
    np.testing.assert_array_equal(far_off[far_error > 0.2], np.float32(0.1))
    # Between the clips the weight is exp(-gamma * e): e = 0.05 with gamma = 20 gives exp(-1).
    middle = losses.kd_weights(np.clip(hr + 0.05, 0, 1), np.clip(hr, 0, 0.95), 20.0, 0.1, 1.0)
    np.testing.assert_allclose(middle.numpy(), math.exp(-1.0), rtol=1e-5)
    teacher = _noisy_teacher(hr, 6, 0.05)
    np.testing.assert_allclose(losses.kd_weights(teacher, hr, 20.0, 0.1, 0.9).numpy(),
                               _kd_weights_reference(teacher, hr, 20.0, 0.1, 0.9), rtol=1e-5)


def test_confidence_kd_matches_numpy_and_its_weights_carry_no_gradient():
    y_hat, hr = _images(7), _images(8)
    teacher = _noisy_teacher(hr, 9, 0.05)
    y_hat_t, teacher_t, hr_t = (tf.constant(a) for a in (y_hat, teacher, hr))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([y_hat_t, teacher_t, hr_t])
        loss = losses.confidence_kd(y_hat_t, teacher_t, hr_t, gamma=20.0, w_min=0.1, w_max=1.0)
    np.testing.assert_allclose(loss.numpy(), _kd_reference(y_hat, teacher, hr, 20.0, 0.1, 1.0),
                               rtol=1e-5)
    # hr enters only through the weights, so it gets no gradient at all; the student and the teacher
    # get the gradient of mean_p w(p) mean_c |y_hat - t| with w held constant.
    grad_hr = tape.gradient(loss, hr_t, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    np.testing.assert_array_equal(grad_hr.numpy(), 0.0)
    weights = _kd_weights_reference(teacher, hr, 20.0, 0.1, 1.0)[..., None]
    expected = weights * np.sign(y_hat - teacher) / y_hat.size
    np.testing.assert_allclose(tape.gradient(loss, y_hat_t).numpy(), expected, rtol=1e-5,
                               atol=1e-12)
    np.testing.assert_allclose(tape.gradient(loss, teacher_t).numpy(), -expected, rtol=1e-5,
                               atol=1e-12)


def test_stage2_loss_with_and_without_teacher():
    y_hat, hr = _images(10), _images(11)
    teacher = _noisy_teacher(hr, 12, 0.03)
    cfg = configs.LossConfig(charbonnier_weight=1.0, dct_weight=0.3, kd_weight=0.7, gamma=15.0,
                            w_min=0.2, w_max=0.9)
    loss = losses.make_loss(cfg)
    assert cfg.uses_teacher
    total, terms = loss(y_hat, {"lr": y_hat[:, ::3, ::3], "hr": hr, "teacher": teacher})
    assert sorted(terms) == ["charbonnier", "dct", "kd"]
    np.testing.assert_allclose(total.numpy(), _stage2_reference(y_hat, hr, teacher, cfg), rtol=1e-5)
    np.testing.assert_allclose(terms["kd"].numpy(),
                               _kd_reference(y_hat, teacher, hr, 15.0, 0.2, 0.9), rtol=1e-5)

    # Without teacher records the trainer asks for the loss with_teacher=False: Charbonnier + DCT.
    expected = _stage2_reference(y_hat, hr, None, cfg)
    total, terms = losses.make_loss(cfg, with_teacher=False)(y_hat, {"hr": hr, "teacher": teacher})
    assert sorted(terms) == ["charbonnier", "dct"]
    np.testing.assert_allclose(total.numpy(), expected, rtol=1e-5)
    total, terms = loss.compute(y_hat, hr)
    assert sorted(terms) == ["charbonnier", "dct"]
    np.testing.assert_allclose(total.numpy(), expected, rtol=1e-5)
    # A batch without the teacher the loss was built for is a pipeline bug, not a silent fallback.
    with pytest.raises(KeyError, match="teacher"):
        loss(y_hat, {"hr": hr})


def test_make_loss_from_the_stored_config_dict():
    """config.json holds the loss as LossConfig fields, or (older runs) named "l1" / "stage2"."""
    y_hat, hr = _images(25), _images(26)
    teacher = _noisy_teacher(hr, 27, 0.04)
    fields = {"charbonnier_weight": 1.0, "dct_weight": 0.2, "kd_weight": 0.5, "gamma": 10.0,
              "w_min": 0.05, "w_max": 0.95, "eps": 1e-2}
    for stored in (fields, {"name": "stage2", **fields}):
        config = configs.TrainConfig.from_dict({"stage": 2, "loss": stored}).loss
        assert config == configs.LossConfig(**fields)
    loss = losses.make_loss(config)
    total, _ = loss(y_hat, {"hr": hr, "teacher": teacher})
    np.testing.assert_allclose(total.numpy(), _stage2_reference(y_hat, hr, teacher, loss.config),
                               rtol=1e-5)
    legacy_l1 = configs.TrainConfig.from_dict({"stage": 1, "loss": {"name": "l1"}}).loss
    assert legacy_l1 == configs.LossConfig.l1_only()
    with pytest.raises(ValueError, match="kd_wieght"):
        configs.TrainConfig.from_dict({"stage": 2, "loss": {"name": "stage2", "kd_wieght": 1.0}})


def test_stage1_l1_loss_ignores_the_teacher():
    y_hat, hr = _images(13), _images(14)
    loss = losses.make_loss(configs.LossConfig.l1_only())
    assert not loss.config.uses_teacher
    total, terms = loss(y_hat, {"hr": hr, "teacher": _images(15)})
    assert list(terms) == ["l1"]
    np.testing.assert_allclose(total.numpy(), np.mean(np.abs(y_hat.astype(np.float64) - hr)),
                               rtol=1e-5)


def test_dynamic_shapes_in_tf_function_trace_once():
    loss = losses.make_loss(configs.LossConfig())
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)

    @tf.function(input_signature=[spec, spec, spec])
    def step(y_hat, hr, teacher):
        return loss(y_hat, {"hr": hr, "teacher": teacher})[0]

    for seed, shape in ((16, (2, 6, 9, 3)), (17, (1, 12, 5, 3))):
        y_hat, hr, teacher = (_images(seed + offset, shape) for offset in (0, 100, 200))
        np.testing.assert_allclose(step(y_hat, hr, teacher).numpy(),
                                   _stage2_reference(y_hat, hr, teacher, loss.config), rtol=1e-5)
    assert step.experimental_get_tracing_count() == 1


def test_per_replica_mean_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    loss = losses.make_loss(configs.LossConfig())
    y_hat, hr, teacher = _images(18), _images(19), _images(20)

    @tf.function
    def replica_loss():
        # The trainer's convention: each replica's local-batch mean divided by the replica count.
        batch = {"hr": tf.constant(hr), "teacher": tf.constant(teacher)}
        total, _ = loss(tf.constant(y_hat), batch)
        return total / strategy.num_replicas_in_sync

    per_replica = strategy.run(replica_loss)
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    np.testing.assert_allclose(total.numpy(), _stage2_reference(y_hat, hr, teacher, loss.config),
                               rtol=1e-5)


def test_bad_configs_and_inputs_raise_clear_errors():
    l1 = losses.make_loss(configs.LossConfig.l1_only())
    with pytest.raises(ValueError, match="w_min"):
        configs.LossConfig(w_min=0.5, w_max=0.4)
    with pytest.raises(ValueError, match="gamma"):
        configs.LossConfig(gamma=-1.0)
    with pytest.raises(ValueError, match="ground-truth term"):
        configs.LossConfig(charbonnier_weight=0.0, dct_weight=0.0)
    with pytest.raises(ValueError, match="unknown loss name 'l2'"):
        configs.TrainConfig.from_dict({"stage": 1, "loss": {"name": "l2"}})
    with pytest.raises(ValueError, match="needs a keras_sr.configs.LossConfig"):
        losses.make_loss("l1")
    with pytest.raises(ValueError, match="l1: shapes"):
        l1(_images(21, (1, 6, 6, 3)), {"hr": _images(22, (1, 9, 9, 3))})
    with pytest.raises(KeyError, match="'hr'"):
        l1(_images(23), {"lr": _images(24)})
