"""The job's report: tables and numbers as rendered, the crop choice, curves from real event logs,
metrics.json, and the HTML page as a browser decodes it (headless Chromium, skipped without one)."""
import base64
import json
import os
import re

import cv2
import numpy as np
import pytest
import tensorflow as tf

from conftest import browser_check

from keras_sr import report
from keras_sr.report import curves, examples

# --------------------------------------------------------------------------------------------------
# Synthetic report data; numbers chosen so that their rendered form is known.

SET5_ROWS = [
    {"model": "bicubic", "psnr_y": 30.3951, "ssim_y": 0.86891, "psnr_rgb": 28.62, "ssim_rgb": 0.8512,
     "parameters": None, "file_bytes": None, "latency_ms": 0.812},
    {"model": "fp32", "psnr_y": 32.2514, "ssim_y": 0.90212, "psnr_rgb": 30.41, "ssim_rgb": 0.8899,
     "parameters": 82683, "file_bytes": 339_968, "latency_ms": 87.46},
    {"model": "int8", "psnr_y": np.float32(32.2321), "ssim_y": 0.90071, "psnr_rgb": 30.38,
     "ssim_rgb": 0.8871, "parameters": 82683, "file_bytes": 98_765, "latency_ms": 30.31},
]


def synthetic_example(rng, name, lr_shape=(30, 40), scale=3):
    """Gradient + stripes HR; "bicubic" is the LR enlarged by nearest neighbour; FP32 and INT8 are
    HR plus small noise, so INT8 gains most where the stripes are."""
    h, w = lr_shape[0] * scale, lr_shape[1] * scale
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    hr = np.stack([40 + 150 * xx / w, 60 + 120 * yy / h, 200 - 100 * xx / w], axis=-1)
    stripes = (slice(h // 3, h // 3 + 30), slice(w // 2, w // 2 + 45))
    hr[stripes] += 50 * np.sin(xx[stripes] * 1.3)[..., None]
    hr = np.clip(hr + rng.normal(0, 2, hr.shape), 0, 255).round().astype(np.uint8)
    lr = hr.reshape(lr_shape[0], scale, lr_shape[1], scale, 3).mean(axis=(1, 3)).round()
    lr = lr.astype(np.uint8)
    near = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)

    def noisy(sigma):
        return np.clip(hr + rng.normal(0, sigma, hr.shape), 0, 255).round().astype(np.uint8)

    return {"name": name, "lr": lr, "bicubic": near, "fp32": noisy(1.5), "int8": noisy(2.0),
            "hr": hr}


def write_event_log(workdir, scalars, file_suffix=""):
    """Writes {tag: [(step, value)]} with tf.summary, as keras_sr.train.lib does, into WORKDIR/tb."""
    writer = tf.summary.create_file_writer(os.path.join(workdir, "tb"), filename_suffix=file_suffix)
    with writer.as_default():
        for tag, points in scalars.items():
            for step, value in points:
                tf.summary.scalar(tag, value, step=step)
    writer.close()


def full_data(tmp_path, rng, num_examples=2):
    """Report data with every section filled in; stage2 has no logs."""
    for name, steps, start in (("stage1", 400, 0.08), ("stage3", 150, 0.03)):
        write_event_log(tmp_path / name, {
            "train/loss": [(s, start * (1 + 3 / (1 + s / 20))) for s in range(10, steps + 1, 10)],
            "val/psnr_y": [(s, 30.0 + 2 * s / steps) for s in range(100, steps + 1, 100)]})
    return {
        "title": "keras-sr-run: demo",
        "machine": {"cpu": "AMD EPYC 9R14", "cores": 2, "isa": "avx2 avx512f avx512_vnni"},
        "wall_seconds": 2112.0,
        "stages": [{"name": "data", "seconds": 12.5, "steps": None, "workdir": str(tmp_path / "records")},
                   {"name": "stage1", "seconds": 1134.0, "steps": 4589, "workdir": str(tmp_path / "stage1")}],
        "flags": {"workdir": str(tmp_path), "config": "default", "eval_data": ["a/*/b_c"]},
        "sets": [{"name": "Set5", "rows": SET5_ROWS},
                 {"name": "builtin:val", "rows": [dict(SET5_ROWS[1], parameters=None, file_bytes=None,
                                                       latency_ms=None)]}],
        "examples": [synthetic_example(rng, f"img{i}") for i in range(num_examples)],
        "curves": {"stage1": str(tmp_path / "stage1"), "stage2": str(tmp_path / "stage2"),
                   "stage3": str(tmp_path / "stage3")},
        "speed": [{"model": r["model"], "latency_ms": r["latency_ms"], "psnr_y": r["psnr_y"],
                   "set": "Set5"} for r in SET5_ROWS],
        "parity": {"identical_fraction": 0.99871, "within_1_fraction": 1.0, "max_abs_diff": 2,
                   "psnr_vs_reference": 58.314},
        "ops": {"CONV_2D": 10, "ADD": 1, "DEPTH_TO_SPACE": 1, "QUANTIZE": 2},
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    data = full_data(tmp_path, np.random.default_rng(0))
    return data, report.write_report(tmp_path / "out", data)


def _png_width(data):
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a decodable PNG"
    return image.shape[1]


# --------------------------------------------------------------------------------------------------
# Content.

def test_set_tables_show_formatted_numbers_and_the_gain_over_bicubic(written):
    _, paths = written
    markdown = open(paths["markdown"], encoding="utf-8").read()
    header = ("| model | PSNR-Y (dB) | Δ bicubic (dB) | SSIM-Y | PSNR-RGB (dB) | SSIM-RGB | parameters "
              "| file size | latency (ms) |")
    assert header in markdown
    assert "| bicubic | 30.40 |  | 0.8689 | 28.62 | 0.8512 | - | - | 0.81 |" in markdown
    assert "| fp32 | 32.25 | +1.86 | 0.9021 | 30.41 | 0.8899 | 82,683 | 332.0 KiB | 87.46 |" in markdown
    assert "| int8 | 32.23 | +1.84 | 0.9007 | 30.38 | 0.8871 | 82,683 | 96.5 KiB | 30.31 |" in markdown
    # The builtin:val set has no bicubic row and no optional column: both are left out, with a note.
    assert "| model | PSNR-Y (dB) | SSIM-Y | PSNR-RGB (dB) | SSIM-RGB |\n" in markdown
    assert "> no bicubic row: PSNR deltas are not shown" in markdown
    assert "| identical\\_fraction | 99.87 % |" in markdown
    assert "| psnr\\_vs\\_reference | 58.31 dB |" in markdown
    # Operators by count, most frequent first.
    assert "| CONV\\_2D | 10 |\n| QUANTIZE | 2 |\n| ADD | 1 |\n| DEPTH\\_TO\\_SPACE | 1 |" in markdown
    assert "| stage1 | 18m54s | 1134.0 | 4,589 | 4.05 |" in markdown
    assert "| eval\\_data | \\[\"a/\\*/b\\_c\"\\] |" in markdown  # Markdown syntax escaped
    html_text = open(paths["html"], encoding="utf-8").read()
    assert '<td class="num">+1.86</td>' in html_text and "<td class=\"num\">96.5 KiB</td>" in html_text


def test_markdown_links_every_image_and_html_inlines_the_same_pngs(written):
    _, paths = written
    markdown = open(paths["markdown"], encoding="utf-8").read()
    html_text = open(paths["html"], encoding="utf-8").read()
    linked = re.findall(r"!\[[^\]]*\]\(report_files/([\w.]+)\)", markdown)
    names = ["speed.png", "example0_crop.png", "example0_error.png", "example1_crop.png",
             "example1_error.png", "curves.png"]
    assert linked == names
    assert sorted(os.listdir(paths["files"])) == sorted(names)
    inlined = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)
    assert [base64.b64decode(s) for s in inlined] == \
        [open(os.path.join(paths["files"], n), "rb").read() for n in names]
    assert all(_png_width(base64.b64decode(s)) > 100 for s in inlined)
    # Self-contained: no script, nothing fetched from elsewhere.
    assert "<script" not in html_text.lower()
    assert not re.search(r'(src|href)="(?!data:|#)', html_text)


def test_only_title_and_sets_give_a_report_with_a_note_per_missing_section(tmp_path):
    paths = report.write_report(tmp_path, {"title": "minimal", "sets": [{"name": "Set5", "rows": SET5_ROWS}]})
    markdown = open(paths["markdown"], encoding="utf-8").read()
    for note in ("no speed measurements were given", "no example images were given",
                 "no training work directories were given", "no parity measurements were given",
                 "no operator counts were given", "no machine description was given",
                 "no stage timings were given", "no flags were given"):
        assert f"> {note}" in markdown
    assert paths["images"] == [] and os.listdir(paths["files"]) == []
    assert "<img" not in open(paths["html"], encoding="utf-8").read()


def test_bad_data_is_named_and_nothing_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"sets\[0\]\.rows\[1\]\.ssim_y must be a number"):
        report.write_report(tmp_path, {"title": "t", "sets": [{"name": "a", "rows": [
            SET5_ROWS[0], dict(SET5_ROWS[1], ssim_y="0.9")]}]})
    with pytest.raises(ValueError, match="title"):
        report.write_report(tmp_path, {"sets": []})
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# metrics.json

def test_metrics_json_round_trips_the_numbers_without_pixels(written):
    data, paths = written
    with open(paths["metrics"], encoding="utf-8") as f:
        metrics = json.load(f)
    expected = json.loads(json.dumps({k: v for k, v in data.items() if k != "examples"},
                                     default=float))
    assert {k: v for k, v in metrics.items() if k != "examples"} == expected
    assert metrics["sets"][0]["rows"][2]["psnr_y"] == float(np.float32(32.2321))
    assert metrics["sets"][0]["rows"][1]["parameters"] == 82683
    assert [e["name"] for e in metrics["examples"]] == ["img0", "img1"]
    assert set(metrics["examples"][0]) == {"name", "scale", "crop", "crop_selection", "crop_psnr_y"}
    assert metrics["examples"][0]["scale"] == 3
    assert metrics["examples"][0]["crop_psnr_y"]["int8"] > metrics["examples"][0]["crop_psnr_y"]["bicubic"]


@pytest.mark.parametrize("where", ["row", "parity", "flags"])
def test_metrics_json_refuses_nan_and_writes_nothing(tmp_path, where):
    data = {"title": "t", "sets": [{"name": "Set5", "rows": [dict(r) for r in SET5_ROWS]}]}
    if where == "row":
        data["sets"][0]["rows"][2]["psnr_y"], path = np.float32("nan"), r"sets\[0\]\.rows\[2\]\.psnr_y"
    elif where == "parity":
        data["parity"], path = {"max_abs_diff": float("inf")}, r"parity\.max_abs_diff"
    else:
        data["flags"], path = {"lr": [1.0, float("nan")]}, r"flags\.lr\[1\]"
    with pytest.raises(ValueError, match=rf"finite numbers only: {path} is (nan|inf)"):
        report.write_report(tmp_path / "out", data)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# The crop and the curves.

def test_the_crop_is_where_int8_gains_most_and_lies_on_the_lr_grid():
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 100, (90, 120, 3), dtype=np.uint8)
    bicubic = hr.copy()
    bicubic[35:59, 62:86] += 120  # bicubic far off on this 24x24 window only
    int8 = hr + 3  # a little off everywhere
    top, left, height, width = examples.best_crop({"hr": hr, "bicubic": bicubic, "int8": int8}, 3, 24)
    # The 24x24 window with corner on the 3-pixel grid that overlaps rows 35-58, columns 62-85 most.
    assert (top, left, height, width) == (36, 63, 24, 24)
    example = examples.prepare({"name": "x", "lr": hr[::3, ::3], "hr": hr, "bicubic": bicubic,
                                "int8": int8, "fp32": hr}, size=24)
    assert example.crop_psnr_y["fp32"] is None  # identical to HR
    y_error = 3 * 219 / 255  # +3 on R, G and B moves BT.601 luma by 3 x (sum of the weights)
    assert example.crop_psnr_y["int8"] == pytest.approx(20 * np.log10(255 / y_error), abs=1e-9)
    np.testing.assert_array_equal(example.crop("lr")[::3, ::3], hr[36:60:3, 63:87:3])
    # Smaller than the crop along a side: the whole side.
    assert examples.best_crop({"hr": hr, "bicubic": bicubic, "int8": int8}, 3, 96)[2:] == (90, 96)


def test_wrong_example_shapes_are_reported():
    rng = np.random.default_rng(0)
    example = synthetic_example(rng, "bad")
    example["int8"] = example["int8"][:-3]
    with pytest.raises(ValueError, match=r"example 'bad': 'int8' has shape \(87, 120, 3\)"):
        examples.prepare(example)


def test_curves_are_read_from_tf2_event_logs_and_a_resumed_run_overrides(tmp_path):
    write_event_log(tmp_path, {"train/loss": [(10, 0.5), (20, 0.25)], "val/psnr_y": [(20, 31.5)],
                               "train/learning_rate": [(10, 1e-3)]}, ".a")
    write_event_log(tmp_path, {"train/loss": [(20, 0.125), (30, 0.0625)]}, ".b")  # resumed at 10
    scalars = curves.read_scalars(tmp_path)
    assert set(scalars) == {"train/loss", "val/psnr_y"}
    np.testing.assert_array_equal(scalars["train/loss"][0], [10, 20, 30])
    np.testing.assert_allclose(scalars["train/loss"][1], [0.5, 0.125, 0.0625])
    np.testing.assert_allclose(scalars["val/psnr_y"][1], [31.5])
    assert curves.read_scalars(tmp_path / "nowhere") == {}


def test_missing_logs_still_give_a_curves_figure(tmp_path):
    paths = report.write_report(tmp_path / "out", {"title": "t", "sets": [],
                                                   "curves": {"stage1": str(tmp_path / "none")}})
    assert [os.path.basename(p) for p in paths["images"]] == ["curves.png"]
    assert _png_width(open(paths["images"][0], "rb").read()) > 100


# --------------------------------------------------------------------------------------------------
# The page in a browser.

def test_the_page_decodes_every_image_in_a_browser(written, tmp_path):
    data, paths = written
    result, dom = browser_check(paths["html"], tmp_path)
    widths = [_png_width(open(p, "rb").read()) for p in paths["images"]]
    assert result["widths"] == widths and min(widths) > 0
    # [rows incl. header, columns]: Set5 (3 models, 9 columns), builtin:val (1, 5), parity, ops,
    # machine, stages, flags.
    assert result["tables"] == [[4, 9], [2, 5], [5, 2], [5, 2], [4, 2], [3, 6], [4, 2]]
    assert ">30.40</td>" in dom and ">+1.84</td>" in dom
