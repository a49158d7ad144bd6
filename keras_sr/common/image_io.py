"""Reading and writing 8-bit images with OpenCV, in RGB order.

Grayscale files stay single-channel (HxW) so that metrics can treat them as Y; `to_rgb` replicates
the plane where a network needs three channels. Alpha channels are dropped. Only 8-bit images are
accepted: the MATLAB rule and the SR records are defined on uint8 pixels.
"""
import os

import cv2
import numpy as np

from keras_sr.common import fileio

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


class ImageError(ValueError):
    """An image file cannot be used; the message names the file and the reason."""


def decode_image(data, name="<bytes>"):
    """Decodes PNG/JPEG/BMP bytes into uint8 RGB HxWx3 or grayscale HxW.

    Args:
        data: encoded image bytes.
        name: what to call the image in error messages (usually its path).

    Returns:
        uint8 array HxWx3 (RGB) or HxW.

    Raises:
        ImageError: undecodable data or a bit depth other than 8.
    """
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{name}: unreadable image (not a decodable PNG/JPEG/BMP)")
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported bit depth ({image.dtype}); 8-bit images only")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        if image.shape[-1] == 4:
            image = image[..., :3]
        # OpenCV decodes to BGR.
        image = np.ascontiguousarray(image[..., ::-1])
    return image


def read_image(path):
    """Reads an image file (see `decode_image`); errors name `path`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"{path}: cannot read file ({e.strerror})") from e
    return decode_image(data, name=os.fspath(path))


def to_rgb(image):
    """Returns an HxWx3 uint8 image, replicating a grayscale plane."""
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def encode_png(image):
    """Encodes a uint8 HxWx3 RGB or HxW image as PNG bytes."""
    if image.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {image.dtype}")
    bgr = image[..., ::-1] if image.ndim == 3 else image
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape}")
    return buffer.tobytes()


def write_png(path, image):
    """Writes a uint8 image as a PNG file, atomically."""
    fileio.write_bytes_atomic(path, encode_png(image))
