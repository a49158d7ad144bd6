"""MATLAB-compatible bicubic `imresize` for integer scale factors, on uint8 images.

The standard x3 LR images (DIV2K and the EDSR benchmark `LR_bicubic/X3` folders) are MATLAB
`imresize(HR, 1/3, 'bicubic')` of the HR image cropped to a multiple of 3. This module reproduces
those files bit for bit (`tests/test_data.py` checks every Set5 and Set14 file). The rule
(sr_conventions.md, section 3):

* Keys cubic kernel with a = -0.5; when downscaling by f it is stretched by f (antialiasing), so
  each output sample mixes 4f + 2 input samples.
* Output sample i (1-based) is centred on input coordinate u = i*f - (f - 1)/2 (down) or u = i/f +
  (1 - 1/f)/2 (up); taps outside the image mirror with the edge repeated (MATLAB's symmetric
  padding); the weights of each output sample are normalised to sum to 1.
* The height axis is resized first, then the width, and the result is rounded and clipped to uint8
  after *each* pass, because MATLAB keeps uint8 between the two 1-D passes. Skipping that costs
  bit-exactness.
"""
import functools

import numpy as np


def _cubic(x):
    """Keys cubic convolution kernel, a = -0.5."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=64)
def _axis_taps(n_in, n_out, factor, down):
    """Weights and input indices of one 1-D resize pass.

    Args:
        n_in: input length along the axis.
        n_out: output length.
        factor: integer scale factor (>= 1).
        down: True to shrink by `factor`, False to enlarge.

    Returns:
        (weights float64 [n_out, taps], indices int64 [n_out, taps]), 0-based indices into the
        input.
    """
    i = np.arange(1, n_out + 1, dtype=np.float64)
    if down:
        centre = i * factor + 0.5 * (1 - factor)
        width = 4.0 * factor
    else:
        centre = i / factor + 0.5 * (1 - 1 / factor)
        width = 4.0
    left = np.floor(centre - width / 2)
    taps = int(np.ceil(width)) + 2
    j = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    # Antialiasing: a shrink by f stretches the kernel by f (the 1/f gain cancels in the
    # normalisation).
    weights = _cubic((centre[:, None] - j) / factor) if down else _cubic(centre[:, None] - j)
    weights /= weights.sum(axis=1, keepdims=True)
    # Symmetric padding with the edge sample repeated: 0 -> 1, -1 -> 2, n+1 -> n, ...
    period = np.mod(j - 1, 2 * n_in)
    indices = np.where(period < n_in, period, 2 * n_in - 1 - period).astype(np.int64)
    weights.setflags(write=False)
    indices.setflags(write=False)
    return weights, indices


def _resize_axis0(x, n_out, factor, down):
    """One pass along axis 0 of a float64 array, rounded and clipped to the uint8 range."""
    weights, indices = _axis_taps(x.shape[0], n_out, factor, down)
    extra = (1,) * (x.ndim - 1)
    out = np.zeros((n_out,) + x.shape[1:], np.float64)
    # Accumulate tap by tap, as MATLAB does, so that sums that land on .5 round the same way.
    for t in range(weights.shape[1]):
        out += weights[:, t].reshape((n_out,) + extra) * x[indices[:, t]]
    # MATLAB's double -> uint8 conversion rounds halves away from zero, then saturates.
    return np.clip(np.floor(out + 0.5), 0, 255)


def _check_image(image, name):
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 in [0, 255], got dtype {image.dtype}")
    if image.ndim not in (2, 3):
        raise ValueError(f"{name} must be HxW or HxWxC, got shape {image.shape}")
    return image


def _check_scale(scale):
    if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or scale < 2:
        raise ValueError(f"scale must be an integer >= 2, got {scale!r}")
    return int(scale)


def modcrop(image, scale=3):
    """Crops an image at the top-left to a multiple of `scale` in height and width.

    Args:
        image: array HxW or HxWxC.
        scale: integer factor.

    Returns:
        A view of `image` of shape (H - H % scale, W - W % scale[, C]).
    """
    h, w = image.shape[:2]
    return image[:h - h % scale, :w - w % scale]


def matlab_downscale(hr, scale=3):
    """MATLAB `imresize(modcrop(hr), 1/scale, 'bicubic')` on a uint8 image, bit-exact.

    Args:
        hr: uint8 array HxW (grayscale) or HxWxC, values in [0, 255].
        scale: integer factor >= 2.

    Returns:
        uint8 array (H // scale, W // scale[, C]).

    Raises:
        ValueError: for a non-uint8 image, a bad shape, or an image smaller than `scale`.
    """
    hr = _check_image(hr, "hr")
    scale = _check_scale(scale)
    if min(hr.shape[:2]) < scale:
        raise ValueError(f"image of shape {hr.shape} is smaller than the scale factor {scale}")
    x = modcrop(hr, scale).astype(np.float64)
    h, w = x.shape[:2]
    x = _resize_axis0(x, h // scale, scale, down=True)
    x = _resize_axis0(np.swapaxes(x, 0, 1), w // scale, scale, down=True)
    return np.ascontiguousarray(np.swapaxes(x, 0, 1)).astype(np.uint8)


def matlab_upscale(lr, scale=3):
    """MATLAB `imresize(lr, scale, 'bicubic')` on a uint8 image (the "bicubic" SR baseline).

    Args:
        lr: uint8 array hxw or hxwxC, values in [0, 255].
        scale: integer factor >= 2.

    Returns:
        uint8 array (scale * h, scale * w[, C]).
    """
    lr = _check_image(lr, "lr")
    scale = _check_scale(scale)
    if min(lr.shape[:2]) < 1:
        raise ValueError(f"empty image of shape {lr.shape}")
    x = lr.astype(np.float64)
    h, w = x.shape[:2]
    x = _resize_axis0(x, h * scale, scale, down=False)
    x = _resize_axis0(np.swapaxes(x, 0, 1), w * scale, scale, down=False)
    return np.ascontiguousarray(np.swapaxes(x, 0, 1)).astype(np.uint8)
