"""Reading and writing images with OpenCV, in RGB order: the project's one image reader.

Two readers share the decoding and its errors (`ImageError` naming the file and the reason: zero
bytes, truncated or corrupt data, not an image):

* `read_image` / `decode_image`, for data preparation and metrics: the pixels as stored, 8-bit only
  (the MATLAB rule and the SR records are defined on uint8 pixels). Grayscale files stay
  single-channel (HxW) so that metrics can treat them as Y; `to_rgb` replicates the plane where a
  network needs three channels. Alpha channels are dropped, EXIF orientation is ignored.
* `read_rgb` / `decode_rgb`, for running a model on whatever a user hands in: any PNG, JPEG, BMP,
  WebP or TIFF as 8-bit RGB (HxWx3 uint8) plus its alpha plane (HxW uint8 or None), displayed the
  way a viewer shows it (EXIF orientation applied), with a note for every conversion: grayscale,
  grayscale+alpha, RGBA, palette, CMYK JPEG, 16-bit samples, EXIF orientation.

The file's header (PNG colour type, JPEG components, the EXIF orientation tag) is read here with a
few lines of `struct`, because OpenCV's decoder either reports none of it (IMREAD_UNCHANGED) or
applies the orientation but drops alpha and 16-bit samples (every other flag).
"""
import os
import struct
from typing import NamedTuple, Optional

import cv2
import numpy as np

from keras_sr.common import fileio

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# File names offered to `read_rgb` when a folder is listed (the content decides the format).
ANY_IMAGE_EXTENSIONS = IMAGE_EXTENSIONS + (".webp", ".tif", ".tiff")
# Formats that keep an alpha plane when written (JPEG and OpenCV's BMP writer do not).
_ALPHA_EXTENSIONS = (".png", ".webp", ".tif", ".tiff")
JPEG_QUALITY = 95

_ORIENTATIONS = {  # EXIF orientation tag -> (stored pixels -> displayed pixels, note)
    2: (lambda a: a[:, ::-1], "mirrored left-right"),
    3: (lambda a: a[::-1, ::-1], "rotated 180 degrees"),
    4: (lambda a: a[::-1], "flipped upside down"),
    5: (lambda a: a.swapaxes(0, 1), "transposed"),
    6: (lambda a: np.rot90(a, -1), "rotated 90 degrees clockwise"),
    7: (lambda a: np.rot90(a, 2).swapaxes(0, 1), "transversed"),
    8: (lambda a: np.rot90(a, 1), "rotated 90 degrees counter-clockwise"),
}


# The notes of `decode_rgb` that `training_pixels` replaces (it keeps neither RGB nor alpha).
GRAY_NOTE = "grayscale: replicated to RGB"
_GRAY_ALPHA_NOTE = "grayscale+alpha: replicated to RGB, alpha kept"
_RGBA_NOTE = "RGBA: alpha kept as a separate plane"
ALPHA_DROPPED_NOTE = "alpha channel dropped"


class ImageError(ValueError):
    """An image file cannot be used; the message names the file and the reason."""


class DecodedImage(NamedTuple):
    """An image as `decode_rgb` returns it.

    rgb: uint8 (H, W, 3) RGB in [0, 255], upright (EXIF orientation applied).
    alpha: uint8 (H, W) opacity in [0, 255] (255 opaque), or None when the file has no alpha.
    gray: the file holds no colour (grayscale, or grayscale+alpha): rgb's three channels are equal.
    notes: what was converted to get here, e.g. ("16-bit PNG: rounded to 8-bit",); empty for a
        plain 8-bit RGB file.
    """
    rgb: np.ndarray
    alpha: Optional[np.ndarray]
    gray: bool
    notes: tuple


# ----------------------------------------------------------------------------------------------
# The header facts OpenCV does not report.

def _format(data):
    """The container format from the magic bytes ("PNG", "JPEG", ...), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    for magic, name in ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"),
                        (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")):
        if data.startswith(magic):
            return name
    return None


def _exif_orientation(tiff):
    """The orientation tag (1..8) of an EXIF block (a TIFF structure); 1 if absent or malformed."""
    if tiff.startswith(b"Exif\x00\x00"):  # the JPEG APP1 prefix, which some PNG/WebP writers keep
        tiff = tiff[6:]
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind = struct.unpack_from(order + "HH", tiff, entry)
        if tag == 0x0112 and kind == 3:  # Orientation, type SHORT
            (value,) = struct.unpack_from(order + "H", tiff, entry + 8)
            return value if value in _ORIENTATIONS else 1
    return 1


def _png_header(data):
    """(colour type, EXIF block or b"") of PNG bytes; colour type None if IHDR is unreadable."""
    color_type, exif, pos = None, b"", 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR" and len(body) >= 10:
            color_type = body[9]  # 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA
        elif kind == b"eXIf":
            exif = body
        elif kind == b"IEND":
            break
        pos += 12 + length
    return color_type, exif


def _jpeg_header(data):
    """(components, EXIF block or b"", complete) of JPEG bytes.

    `complete` is False when no end-of-image marker follows the first scan: a truncated file, which
    older OpenCV versions decode into a partly gray image instead of failing. It is None when the
    segments before the scan cannot be walked (then OpenCV's verdict stands).
    """
    components, exif, pos = None, b"", 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte, no-length markers
            pos += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        body = data[pos + 4:pos + 2 + length]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and len(body) >= 6:
            components = body[5]  # start of frame: 1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK
        elif marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            exif = body
        elif marker == 0xDA:  # start of scan: entropy-coded data, where 0xFF bytes are escaped
            return components, exif, data.find(b"\xff\xd9", pos) >= 0
        pos += 2 + length
    return components, exif, None


def _webp_exif(data):
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, pos)
        if kind == b"EXIF":
            return data[pos + 8:pos + 8 + length]
        pos += 8 + length + (length & 1)
    return b""


# ----------------------------------------------------------------------------------------------
# Decoding.

def _decode(data, name):
    """OpenCV's IMREAD_UNCHANGED decoding (BGR[A] order) and the format name; errors name `name`."""
    if not len(data):
        raise ImageError(f"{name}: unreadable image: empty file (0 bytes)")
    data = bytes(data)
    kind = _format(data)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise ImageError(f"{name}: unreadable image: OpenCV failed ({str(e).strip()})") from None
    if image is not None and kind == "JPEG" and _jpeg_header(data)[2] is False:
        image = None
    if image is None:
        if kind is None:
            raise ImageError(f"{name}: unreadable image: not an image file (starts with {data[:8]!r}; "
                             "PNG, JPEG, BMP, WebP and TIFF are read)")
        raise ImageError(f"{name}: unreadable image: truncated or corrupt {kind} data")
    return image, kind


def decode_image(data, name="<bytes>"):
    """Decodes 8-bit image bytes, as stored, into uint8 RGB HxWx3 or grayscale HxW.

    Alpha is dropped and EXIF orientation ignored; `decode_rgb` is the reader for user images.

    Args:
        data: encoded image bytes.
        name: what to call the image in error messages (usually its path).

    Returns:
        uint8 array HxWx3 (RGB) or HxW, values in [0, 255].

    Raises:
        ImageError: empty, truncated or undecodable data, or a bit depth other than 8.
    """
    image, _ = _decode(data, name)
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
    return decode_image(_read_bytes(path), name=os.fspath(path))


def decode_rgb(data, name="<bytes>"):
    """Decodes any image OpenCV reads into 8-bit RGB, its alpha plane and notes of the conversions.

    16-bit samples become round(v * 255 / 65535) (as (v * 255 + 32767) // 65535); palette images
    come back in their exact palette colours; CMYK JPEGs are converted by OpenCV's formula
    (R = (255 - C) * (255 - K) / 255 on the ink values, no colour management); the EXIF orientation
    of JPEG, PNG and WebP files is applied to the pixels and the alpha plane.

    Args:
        data: encoded image bytes.
        name: what to call the image in error messages (usually its path).

    Returns:
        A `DecodedImage` (rgb uint8 (H, W, 3), alpha uint8 (H, W) or None, gray, notes).

    Raises:
        ImageError: empty, truncated, corrupt or non-image data, or samples that are not 8- or
            16-bit unsigned integers (float TIFF, ...); the message names `name`.
    """
    image, kind = _decode(data, name)
    data = bytes(data)
    notes = []
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        notes.append(f"16-bit {kind}: rounded to 8-bit")
    elif image.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported sample type {image.dtype} (8- or 16-bit images only)")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] not in (3, 4):
        raise ImageError(f"{name}: unsupported number of channels ({image.shape[-1]})")

    color_type = exif = components = None
    if kind == "PNG":
        color_type, exif = _png_header(data)
    elif kind == "JPEG":
        components, exif, _ = _jpeg_header(data)
    elif kind == "WebP":
        exif = _webp_exif(data)
    alpha = None
    if image.ndim == 2:
        rgb, gray = np.repeat(image[..., None], 3, axis=-1), True
        notes.append(GRAY_NOTE)
    else:
        rgb = image[..., 2::-1]  # OpenCV decodes to BGR[A]
        gray = color_type == 4  # OpenCV expands a gray+alpha PNG to BGRA
        if image.shape[-1] == 4:
            alpha = image[..., 3]
            notes.append(_GRAY_ALPHA_NOTE if gray else _RGBA_NOTE)
    if color_type == 3:
        notes.append("palette PNG: expanded to RGB" + (" and alpha" if alpha is not None else ""))
    if components == 4:
        notes.append("CMYK JPEG: converted to RGB (no colour management)")
    orientation = _exif_orientation(exif) if exif else 1
    if orientation != 1:
        transform, what = _ORIENTATIONS[orientation]
        rgb = transform(rgb)
        alpha = None if alpha is None else transform(alpha)
        notes.append(f"EXIF orientation {orientation}: {what}")
    return DecodedImage(np.ascontiguousarray(rgb),
                        None if alpha is None else np.ascontiguousarray(alpha), gray, tuple(notes))


def read_rgb(path):
    """Reads an image file (see `decode_rgb`); errors name `path`."""
    return decode_rgb(_read_bytes(path), name=os.fspath(path))


def training_pixels(image):
    """The pixels of a `DecodedImage` as training data and evaluation sets hold them.

    Grayscale stays one plane (as `decode_image` returns it: the caller replicates it where a
    network needs three channels, and metrics score it as Y); alpha is dropped (the colour planes
    are kept as stored, not composited).

    Args:
        image: a `DecodedImage` from `decode_rgb` / `read_rgb`.

    Returns:
        (uint8 (H, W) or (H, W, 3) array, notes): `image.notes` without the grayscale and alpha
        notes of `decode_rgb`, plus ALPHA_DROPPED_NOTE when there was an alpha plane.
    """
    notes = [n for n in image.notes if n not in (GRAY_NOTE, _GRAY_ALPHA_NOTE, _RGBA_NOTE)]
    if image.alpha is not None:
        notes.append(ALPHA_DROPPED_NOTE)
    return np.ascontiguousarray(image.rgb[..., 0] if image.gray else image.rgb), tuple(notes)


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageError(f"{path}: cannot read file ({e.strerror})") from e


def to_rgb(image):
    """Returns an HxWx3 uint8 image, replicating a grayscale plane."""
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


# ----------------------------------------------------------------------------------------------
# Encoding.

def can_write(ext, alpha=False):
    """Whether `encode_image` writes extension `ext` (".png", ...), with an alpha plane if `alpha`."""
    ext = ext.lower()
    if ext not in ANY_IMAGE_EXTENSIONS or not cv2.haveImageWriter("x" + ext):
        return False
    return not alpha or ext in _ALPHA_EXTENSIONS


def encode_image(image, ext=".png"):
    """Encodes a uint8 image as `ext` bytes (JPEG at quality `JPEG_QUALITY`, WebP lossless).

    Args:
        image: uint8 HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA, for formats that keep alpha).
        ext: file extension naming the format, e.g. ".png", ".jpg" (see `can_write`).

    Raises:
        ValueError: another dtype or layout, an alpha plane for a format without one, a format
            OpenCV does not write.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"encode_image expects uint8, got {image.dtype}")
    channels = 1 if image.ndim == 2 else image.shape[-1] if image.ndim == 3 else 0
    if channels not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    if not can_write(ext, alpha=channels == 4):
        raise ValueError(f"cannot write a {channels}-channel image as {ext}")
    if channels > 1:
        image = image[..., [2, 1, 0, 3][:channels]]  # RGB[A] -> BGR[A]
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buffer = cv2.imencode(ext, np.ascontiguousarray(image), params)
    if not ok:
        raise ValueError(f"{ext} encoding failed for an image of shape {image.shape}")
    return buffer.tobytes()


def encode_png(image):
    """Encodes a uint8 HxWx3 RGB or HxW image as PNG bytes."""
    return encode_image(image, ".png")


def write_image(path, image):
    """Writes a uint8 image (see `encode_image`) atomically, in the format of `path`'s extension."""
    fileio.write_bytes_atomic(path, encode_image(image, os.path.splitext(os.fspath(path))[1]))


def write_png(path, image):
    """Writes a uint8 image as a PNG file, atomically."""
    fileio.write_bytes_atomic(path, encode_png(image))
