"""PSNR and SSIM with the conventions SR papers report (sr_conventions.md, sections 1-2).

* Inputs are uint8 images: quantise a network output first (`to_uint8`: clamp to [0, 1],
  x255, round).
* `crop_border` pixels (= the scale factor, 3) are removed on every side before measuring.
* Y channel: luma of MATLAB's `rgb2ycbcr` (ITU-R BT.601 studio range), kept as float:
  Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, inputs in **RGB** order (BasicSR's
  `test_y_channel` expects BGR; passing RGB arrays there swaps the R and B weights).
* Grayscale ground truth (HxW, e.g. Set14 `bridge`): the gray plane *is* Y, with no 16-235
  mapping. An RGB prediction for it is reduced to one plane with the same BT.601 weights without
  offset, (65.481 R + 128.553 G + 24.966 B) / 219, which returns v for R = G = B = v; the "RGB"
  metrics of a grayscale image are then those of that plane.
* SSIM: Wang et al. 2004 on float64 values in [0, 255]: 11x11 Gaussian window (sigma 1.5),
  C1 = (0.01 L)^2, C2 = (0.03 L)^2, "valid" filtering (5 px lost per side), mean of the map;
  RGB = mean over channels.
"""
import numpy as np

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_GRAY_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 219.0
_PEAK = 255.0


def to_uint8(image):
    """Quantises a float image in [0, 1] the way SR metrics expect: clamp, x255, round.

    Args:
        image: float array of any shape, nominally in [0, 1].

    Returns:
        uint8 array of the same shape.
    """
    return np.round(np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def rgb_to_y(image):
    """MATLAB `rgb2ycbcr` luma of an RGB uint8 image, as float64 in [16, 235].

    Args:
        image: uint8 array HxWx3 in RGB order.

    Returns:
        float64 array HxW.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"rgb_to_y expects an HxWx3 RGB image, got shape {image.shape}")
    return 16.0 + image.astype(np.float64) @ _Y_WEIGHTS


def _planes(sr, hr, crop_border, y_channel):
    """Validates a prediction/ground-truth pair; returns the cropped float64 planes HxWxC."""
    sr, hr = np.asarray(sr), np.asarray(hr)
    for name, image in (("sr", sr), ("hr", hr)):
        if image.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 in [0, 255] (quantise with to_uint8 first), "
                             f"got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[-1] == 1:
            continue
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
            raise ValueError(f"{name} must be HxW, HxWx1 or HxWx3, got shape {image.shape}")
    if sr.shape[:2] != hr.shape[:2]:
        raise ValueError(f"sr and hr sizes differ: sr {sr.shape} vs hr {hr.shape}")
    hr_gray = hr.ndim == 2 or hr.shape[-1] == 1
    sr_gray = sr.ndim == 2 or sr.shape[-1] == 1
    if sr_gray and not hr_gray:
        raise ValueError(f"sr is grayscale {sr.shape} but hr is RGB {hr.shape}")
    if not (0 <= crop_border and 2 * crop_border < min(hr.shape[:2])):
        raise ValueError(f"crop_border={crop_border} leaves nothing of an image of shape "
                         f"{hr.shape}")

    if hr_gray:
        hr_p = hr.reshape(hr.shape[:2]).astype(np.float64)[..., None]
        sr_p = (sr.reshape(sr.shape[:2]).astype(np.float64) if sr_gray
                else sr.astype(np.float64) @ _GRAY_WEIGHTS)[..., None]
    elif y_channel:
        hr_p, sr_p = rgb_to_y(hr)[..., None], rgb_to_y(sr)[..., None]
    else:
        hr_p, sr_p = hr.astype(np.float64), sr.astype(np.float64)
    if crop_border:
        c = crop_border
        hr_p, sr_p = hr_p[c:-c, c:-c], sr_p[c:-c, c:-c]
    return sr_p, hr_p


def psnr(sr, hr, crop_border=3, y_channel=True):
    """Peak signal-to-noise ratio in dB (peak 255); +inf for identical images.

    Args:
        sr: uint8 prediction, HxWx3 RGB (or HxW grayscale).
        hr: uint8 ground truth of the same height and width, HxWx3 RGB or HxW grayscale.
        crop_border: pixels removed on every side before measuring (the scale factor, by
            convention).
        y_channel: measure on BT.601 Y (True) or on all RGB channels (False).

    Returns:
        float.
    """
    sr_p, hr_p = _planes(sr, hr, crop_border, y_channel)
    mse = np.mean((sr_p - hr_p) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(_PEAK ** 2 / mse))


def _gaussian_window(size=11, sigma=1.5):
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


_WINDOW = _gaussian_window()


def _filter_valid(x):
    """Separable 11x11 Gaussian filter of a float64 HxW plane, 'valid' region only."""
    view = np.lib.stride_tricks.sliding_window_view
    x = view(x, _WINDOW.size, axis=0) @ _WINDOW
    return view(x, _WINDOW.size, axis=1) @ _WINDOW


def _ssim_plane(a, b):
    c1, c2 = (0.01 * _PEAK) ** 2, (0.03 * _PEAK) ** 2
    mu_a, mu_b = _filter_valid(a), _filter_valid(b)
    var_a = _filter_valid(a * a) - mu_a ** 2
    var_b = _filter_valid(b * b) - mu_b ** 2
    cov = _filter_valid(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return ssim_map.mean()


def ssim(sr, hr, crop_border=3, y_channel=True):
    """Structural similarity (Wang et al. 2004), averaged over channels; 1.0 for identical images.

    Args:
        sr, hr, crop_border, y_channel: as in `psnr`. After cropping, both sides must be at least
            11 pixels (the window size).

    Returns:
        float in [-1, 1].
    """
    sr_p, hr_p = _planes(sr, hr, crop_border, y_channel)
    if min(hr_p.shape[:2]) < _WINDOW.size:
        raise ValueError(f"SSIM needs at least {_WINDOW.size}x{_WINDOW.size} pixels after the "
                         f"{crop_border}-pixel border crop, image is {hr.shape}")
    return float(np.mean([_ssim_plane(sr_p[..., c], hr_p[..., c]) for c in range(hr_p.shape[-1])]))


def compute_metrics(sr, hr, crop_border=3):
    """All four numbers SR papers report for one image.

    Args:
        sr: uint8 prediction HxWx3 (or HxW).
        hr: uint8 ground truth HxWx3 or HxW (grayscale), same height and width.
        crop_border: border removed on every side.

    Returns:
        dict with float "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb".
    """
    return {
        "psnr_y": psnr(sr, hr, crop_border, y_channel=True),
        "ssim_y": ssim(sr, hr, crop_border, y_channel=True),
        "psnr_rgb": psnr(sr, hr, crop_border, y_channel=False),
        "ssim_rgb": ssim(sr, hr, crop_border, y_channel=False),
    }
