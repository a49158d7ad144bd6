"""The image reader: every kind of file a user hands in, decoded against the array it was made from.

Files are written with Pillow (palette, gray+alpha, CMYK, EXIF) or OpenCV (16-bit) into tmp_path.
"""
import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from keras_sr.common import image_io

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (5, 7), dtype=np.uint8)


def _pillow_bytes(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _with_orientation(image, fmt, orientation, **kwargs):
    exif = image.getexif()
    exif[0x0112] = orientation
    return _pillow_bytes(image, fmt, exif=exif.tobytes(), **kwargs)


def _read(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return image_io.read_rgb(path)


def test_plain_rgb_png_comes_back_unchanged(tmp_path):
    image_io.write_image(tmp_path / "a.png", RGB)
    got = image_io.read_rgb(tmp_path / "a.png")
    np.testing.assert_array_equal(got.rgb, RGB)
    assert got.alpha is None and not got.gray and got.notes == ()


def test_grayscale_is_replicated_and_flagged(tmp_path):
    gray = RGB[..., 1]
    image_io.write_image(tmp_path / "g.png", gray)
    got = image_io.read_rgb(tmp_path / "g.png")
    np.testing.assert_array_equal(got.rgb, np.stack([gray] * 3, axis=-1))
    assert got.gray and got.alpha is None and got.notes == ("grayscale: replicated to RGB",)
    # The data/metrics reader keeps the single plane.
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "g.png"), gray)


def test_grayscale_with_alpha(tmp_path):
    la = np.stack([RGB[..., 0], ALPHA], axis=-1)
    got = _read(tmp_path, "la.png", _pillow_bytes(Image.fromarray(la, "LA"), "PNG"))
    np.testing.assert_array_equal(got.rgb, np.stack([RGB[..., 0]] * 3, axis=-1))
    np.testing.assert_array_equal(got.alpha, ALPHA)
    assert got.gray and got.notes == ("grayscale+alpha: replicated to RGB, alpha kept",)


def test_rgba_keeps_the_alpha_plane(tmp_path):
    image_io.write_image(tmp_path / "rgba.png", np.dstack([RGB, ALPHA]))
    got = image_io.read_rgb(tmp_path / "rgba.png")
    np.testing.assert_array_equal(got.rgb, RGB)
    np.testing.assert_array_equal(got.alpha, ALPHA)
    assert not got.gray and got.notes == ("RGBA: alpha kept as a separate plane",)
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "rgba.png"), RGB)  # alpha dropped


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_colours_come_back_exact(tmp_path, transparent):
    palette = np.array([[255, 0, 0], [0, 255, 0], [12, 34, 56], [200, 201, 202]], np.uint8)
    index = RNG.integers(0, 4, (6, 9), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.ravel().tolist())
    got = _read(tmp_path, "p.png",
                _pillow_bytes(image, "PNG", **({"transparency": 2} if transparent else {})))
    np.testing.assert_array_equal(got.rgb, palette[index])
    if transparent:
        np.testing.assert_array_equal(got.alpha, np.where(index == 2, 0, 255))
        assert got.notes == ("RGBA: alpha kept as a separate plane",
                             "palette PNG: expanded to RGB and alpha")
    else:
        assert got.alpha is None and got.notes == ("palette PNG: expanded to RGB",)


def test_cmyk_jpeg_is_converted_with_the_ink_formula(tmp_path):
    # Flat 8x8 blocks survive JPEG at quality 100 within a level or two.
    inks = np.array([[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 255, 0],
                     [0, 0, 0, 255], [64, 128, 32, 100]], np.uint8)
    cmyk = np.repeat(np.repeat(inks[None], 8, axis=0), 8, axis=1)  # 8 x 48 x 4
    data = _pillow_bytes(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100)
    got = _read(tmp_path, "cmyk.jpg", data)
    want = np.round((255.0 - inks[:, :3]) * (255.0 - inks[:, 3:]) / 255.0)
    np.testing.assert_allclose(got.rgb[4, 4::8], want, atol=2)
    assert list(want[1]) == [0, 255, 255] and list(want[4]) == [0, 0, 0]
    assert got.notes == ("CMYK JPEG: converted to RGB (no colour management)",)


def test_16bit_png_rounds_to_the_nearest_8bit_value(tmp_path):
    values = np.array([[0, 128, 129, 257], [385, 386, 65407, 65535]], np.uint16)
    want = np.array([[0, 0, 1, 1], [1, 2, 255, 255]], np.uint8)  # round(v / 257)
    cv2.imwrite(str(tmp_path / "g16.png"), values)
    got = image_io.read_rgb(tmp_path / "g16.png")
    np.testing.assert_array_equal(got.rgb[..., 0], want)
    assert got.gray and got.notes == ("16-bit PNG: rounded to 8-bit", "grayscale: replicated to RGB")
    # RGBA, 16 bits each (OpenCV writes BGRA).
    rgba = np.stack([values, values[::-1], 65535 - values, values[:, ::-1]], axis=-1)
    cv2.imwrite(str(tmp_path / "c16.png"), rgba[..., [2, 1, 0, 3]])
    got = image_io.read_rgb(tmp_path / "c16.png")
    np.testing.assert_array_equal(got.rgb, np.stack([want, want[::-1], 255 - want], axis=-1))
    np.testing.assert_array_equal(got.alpha, want[:, ::-1])
    with pytest.raises(image_io.ImageError, match=r"g16\.png: unsupported bit depth"):
        image_io.read_image(tmp_path / "g16.png")


# The displayed image for each EXIF orientation, written out element by element for a 2x3 array.
SMALL = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
DISPLAYED = {1: [[0, 1, 2], [3, 4, 5]], 2: [[2, 1, 0], [5, 4, 3]], 3: [[5, 4, 3], [2, 1, 0]],
             4: [[3, 4, 5], [0, 1, 2]], 5: [[0, 3], [1, 4], [2, 5]], 6: [[3, 0], [4, 1], [5, 2]],
             7: [[5, 2], [4, 1], [3, 0]], 8: [[2, 5], [1, 4], [0, 3]]}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_a_png_is_applied_to_pixels_and_alpha(tmp_path, orientation):
    rgba = np.dstack([SMALL, SMALL + 1, SMALL + 2, SMALL + 3])
    data = _with_orientation(Image.fromarray(rgba, "RGBA"), "PNG", orientation)
    got = _read(tmp_path, "o.png", data)
    want = np.array(DISPLAYED[orientation], np.uint8) * 40
    np.testing.assert_array_equal(got.rgb, np.dstack([want, want + 1, want + 2]))
    np.testing.assert_array_equal(got.alpha, want + 3)
    # Pillow, read independently, agrees.
    np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))),
                                  np.dstack([got.rgb, got.alpha]))
    assert (f"EXIF orientation {orientation}" in got.notes[-1]) == (orientation != 1)


def test_exif_rotated_jpeg_equals_rot90_of_the_stored_pixels(tmp_path):
    rgb = np.repeat(np.repeat(RNG.integers(0, 256, (2, 5, 3), dtype=np.uint8), 8, 0), 8, 1)
    data = _with_orientation(Image.fromarray(rgb), "JPEG", 6, quality=95)
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert stored.shape == (16, 40, 3)
    got = _read(tmp_path, "r.jpg", data)
    np.testing.assert_array_equal(got.rgb, np.rot90(stored, -1))
    assert got.rgb.shape == (40, 16, 3)
    assert got.notes == ("EXIF orientation 6: rotated 90 degrees clockwise",)
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "r.jpg"), stored)  # as stored


def test_exif_orientation_of_a_webp(tmp_path):
    if not image_io.can_write(".webp"):
        pytest.skip("this OpenCV build has no WebP codec")
    data = _with_orientation(Image.fromarray(RGB), "WEBP", 8, lossless=True)
    got = _read(tmp_path, "w.webp", data)
    np.testing.assert_array_equal(got.rgb, np.rot90(RGB, 1))


@pytest.mark.parametrize("name,make,reason", [
    ("empty.png", lambda png: b"", r"empty file \(0 bytes\)"),
    ("cut.png", lambda png: png[:len(png) // 2], "truncated or corrupt PNG data"),
    ("cut.jpg", lambda png: image_io.encode_image(RGB, ".jpg")[:-30], "truncated or corrupt JPEG"),
    ("text.png", lambda png: b"hello, not an image", "not an image file"),
])
def test_errors_name_the_file_and_the_reason(tmp_path, name, make, reason):
    path = tmp_path / name
    path.write_bytes(make(image_io.encode_png(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))))
    for reader in (image_io.read_rgb, image_io.read_image):
        with pytest.raises(image_io.ImageError, match=f"{name}: unreadable image: {reason}"):
            reader(path)
    with pytest.raises(image_io.ImageError, match=r"missing\.png: cannot read file"):
        image_io.read_rgb(tmp_path / "missing.png")


def test_write_image_formats(tmp_path):
    image_io.write_image(tmp_path / "a.bmp", RGB)
    np.testing.assert_array_equal(image_io.read_rgb(tmp_path / "a.bmp").rgb, RGB)
    image_io.write_image(tmp_path / "a.jpg", RGB)
    assert image_io.read_rgb(tmp_path / "a.jpg").rgb.shape == RGB.shape
    assert image_io.can_write(".png", alpha=True) and not image_io.can_write(".jpg", alpha=True)
    assert not image_io.can_write(".gif")
    with pytest.raises(ValueError, match="cannot write a 4-channel image as .jpg"):
        image_io.encode_image(np.dstack([RGB, ALPHA]), ".jpg")
