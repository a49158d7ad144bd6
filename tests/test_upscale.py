"""keras-sr-upscale: tiling at any size, the input's layout kept, failures, the comparison image.

The model is a small deploy-form student (8 channels, 2 blocks, receptive radius 4) with its initial
weights, converted to FP32 TFLite twice: at a fixed 1x16x24x3 shape (tiled) and with a dynamic
shape (whole-image runs of the same weights).
"""
import importlib
import io
import json
import os
import sys

import cv2
import numpy as np
import pytest
import tf_keras as keras
from absl import flags
from conftest import fused_student, run_tool
from PIL import Image

from keras_sr import upscale
from keras_sr.common import image_io
from keras_sr.export import tflite_lib, tflite_runner

TILE = (16, 24)
RADIUS = 4  # stem, two blocks and the tail: four 3x3 convs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(folder holding the fixed-shape .tflite, its path, fixed predictor, dynamic predictor)."""
    keras.utils.set_random_seed(3)
    student = fused_student(channels=8, num_blocks=2)
    folder = tmp_path_factory.mktemp("export")
    path = folder / "student_fp32.tflite"
    path.write_bytes(tflite_lib.convert_float(student, (1, *TILE, 3)))
    dynamic = tflite_runner.TFLitePredictor(tflite_lib.convert_float(student, (1, None, None, 3)))
    fixed = tflite_runner.TFLitePredictor(str(path))
    assert fixed.tile_shape == TILE and fixed.margin == RADIUS + 2 and dynamic.dynamic
    return folder, str(path), fixed, dynamic


def _image(seed, height, width, channels=3):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4 + 2, width // 4 + 2, channels), dtype=np.uint8)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).reshape(
        height, width, channels)
    return np.clip(smooth.astype(int) + rng.integers(-8, 9, smooth.shape), 0, 255).astype(np.uint8)


def _read_back(path):
    """A written file as stored: HxW gray, HxWx3 RGB or HxWx4 RGBA."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image if image.ndim == 2 else image[..., [2, 1, 0, 3][:image.shape[2]]]


def _upscale(fixed, source, output, compare=False):
    (job,) = upscale.plan_jobs([str(source)], str(output), compare)
    return job, upscale.upscale_file(fixed, job)


@pytest.mark.parametrize("height,width", [(37, 53), (40, 9), (11, 17), (1, 1)])
def test_tiled_upscaling_equals_a_whole_image_run(models, tmp_path, height, width):
    _, _, fixed, dynamic = models
    lr = _image(height * width, height, width)
    image_io.write_image(tmp_path / "in.png", lr)
    _, result = _upscale(fixed, tmp_path / "in.png", tmp_path / "out.png")
    got = _read_back(tmp_path / "out.png")
    assert result["output_size"] == [3 * height, 3 * width] and got.std() > 5  # not a flat image
    if height >= TILE[0] and width >= TILE[1]:
        np.testing.assert_array_equal(got, dynamic(lr))  # 37x53: 3 x 3 tiles, no seams
        return
    # An axis shorter than the tile is reflect-padded at its far end: the run equals a whole-image
    # run on the padded image, and a run on the image itself beyond the receptive radius of that end.
    np.testing.assert_array_equal(got, dynamic(fixed.padded_input(lr))[:3 * height, :3 * width])
    keep_h = 3 * (height - RADIUS) if height < TILE[0] else 3 * height
    keep_w = 3 * (width - RADIUS) if width < TILE[1] else 3 * width
    np.testing.assert_array_equal(got[:keep_h, :keep_w], dynamic(lr)[:keep_h, :keep_w])


def test_rgba_alpha_is_bicubic_of_the_input_alpha(models, tmp_path):
    _, _, fixed, _ = models
    rgba = _image(1, 13, 19, channels=4)
    image_io.write_image(tmp_path / "in.png", rgba)
    _upscale(fixed, tmp_path / "in.png", tmp_path / "out.png")
    got = _read_back(tmp_path / "out.png")
    np.testing.assert_array_equal(got[..., :3], fixed(rgba[..., :3]))
    np.testing.assert_array_equal(got[..., 3], cv2.resize(rgba[..., 3], (57, 39),
                                                           interpolation=cv2.INTER_CUBIC))


def test_grayscale_in_grayscale_out(models, tmp_path):
    _, _, fixed, _ = models
    gray = _image(2, 14, 10, channels=1)[..., 0]
    image_io.write_image(tmp_path / "g.png", gray)
    job, result = _upscale(fixed, tmp_path / "g.png", tmp_path / "out")
    assert job.output == str(tmp_path / "out" / "g.png")
    got = _read_back(job.output)
    want = cv2.cvtColor(fixed(image_io.to_rgb(gray)), cv2.COLOR_RGB2GRAY)  # BT.601 luma
    np.testing.assert_array_equal(got, want)
    assert result["notes"] == ["grayscale: replicated to RGB"]
    # A grayscale JPEG comes back as a (lossy) grayscale JPEG.
    image_io.write_image(tmp_path / "g.jpg", gray)
    job, _ = _upscale(fixed, tmp_path / "g.jpg", tmp_path / "out")
    got = _read_back(job.output)
    assert job.output.endswith("g.jpg") and got.ndim == 2
    assert np.abs(got.astype(int) - want).mean() < 4


def test_exif_rotated_input_gives_rotated_output(models, tmp_path):
    _, _, fixed, _ = models
    stored = _image(3, 8, 24)
    picture = Image.fromarray(stored)
    exif = picture.getexif()
    exif[0x0112] = 6
    picture.save(tmp_path / "r.jpg", quality=95, exif=exif.tobytes())
    stored = cv2.imread(str(tmp_path / "r.jpg"), cv2.IMREAD_UNCHANGED)[..., ::-1]  # as decoded
    _, result = _upscale(fixed, tmp_path / "r.jpg", tmp_path / "r_x3.png")
    np.testing.assert_array_equal(_read_back(tmp_path / "r_x3.png"), fixed(np.rot90(stored, -1)))
    assert result["output_size"] == [72, 24]


def test_compare_image_is_bicubic_beside_the_output(models, tmp_path):
    _, _, fixed, _ = models
    lr = _image(4, 12, 15)
    image_io.write_image(tmp_path / "c.png", lr)
    job, _ = _upscale(fixed, tmp_path / "c.png", tmp_path / "out", compare=True)
    assert job.compare == str(tmp_path / "out" / "c_compare.png")
    output, compare = _read_back(job.output), _read_back(job.compare)
    band = upscale.LABEL_BAND
    assert compare.shape == (band + 36, 90, 3)
    np.testing.assert_array_equal(compare[band:, 45:], output)
    np.testing.assert_array_equal(compare[band:, :45],
                                  cv2.resize(lr, (45, 36), interpolation=cv2.INTER_CUBIC))
    # Both labels are drawn, in the band only.
    assert compare[:band, :45].min() < 100 and compare[:band, 45:].min() < 100


def test_folder_with_a_corrupt_file(models, tmp_path):
    folder, _, fixed, _ = models
    photos = tmp_path / "photos"
    photos.mkdir()
    image_io.write_image(photos / "a.png", _image(5, 20, 30))
    image_io.write_image(photos / "c.bmp", _image(6, 9, 31))
    (photos / "bad.png").write_bytes(image_io.encode_png(_image(7, 20, 20))[:100])
    (photos / "notes.txt").write_text("not an image")
    out, report = tmp_path / "out", tmp_path / "report.json"
    status = run_tool("upscale", f"--model={folder}", f"--input={photos}", f"--output={out}",
                      f"--json={report}")
    assert status == 1
    assert sorted(os.listdir(out)) == ["a.png", "c.bmp"]
    np.testing.assert_array_equal(_read_back(out / "c.bmp"), fixed(_image(6, 9, 31)))
    summary = json.loads(report.read_text())
    assert summary["num_written"] == 2 and summary["num_failed"] == 1
    (failure,) = summary["failures"]
    assert failure["input"] == str(photos / "bad.png")
    assert failure["reason"] == f"{photos / 'bad.png'}: unreadable image: truncated or corrupt PNG data"
    assert summary["flags"]["input"] == str(photos) and summary["tile_shape"] == list(TILE)
    assert [f["output"] for f in summary["files"]] == [str(out / "a.png"), str(out / "c.bmp")]
    # All readable: status 0.
    (photos / "bad.png").unlink()
    assert run_tool("upscale", f"--model={folder}", f"--input={photos}/*.png",
                    f"--output={out / 'one.png'}") == 0
    np.testing.assert_array_equal(_read_back(out / "one.png"), _read_back(out / "a.png"))


def _run_binary(monkeypatch, *args):
    """Runs keras-sr-upscale's `run()` in this process; returns the SystemExit code."""
    module_name = "keras_sr_tools.upscale"
    module = importlib.import_module(module_name)
    monkeypatch.setattr(sys, "argv", ["keras-sr-upscale", *args])
    try:
        with pytest.raises(SystemExit) as exit_info:
            module.run()
        return exit_info.value.code
    finally:
        flags.FLAGS.unparse_flags()
        for flag in flags.FLAGS.get_flags_for_module(module_name):
            delattr(flags.FLAGS, flag.name)
        del sys.modules[module_name]


@pytest.mark.parametrize("args,message", [
    (["--model=m.tflite", "--output=o"], "--input must have a value"),
    (["--model=nowhere.tflite", "--input=x.png", "--output=o"],
     "--model: nowhere.tflite does not exist"),
])
def test_a_bad_command_line_exits_with_status_2_and_one_line(monkeypatch, capsys, args, message):
    assert _run_binary(monkeypatch, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("keras-sr-upscale: error: ") and message in err[0]


def test_resolve_model(tmp_path):
    job = tmp_path / "job"
    (job / "export").mkdir(parents=True)
    (job / "export" / "student_int8.tflite").write_bytes(b"")
    (job / "other.tflite").write_bytes(b"")
    assert upscale.resolve_model(job) == str(job / "export" / "student_int8.tflite")
    assert upscale.resolve_model(job / "other.tflite") == str(job / "other.tflite")
    assert upscale.resolve_model(job / "export") == str(job / "export" / "student_int8.tflite")
    (job / "export" / "student_fp32.tflite").write_bytes(b"")  # keras-sr-run writes both
    assert upscale.resolve_model(job / "export") == str(job / "export" / "student_int8.tflite")
    assert upscale.resolve_model(job) == str(job / "export" / "student_int8.tflite")
    (tmp_path / "two").mkdir()
    for name in ("b.tflite", "a.tflite"):
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(ValueError, match=r"two holds several \.tflite files \(a.tflite, b.tflite\)"):
        upscale.resolve_model(tmp_path / "two")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty holds no model: neither .*student_int8"):
        upscale.resolve_model(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt is not a \.tflite file"):
        upscale.resolve_model(tmp_path / "notes.txt")


def test_inputs_and_output_planning(tmp_path):
    for name in ("b.png", "a.JPG", ".hidden.png", "n.txt", "sub/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert upscale.list_inputs(tmp_path) == [str(tmp_path / "a.JPG"), str(tmp_path / "b.png")]
    assert upscale.list_inputs(tmp_path / "*" / "*.png") == [str(tmp_path / "sub" / "c.png")]
    with pytest.raises(FileNotFoundError, match=r"nothing\*\.png matches no files"):
        upscale.list_inputs(tmp_path / "nothing*.png")
    inputs = upscale.list_inputs(tmp_path)
    jobs = upscale.plan_jobs(inputs + [str(tmp_path / "n.txt")], tmp_path / "out", compare=True)
    assert [(os.path.basename(j.output), os.path.basename(j.compare)) for j in jobs] == [
        ("a.JPG", "a_compare.JPG"), ("b.png", "b_compare.png"), ("n.png", "n_compare.png")]
    with pytest.raises(ValueError, match=r"a\.JPG would overwrite the input .*a\.JPG"):
        upscale.plan_jobs(inputs, tmp_path)
    with pytest.raises(ValueError, match=r"would both be written to .*c\.png"):
        upscale.plan_jobs([str(tmp_path / "sub" / "c.png"), str(tmp_path / "c.png")], tmp_path / "o")
    with pytest.raises(ValueError, match="names a file, but there are 2 inputs"):
        upscale.plan_jobs(inputs, tmp_path / "x.png")


def test_progress_lines_and_bar():
    stream = io.StringIO()
    progress = upscale.Progress(2, bar=False, stream=stream)
    progress({"input": "a.png", "output": "o/a.png", "input_size": [2, 3], "output_size": [6, 9],
              "notes": ["grayscale: replicated to RGB"], "seconds": 0.25}, {})
    progress({"input": "b.png", "reason": "b.png: unreadable image: empty file (0 bytes)"}, {})
    assert stream.getvalue().splitlines() == [
        "[1/2] a.png -> o/a.png: 3x2 -> 9x6 in 0.25 s (grayscale: replicated to RGB)",
        "[2/2] FAILED b.png: unreadable image: empty file (0 bytes)"]
    stream = io.StringIO()
    progress = upscale.Progress(2, bar=True, stream=stream)
    progress({"input": "b.png", "reason": "b.png: broken"}, {"images_per_s": 0.0,
                                                             "megapixels_per_s": 0.0})
    progress({"input": "a.png", "output": "o/a.png", "input_size": [1000, 1000],
              "output_size": [3000, 3000], "notes": [], "seconds": 0.5},
             {"images_per_s": 2.0, "megapixels_per_s": 2.0})
    progress.close()
    text = stream.getvalue()
    assert "[1/2] FAILED b.png: broken" in text and "2/2" in text
    assert "img/s=2.00" in text and "MP/s=2.000" in text
