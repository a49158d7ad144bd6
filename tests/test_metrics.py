"""PSNR/SSIM conventions (border crop, BT.601 Y, gray as Y) and agreement with tf.image."""
import math

import numpy as np
import pytest
import tensorflow as tf

from keras_sr.common import metrics
from keras_sr.data import builtin
from keras_sr.data.matlab_resize import matlab_downscale, matlab_upscale, modcrop


def _flat(value, shape=(20, 24, 3)):
    return np.full(shape, value, np.uint8)


def test_psnr_of_a_uniform_error_has_the_closed_form_value():
    hr, sr = _flat(100), _flat(105)
    assert metrics.psnr(sr, hr, y_channel=False) == pytest.approx(10 * math.log10(255 ** 2 / 25))
    # On Y an equal step in R, G and B moves Y by 5 * 219 / 255.
    assert metrics.psnr(sr, hr) == pytest.approx(10 * math.log10(255 ** 2 / (5 * 219 / 255) ** 2))


def test_y_uses_rgb_order_bt601_weights():
    hr = _flat(100)
    red, blue = hr.copy(), hr.copy()
    red[..., 0] += 10
    blue[..., 2] += 10
    assert metrics.psnr(red, hr) == pytest.approx(20 * math.log10(255 / (10 * 65.481 / 255)))
    assert metrics.psnr(blue, hr) == pytest.approx(20 * math.log10(255 / (10 * 24.966 / 255)))
    np.testing.assert_allclose(metrics.rgb_to_y(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)),
                               [[16.0, 235.0]])


def test_identical_images_and_border_crop():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert metrics.psnr(hr, hr) == math.inf
    assert metrics.ssim(hr, hr) == pytest.approx(1.0)
    sr = hr.copy()
    sr[:3] = 0  # damage only the 3-pixel border
    sr[:, -3:] = 255
    assert metrics.psnr(sr, hr, crop_border=3) == math.inf
    assert metrics.psnr(sr, hr, crop_border=2) < 30
    assert metrics.ssim(sr, hr, crop_border=3) == pytest.approx(1.0)


def test_grayscale_ground_truth_is_scored_on_the_gray_plane():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (30, 30), dtype=np.uint8)
    sr = np.repeat(gray[..., None], 3, axis=-1)
    sr[10, 10] = [gray[10, 10] + 2] * 3 if gray[10, 10] < 250 else [gray[10, 10] - 2] * 3
    want = 10 * math.log10(255 ** 2 / (4 / 24 ** 2))  # one pixel off by 2 in the 24x24 crop
    assert metrics.psnr(sr, gray) == pytest.approx(want)
    assert metrics.psnr(sr, gray, y_channel=False) == pytest.approx(want)
    assert metrics.psnr(sr[..., 0], gray) == pytest.approx(want)


def test_bad_inputs_raise_clear_errors():
    hr = _flat(0)
    with pytest.raises(ValueError, match="sizes differ"):
        metrics.psnr(_flat(0, (21, 24, 3)), hr)
    with pytest.raises(ValueError, match="uint8"):
        metrics.psnr(hr.astype(np.float32) / 255, hr)
    with pytest.raises(ValueError, match="HxWx3"):
        metrics.ssim(_flat(0, (20, 24, 4)), hr)
    with pytest.raises(ValueError, match="grayscale"):
        metrics.psnr(hr[..., 0], hr)
    with pytest.raises(ValueError, match="crop_border"):
        metrics.psnr(hr, hr, crop_border=10)
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(_flat(0, (16, 24, 3)), _flat(0, (16, 24, 3)))


def test_psnr_and_ssim_agree_with_tf_image_on_a_photograph():
    hr = modcrop(dict(builtin.load_split("val"))["chelsea"])
    sr = matlab_upscale(matlab_downscale(hr))
    for y_channel in (True, False):
        if y_channel:
            a, b = (metrics.rgb_to_y(x)[3:-3, 3:-3, None] for x in (sr, hr))
        else:
            a, b = (x[3:-3, 3:-3].astype(np.float64) for x in (sr, hr))
        ref_psnr = float(tf.image.psnr(a, b, max_val=255.0))
        ref_ssim = float(tf.image.ssim(tf.constant(a), tf.constant(b), max_val=255.0))
        assert metrics.psnr(sr, hr, 3, y_channel) == pytest.approx(ref_psnr, abs=1e-4)
        assert metrics.ssim(sr, hr, 3, y_channel) == pytest.approx(ref_ssim, abs=1e-4)
    assert 25 < metrics.psnr(sr, hr) < 40  # a real, imperfect reconstruction


def test_to_uint8_clamps_and_rounds():
    values = np.array([-0.1, 0.0, 0.5, 2.5001 / 255, 1.2])
    np.testing.assert_array_equal(metrics.to_uint8(values), [0, 0, 128, 3, 255])
