"""The EDSR benchmark folder layout, used for evaluation sets:

    DIR/HR/<stem>.<png|jpg|jpeg|bmp>          ground truth, any size (not cropped to a multiple of
    scale) DIR/LR_bicubic/X<scale>/<stem>x<scale>.png   LR = MATLAB bicubic of the HR cropped to a
    multiple of scale
"""
import os

import numpy as np

from keras_sr.common import bad_images, image_io
from keras_sr.data.matlab_resize import matlab_downscale, modcrop


def list_hr_files(hr_dir):
    """Sorted entries with an image file name directly inside `hr_dir`, folders left out.

    Broken links and symlink loops are listed: reading them fails with a reason that names them.
    """
    return sorted(os.path.join(hr_dir, f) for f in os.listdir(hr_dir)
                  if f.lower().endswith(image_io.IMAGE_EXTENSIONS)
                  and not os.path.isdir(os.path.join(hr_dir, f)))


def lr_path(data_dir, stem, scale):
    return os.path.join(data_dir, "LR_bicubic", f"X{scale}", f"{stem}x{scale}.png")


def load_benchmark(data_dir, scale=3, bad=None):
    """Loads an evaluation set in the EDSR layout.

    Files are read as stored (`image_io.read_image`: 8-bit, EXIF orientation ignored), as the
    official LR files were made from them; grayscale images stay single-channel, because the
    metrics score them on that one plane.

    Args:
        data_dir: folder holding HR/ and LR_bicubic/X<scale>/.
        scale: integer factor.
        bad: a `bad_images.BadImages` that records (or, under its "fail" policy, raises for) an
            image that cannot be used: unreadable HR or LR file, 16-bit file, LR of the wrong
            size. None: such an image raises (ImageError or ValueError).

    Returns:
        List of (name, lr uint8 hxwx3 or hxw, hr uint8 modcropped to (scale*h, scale*w[, 3]),
        is_gray), sorted by name. Grayscale images stay single-channel (HxW) in both.

    Raises:
        FileNotFoundError: missing HR/ folder or a missing LR file (named).
        bad_images.NoImagesError: no image files in HR/ (the message names it).
        ValueError: unreadable image, or an LR whose size is not floor(HR size / scale), when
            `bad` is None.
    """
    hr_dir = os.path.join(data_dir, "HR")
    if not os.path.isdir(hr_dir):
        raise FileNotFoundError(f"{data_dir} is not an EDSR-layout benchmark folder: "
                                f"{hr_dir} is missing")
    hr_files = list_hr_files(hr_dir)
    if not hr_files:
        raise bad_images.NoImagesError(f"no PNG/JPEG/BMP images in {hr_dir}")
    missing = [lr_path(data_dir, _stem(p), scale) for p in hr_files
               if not os.path.isfile(lr_path(data_dir, _stem(p), scale))]
    if missing:
        raise FileNotFoundError(f"{len(missing)} LR file(s) missing for {data_dir}, e.g. "
                                f"{missing[0]} (expected LR_bicubic/X{scale}/<stem>x{scale}.png "
                                "for every HR image)")
    images = []
    for path in hr_files:
        try:
            images.append(_load_pair(data_dir, path, scale))
        except ValueError as e:  # ImageError included
            if bad is None:
                raise
            bad.add(path, str(e))
    return images


def _load_pair(data_dir, path, scale):
    stem = _stem(path)
    hr = image_io.read_image(path)
    lr = image_io.read_image(lr_path(data_dir, stem, scale))
    hr = modcrop(hr, scale)
    if hr.ndim == 2 and lr.ndim == 3 and (lr == lr[..., :1]).all():
        lr = lr[..., 0]  # a grayscale image saved as RGB
    want = (hr.shape[0] // scale, hr.shape[1] // scale)
    if lr.shape[:2] != want or lr.ndim != hr.ndim:
        raise ValueError(f"{lr_path(data_dir, stem, scale)}: shape {lr.shape} does not match "
                         f"HR {path} (expected {want} for scale {scale})")
    return stem, lr, np.ascontiguousarray(hr), hr.ndim == 2


def write_benchmark_layout(images, data_dir, scale=3):
    """Writes images in the EDSR layout.

    Args:
        images: iterable of (name, hr uint8 HxWx3 or HxW, lr uint8 or None); a None LR is made from
            the HR with the MATLAB bicubic rule.
        data_dir: output folder; HR/<name>.png and LR_bicubic/X<scale>/<name>x<scale>.png are
            written atomically (HR as given, not cropped, as in the official sets).
        scale: integer factor.

    Returns:
        List of the names written.
    """
    lr_dir = os.path.join(data_dir, "LR_bicubic", f"X{scale}")
    os.makedirs(os.path.join(data_dir, "HR"), exist_ok=True)
    os.makedirs(lr_dir, exist_ok=True)
    names = []
    for name, hr, lr in images:
        image_io.write_png(os.path.join(data_dir, "HR", f"{name}.png"), hr)
        image_io.write_png(lr_path(data_dir, name, scale),
                           matlab_downscale(hr, scale) if lr is None else lr)
        names.append(name)
    return names


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]
