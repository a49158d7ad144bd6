"""Where on an example image INT8 gains most over bicubic, and how each model does there.

An example is one LR image with its bicubic, FP32 and INT8 upscalings and the HR ground truth. The
crop the report shows is the CROP_SIZE x CROP_SIZE HR window (the whole image along a side shorter
than that) with the largest sum of

    (Y_bicubic - Y_hr)^2 - (Y_int8 - Y_hr)^2

over its pixels, Y being the BT.601 luma of `keras_sr.common.metrics.rgb_to_y` (what the PSNR-Y
numbers of the report measure). The window's corner lies on the scale grid, so it maps onto whole LR
pixels and the LR crop shows exactly the input of the HR crop.
"""
import dataclasses
import math

import numpy as np

from keras_sr.common import metrics

CROP_SIZE = 96  # HR pixels: 32 LR pixels at x3, big enough to show texture, small enough to see pixels
SELECTION = ("the HR window of at most {size}x{size} px maximising the summed per-pixel squared-error "
             "difference on Y (BT.601 luma): bicubic minus INT8")
# Panels of the crop figure in order: model key, title.
PANELS = (("lr", "LR (nearest)"), ("bicubic", "bicubic"), ("fp32", "FP32"), ("int8", "INT8"),
          ("hr", "HR"))
_SR_KEYS = ("bicubic", "fp32", "int8")


@dataclasses.dataclass
class Example:
    """One example, checked, with its crop.

    Attributes:
        name: the image's name.
        scale: HR size / LR size (an integer, the same along both axes).
        images: {"lr": uint8 h x w x 3, "hr", "bicubic", "int8", optionally "fp32": uint8
            (scale h) x (scale w) x 3}, RGB in [0, 255].
        top, left, height, width: the crop in HR pixels; top and left are multiples of `scale`.
        crop_psnr_y: {model key: PSNR-Y in dB of the crop against HR, no border removed; None when
            the crop equals HR}.
        selection: how the crop was chosen, in words.
    """
    name: str
    scale: int
    images: dict
    top: int
    left: int
    height: int
    width: int
    crop_psnr_y: dict
    selection: str = ""

    def crop(self, key):
        """The crop of image `key`, uint8 HR-sized (the LR one enlarged by nearest neighbour)."""
        if key == "lr":
            s = self.scale
            lr = self.images["lr"][self.top // s:(self.top + self.height) // s,
                                   self.left // s:(self.left + self.width) // s]
            return np.repeat(np.repeat(lr, s, axis=0), s, axis=1)
        return self.images[key][self.top:self.top + self.height, self.left:self.left + self.width]

    def error_y(self):
        """|Y_int8 - Y_hr| over the whole image, float64 HxW in [0, 219]."""
        return np.abs(metrics.rgb_to_y(self.images["int8"]) - metrics.rgb_to_y(self.images["hr"]))

    def summary(self):
        """The JSON-friendly description written into metrics.json (no pixels)."""
        return {"name": self.name, "scale": self.scale,
                "crop": {"top": self.top, "left": self.left, "height": self.height,
                         "width": self.width},
                "crop_selection": self.selection, "crop_psnr_y": dict(self.crop_psnr_y)}


def _check_images(name, example):
    images = {}
    for key in ("lr", "hr", *_SR_KEYS):
        if key not in example or example[key] is None:
            if key == "fp32":
                continue
            raise ValueError(f"example {name!r} has no {key!r} image")
        image = np.asarray(example[key])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"example {name!r}: {key!r} must be a uint8 HxWx3 RGB array, got "
                             f"{image.dtype} {image.shape}")
        images[key] = image
    lr_h, lr_w = images["lr"].shape[:2]
    hr_h, hr_w = images["hr"].shape[:2]
    scale = hr_h // lr_h
    if scale < 1 or (hr_h, hr_w) != (scale * lr_h, scale * lr_w):
        raise ValueError(f"example {name!r}: HR {images['hr'].shape} is not an integer multiple of "
                         f"LR {images['lr'].shape} along both axes")
    for key in _SR_KEYS:
        if key in images and images[key].shape != images["hr"].shape:
            raise ValueError(f"example {name!r}: {key!r} has shape {images[key].shape}, HR has "
                             f"{images['hr'].shape}")
    return images, scale


def _window_sums(plane, height, width):
    """Sums of `plane` (float64 HxW) over every height x width window, by an integral image."""
    integral = np.pad(np.cumsum(np.cumsum(plane, axis=0), axis=1), ((1, 0), (1, 0)))
    return (integral[height:, width:] - integral[:-height, width:] - integral[height:, :-width]
            + integral[:-height, :-width])


def best_crop(images, scale, size=CROP_SIZE):
    """The (top, left, height, width) HR window where INT8 gains most over bicubic (see module doc).

    Args:
        images: {"hr", "bicubic", "int8": uint8 HxWx3}, H and W multiples of `scale`.
        scale: the grid the corner lies on.
        size: the window's side in HR pixels (rounded down to a multiple of `scale`).
    """
    hr_h, hr_w = images["hr"].shape[:2]
    size = max(scale, size // scale * scale)
    height, width = min(size, hr_h), min(size, hr_w)
    y_hr = metrics.rgb_to_y(images["hr"])
    gain = ((metrics.rgb_to_y(images["bicubic"]) - y_hr) ** 2
            - (metrics.rgb_to_y(images["int8"]) - y_hr) ** 2)
    sums = _window_sums(gain, height, width)[::scale, ::scale]  # corners on the scale grid only
    top, left = np.unravel_index(np.argmax(sums), sums.shape)  # first maximum: deterministic
    return int(top) * scale, int(left) * scale, height, width


def _psnr_or_none(sr, hr):
    value = metrics.psnr(sr, hr, crop_border=0, y_channel=True)
    return float(value) if math.isfinite(value) else None


def prepare(example, size=CROP_SIZE):
    """Checks one example of the report's data and picks its crop.

    Args:
        example: {"name": str, "lr", "bicubic", "int8", "hr", optionally "fp32": uint8 RGB arrays;
            lr h x w x 3, the others (s h) x (s w) x 3 for an integer scale s}.
        size: the crop's side in HR pixels.

    Returns:
        An `Example`.

    Raises:
        ValueError: a missing image, a wrong dtype or shape (the message names the example).
    """
    name = str(example.get("name", "example"))
    images, scale = _check_images(name, example)
    top, left, height, width = best_crop(images, scale, size)
    found = Example(name, scale, images, top, left, height, width, {}, SELECTION.format(size=size))
    hr_crop = found.crop("hr")
    found.crop_psnr_y = {key: _psnr_or_none(found.crop(key), hr_crop)
                         for key in _SR_KEYS if key in images}
    return found
