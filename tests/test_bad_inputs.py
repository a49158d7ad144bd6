"""Bad inputs through every job: odd images converted with a note, unusable ones skipped with the
reason (or, with --on_bad_image=fail, ending the run with one line), corrupt TFRecords named by
file and record.

Every file is made on the fly in tmp_path: OpenCV (8- and 16-bit PNG), Pillow (gray+alpha,
palette, CMYK, EXIF orientation), bytes by hand (empty, truncated, text), os.symlink (loops).
"""
import io
import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from absl import app
from conftest import run_tool
from PIL import Image

from keras_sr import evaluate, upscale
from keras_sr.common import bad_images, image_io
from keras_sr.common import record_schema as rs
from keras_sr.data import benchmark, prepare_records, sources
from keras_sr.data.matlab_resize import matlab_downscale
from keras_sr.data.pipeline import make_train_dataset

RNG = np.random.default_rng(11)


def _smooth(h, w, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, channels), dtype=np.uint8)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)


def _pillow(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _exif_jpeg(rgb, orientation):
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    return _pillow(image, "JPEG", exif=exif.tobytes(), quality=95)


def _unusable_files(folder):
    """Writes one file of every unusable kind; returns {name: reason pattern}."""
    png = image_io.encode_png(_smooth(48, 48))
    (folder / "empty.png").write_bytes(b"")
    (folder / "half.png").write_bytes(png[:len(png) // 2])
    (folder / "cut.jpg").write_bytes(image_io.encode_image(_smooth(48, 48), ".jpg")[:-40])
    (folder / "text.png").write_bytes(b"a text file with an image extension\n")
    os.symlink("loop.png", folder / "loop.png")  # a symlink to itself
    return {"empty.png": "unreadable image: empty file (0 bytes)",
            "half.png": "unreadable image: truncated or corrupt PNG data",
            "cut.jpg": "unreadable image: truncated or corrupt JPEG data",
            "text.png": "unreadable image: not an image file (starts with b'a text f'",
            "loop.png": "cannot read file (Too many levels of symbolic links)"}


# --- Data preparation: every kind, converted or skipped. ------------------------------------------
@pytest.fixture
def odd_folder(tmp_path):
    """A folder of user images of every odd kind, and the arrays they must come back as."""
    folder = tmp_path / "photos"
    folder.mkdir()
    want = {}
    rgb = _smooth(50, 62, seed=1)  # 50 x 62: cropped to 48 x 60
    image_io.write_image(folder / "plain.png", rgb)
    want["plain"] = rgb[:48, :60]
    wide = RNG.integers(0, 65536, (48, 51), dtype=np.uint16)
    cv2.imwrite(str(folder / "deep.png"), wide)  # 16-bit grayscale
    want["deep"] = ((wide.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    gray = _smooth(48, 48, 1, seed=2)[..., 0]
    (folder / "gray_alpha.png").write_bytes(
        _pillow(Image.fromarray(np.dstack([gray, gray // 2]), "LA"), "PNG"))
    want["gray_alpha"] = gray
    colour = _smooth(48, 48, seed=3)
    image_io.write_image(folder / "rgba.png", np.dstack([colour, colour[..., 0]]))
    want["rgba"] = colour
    palette = np.array([[255, 0, 0], [0, 255, 0], [12, 34, 56], [200, 201, 202]], np.uint8)
    index = np.repeat(np.repeat(RNG.integers(0, 4, (6, 6), dtype=np.uint8), 8, 0), 8, 1)
    paletted = Image.fromarray(index, "P")
    paletted.putpalette(palette.ravel().tolist())
    (folder / "palette.png").write_bytes(_pillow(paletted, "PNG"))
    want["palette"] = palette[index]
    inks = np.repeat(np.repeat(RNG.integers(0, 256, (6, 6, 4), dtype=np.uint8), 8, 0), 8, 1)
    cmyk = _pillow(Image.fromarray(inks, "CMYK"), "JPEG", quality=100)
    (folder / "cmyk.jpg").write_bytes(cmyk)
    want["cmyk"] = None  # lossy: checked against OpenCV's own decoding below
    stored = np.repeat(np.repeat(RNG.integers(0, 256, (6, 9, 3), dtype=np.uint8), 8, 0), 8, 1)
    data = _exif_jpeg(stored, 6)
    (folder / "rotated.jpg").write_bytes(data)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert decoded.shape == (48, 72, 3)
    want["rotated"] = np.rot90(decoded, -1)  # displayed: 72 x 48
    image_io.write_image(folder / "small.png", _smooth(20, 20))
    unusable = _unusable_files(folder)
    (folder / "notes.txt").write_text("not an image")
    os.symlink(".", folder / "again")  # a directory loop: not followed
    return folder, want, unusable


def _read_records(output_dir):
    out = {}
    for path in sorted(output_dir.glob("*.tfrecord")):
        for data in rs.read_tfrecord(path):
            ex = rs.decode_example(data, rs.SR_FEATURES)
            out[ex["image_id"].decode()] = tuple(image_io.decode_image(ex[k])
                                                 for k in ("hr_png", "lr_png"))
    return out


def test_prepare_converts_odd_images_and_lists_unusable_ones(odd_folder, tmp_path):
    folder, want, unusable = odd_folder
    summary = prepare_records(f"folder:{folder}", tmp_path / "records", num_shards=2)
    assert summary["num_examples"] == 7 and summary["num_converted_gray"] == 2
    assert summary["conversions"] == {
        "16-bit PNG: rounded to 8-bit": 1,
        "CMYK JPEG: converted to RGB (no colour management)": 1,
        "EXIF orientation 6: rotated 90 degrees clockwise": 1,
        "alpha channel dropped": 2,  # gray_alpha, rgba
        "cropped to a multiple of 3": 1,  # plain (deep is 48 x 51)
        "grayscale: replicated to RGB": 2,  # deep, gray_alpha
        "palette PNG: expanded to RGB": 1,
    }
    reasons = {os.path.basename(s["item"]): s["reason"] for s in summary["skipped"]}
    assert sorted(reasons) == sorted([*unusable, "small.png", "notes.txt", "again"])
    assert summary["num_skipped"] == len(reasons) == 8
    for name, reason in unusable.items():
        assert reasons[name].startswith(f"{folder / name}: {reason}"), reasons[name]
    assert reasons["small.png"].startswith("too small: HR 20x20")
    assert reasons["notes.txt"] == "not a PNG/JPEG/BMP file name"
    assert reasons["again"] == "a folder (folder sources are not recursive)"
    assert json.loads((tmp_path / "records" / "summary.json").read_text())["skipped"] == \
        summary["skipped"]
    # Every LR is under 64 px: listed as left out of training at that patch size.
    small = {i["image_id"]: i["lr_size"] for i in summary["small_lr"]["images"]}
    assert len(small) == 7 and small["photos/plain"] == [16, 20] and \
        small["photos/rotated"] == [24, 16]

    records = _read_records(tmp_path / "records")
    for name, pixels in want.items():
        hr, lr = records[f"photos/{name}"]
        if pixels is None:  # CMYK: OpenCV's ink formula on its own decoding
            inks = cv2.imdecode(np.frombuffer((folder / "cmyk.jpg").read_bytes(), np.uint8),
                                cv2.IMREAD_COLOR)[..., ::-1]
            np.testing.assert_array_equal(hr, inks)
            continue
        pixels = image_io.to_rgb(pixels)
        np.testing.assert_array_equal(hr, pixels, err_msg=name)
        np.testing.assert_array_equal(lr, matlab_downscale(pixels), err_msg=name)


def test_prepare_fail_policy_stops_at_the_first_unusable_image(odd_folder, tmp_path):
    folder, _, _ = odd_folder
    out = tmp_path / "records"
    # Sorted names: cmyk.jpg, cut.jpg, ...; notes.txt and the folder never end a run.
    first = re.escape(f"{folder / 'cut.jpg'}: unreadable image: truncated or corrupt JPEG")
    with pytest.raises(bad_images.BadImageError, match=f"^{first}"):
        prepare_records(f"folder:{folder}", out, num_shards=1, on_bad_image="fail")
    assert not list(out.glob("*.tfrecord")) and not (out / "summary.json").exists()
    for name in ("cut.jpg", "half.png", "empty.png", "text.png", "loop.png", "small.png"):
        (folder / name).unlink()
    summary = prepare_records(f"folder:{folder}", out, num_shards=1, on_bad_image="fail")
    assert summary["num_examples"] == 7 and summary["num_skipped"] == 2  # notes.txt, again


def test_prepare_tool_policies_and_empty_folders(odd_folder, tmp_path):
    folder, _, _ = odd_folder
    out = tmp_path / "out"
    run_tool("prepare_data", f"--source=folder:{folder}", f"--output={out}", "--num_workers=1",
             "--num_shards=1", "--format=benchmark")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_examples"] == 7 and summary["num_skipped"] == 8
    # The EDSR layout keeps the converted pixels uncropped, grayscale as one plane.
    assert image_io.read_image(out / "HR" / "deep.png").shape == (48, 51)
    assert image_io.read_image(out / "HR" / "rotated.png").shape == (72, 48, 3)
    with pytest.raises(bad_images.BadImageError, match=r"cut\.jpg: unreadable image"):
        run_tool("prepare_data", f"--source=folder:{folder}", f"--output={tmp_path / 'x'}",
                 "--on_bad_image=fail", "--num_workers=1", "--num_shards=1")
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "readme.txt").write_text("hello")
    for name, message in (("empty", "the folder .*empty is empty"),
                          ("texts", r"no usable images in .*texts \(1 entries skipped, e\.g\. "
                                    r"readme\.txt: not a PNG/JPEG/BMP file name\)")):
        with pytest.raises(app.UsageError, match=message):
            run_tool("prepare_data", f"--source=folder:{tmp_path / name}",
                     f"--output={tmp_path / 'y'}")
        assert not (tmp_path / "y").exists()  # checked before anything is written


def test_a_failing_binary_prints_one_line_and_exits_1(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    image_io.write_image(folder / "a.png", _smooth(60, 60))
    (folder / "b.png").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "keras_sr_tools.prepare_data",
                           f"--source=folder:{folder}", f"--output={tmp_path / 'out'}",
                           "--on_bad_image=fail", "--num_workers=1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"prepare_data.py: error: {folder / 'b.png'}: unreadable image: empty file (0 bytes)")


def test_a_file_that_disappears_after_listing_is_skipped_with_the_reason(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a", "b"):
        image_io.write_image(folder / f"{name}.png", _smooth(60, 60))
    source = sources.parse_source(f"folder:{folder}")
    (folder / "a.png").unlink()  # between listing and reading
    (gone, kept) = list(source.read_shard(0, 1, "p"))
    assert gone == sources.Skipped(str(folder / "a.png"), f"{folder / 'a.png'}: cannot read file "
                                   "(No such file or directory)")
    assert kept.image_id == "p/b"
    # The upscaler: planned, then gone.
    jobs = upscale.plan_jobs(upscale.list_inputs(folder), tmp_path / "out")
    (folder / "b.png").unlink()
    result = upscale.upscale_files(_nearest, jobs)
    assert result["skipped"] == [{"item": str(folder / "b.png"),
                                  "reason": f"{folder / 'b.png'}: cannot read file "
                                            "(No such file or directory)"}]


# --- Evaluation, the upscaler, the teacher job. ---------------------------------------------------
def _nearest(rgb):
    return np.repeat(np.repeat(rgb, 3, axis=0), 3, axis=1)


@pytest.fixture
def eval_set(tmp_path):
    """An EDSR-layout set: a.png usable; b.png 16-bit, c.png truncated, d.png a symlink loop."""
    root = tmp_path / "set"
    (root / "HR").mkdir(parents=True)
    os.makedirs(root / "LR_bicubic" / "X3")
    hr = _smooth(48, 48, seed=5)
    image_io.write_image(root / "HR" / "a.png", hr)
    cv2.imwrite(str(root / "HR" / "b.png"), RNG.integers(0, 65536, (48, 48), dtype=np.uint16))
    png = image_io.encode_png(hr)
    (root / "HR" / "c.png").write_bytes(png[:200])
    os.symlink("d.png", root / "HR" / "d.png")
    for stem in "abcd":
        image_io.write_image(benchmark.lr_path(root, stem, 3), matlab_downscale(hr))
    return root, hr


def test_evaluate_skips_or_fails_on_unusable_images(eval_set, tmp_path):
    root, hr = eval_set
    result = evaluate.evaluate_benchmark(evaluate.bicubic_predictor(3), root)
    assert result["num_images"] == 1 and result["num_skipped"] == 3
    reasons = {os.path.basename(s["item"]): s["reason"] for s in result["skipped"]}
    assert "unsupported bit depth (uint16)" in reasons["b.png"]
    assert "truncated or corrupt PNG data" in reasons["c.png"]
    assert "Too many levels of symbolic links" in reasons["d.png"]
    assert result["psnr_y"] == result["per_image"][0]["psnr_y"]  # the mean of a.png alone
    assert "skipped (not in the mean): " + reasons["c.png"] in evaluate.format_table(result)
    with pytest.raises(bad_images.BadImageError, match=r"b\.png: unsupported bit depth"):
        evaluate.evaluate_benchmark(evaluate.bicubic_predictor(3), root, on_bad_image="fail")
    out = tmp_path / "eval.json"
    run_tool("evaluate", "--model=bicubic", f"--data={root}", f"--json={out}")
    assert json.loads(out.read_text())["skipped"] == result["skipped"]
    with pytest.raises(bad_images.BadImageError, match=r"b\.png"):
        run_tool("evaluate", "--model=bicubic", f"--data={root}", "--on_bad_image=fail")
    for name in "abcd":
        os.unlink(root / "HR" / f"{name}.png")
    with pytest.raises(app.UsageError, match=r"--data=.*: no PNG/JPEG/BMP images in .*HR"):
        run_tool("evaluate", "--model=bicubic", f"--data={root}")


def test_upscale_skips_or_fails_on_unusable_images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    unusable = _unusable_files(folder)
    wide = RNG.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(folder / "deep.png"), wide)
    jobs = upscale.plan_jobs(upscale.list_inputs(folder), tmp_path / "out")
    result = upscale.upscale_files(_nearest, jobs)
    assert result["num_written"] == 1 and result["num_skipped"] == len(unusable) == 5
    assert {os.path.basename(s["item"]) for s in result["skipped"]} == set(unusable)
    for entry in result["skipped"]:
        assert unusable[os.path.basename(entry["item"])] in entry["reason"]
    (written,) = result["files"]
    assert written["notes"] == ["16-bit PNG: rounded to 8-bit"]
    want = ((wide.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)[..., ::-1]
    np.testing.assert_array_equal(image_io.read_rgb(tmp_path / "out" / "deep.png").rgb,
                                  _nearest(want))
    shutil.rmtree(tmp_path / "out")
    with pytest.raises(bad_images.BadImageError, match=r"cut\.jpg: unreadable image"):
        upscale.upscale_files(_nearest, jobs, on_bad_image="fail")
    assert not (tmp_path / "out").exists()  # cut.jpg is the first job


@pytest.fixture(scope="module")
def smoke_teacher(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from teacher_bridge.load import load_teacher
    from teacher_bridge.model import MambaIRv2Light

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("ckpt") / "smoke.pth"
    torch.save({"params": MambaIRv2Light("smoke").state_dict()}, path)
    return load_teacher(path, routing="argmax", config="smoke")


def test_precompute_skips_or_fails_on_unusable_images(smoke_teacher, tmp_path):
    from teacher_bridge import inference, precompute

    folder = tmp_path / "lr"
    folder.mkdir()
    good = _smooth(12, 10, seed=6)
    image_io.write_image(folder / "good.png", good)
    deep = RNG.integers(0, 65536, (9, 11), dtype=np.uint16)
    cv2.imwrite(str(folder / "deep.png"), deep)
    image_io.write_image(folder / "tiny.png", good[:5, :5])
    unusable = _unusable_files(folder)
    out = tmp_path / "out"
    summary = precompute.precompute(smoke_teacher, out, images=str(folder), num_shards=2,
                                    check_images=1, tile=None)
    reasons = {os.path.basename(s["item"]): s["reason"] for s in summary["skipped"]}
    assert sorted(reasons) == sorted([*unusable, "tiny.png"])
    assert reasons["tiny.png"] == "LR image 5x5 is under the teacher's minimum of 8 px per side"
    assert summary["num_skipped"] == 6
    assert summary["conversions"] == {"16-bit PNG: rounded to 8-bit": 1,
                                      "grayscale: replicated to RGB": 1}
    records = {}
    for path in sorted(out.glob("teacher-*.tfrecord")):
        for data in rs.read_tfrecord(path):
            rec = rs.decode_example(data, rs.TEACHER_FEATURES)
            records[rec["image_id"].decode()] = image_io.decode_image(rec["teacher_png"])
    assert sorted(records) == ["lr/deep", "lr/good"]
    want = ((deep.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    np.testing.assert_array_equal(records["lr/deep"], inference.upscale_image(
        smoke_teacher, image_io.to_rgb(want), tile=None))
    with pytest.raises(bad_images.BadImageError, match=r"cut\.jpg: unreadable image"):
        precompute.precompute(smoke_teacher, tmp_path / "out2", images=str(folder),
                              check_images=0, tile=None, on_bad_image="fail")
    with pytest.raises(bad_images.BadImageError, match=r"cut\.jpg"):
        run_tool("precompute_teacher", f"--checkpoint={smoke_teacher.checkpoint_path}",
                 "--config=smoke", f"--images={folder}", f"--output={tmp_path / 'out3'}",
                 "--routing=argmax", "--tile=0", "--check_images=0", "--on_bad_image=fail")
    (tmp_path / "empty").mkdir()
    with pytest.raises(app.UsageError, match=r"--images: images=.*empty.*: no PNG/JPEG/BMP files"):
        run_tool("precompute_teacher", f"--checkpoint={smoke_teacher.checkpoint_path}",
                 "--config=smoke", f"--images={tmp_path / 'empty'}",
                 f"--output={tmp_path / 'out4'}")


# --- Corrupt TFRecords. ---------------------------------------------------------------------------
def _examples(count=3):
    """(SR records, teacher records) of `count` 90 x 90 images with ids t/0, t/1, ..."""
    sr, teacher = [], []
    for i in range(count):
        hr = _smooth(90, 90, seed=i)
        sr.append(rs.encode_example({"image_id": f"t/{i}", "hr_png": image_io.encode_png(hr),
                                     "lr_png": image_io.encode_png(matlab_downscale(hr)),
                                     "scale": 3}, rs.SR_FEATURES))
        teacher.append(rs.encode_example(
            {"image_id": f"t/{i}", "teacher_png": image_io.encode_png(hr), "height": 90,
             "width": 90, "scale": 3, "checkpoint_sha256": "0" * 64, "routing": "argmax",
             "seed": -1, "tiling": "none"}, rs.TEACHER_FEATURES))
    return sr, teacher


def _damaged_copies(folder, kind, examples):
    """Writes KIND.tfrecord and three damaged copies: KIND_crc (record 1's data), KIND_cut (cut
    inside record 2), KIND_length (record 1's length field)."""
    rs.write_tfrecord(folder / f"{kind}.tfrecord", examples)
    data = (folder / f"{kind}.tfrecord").read_bytes()
    offsets = np.cumsum([0] + [16 + len(e) for e in examples])  # where each record starts
    assert offsets[-1] == len(data)
    for damage, at in (("crc", offsets[1] + 12 + 50), ("length", offsets[1])):
        copy = bytearray(data)
        copy[at] ^= 0x01
        (folder / f"{kind}_{damage}.tfrecord").write_bytes(bytes(copy))
    (folder / f"{kind}_cut.tfrecord").write_bytes(data[:offsets[2] + 100])


DAMAGE = {"crc": r"record 1 \(0-based\): bad CRC", "cut": r"record 2 \(0-based\): truncated",
          "length": r"record 1 \(0-based\): bad CRC"}


def test_corrupt_or_truncated_shards_name_the_file_and_the_record(tmp_path):
    sr, teacher = _examples()
    _damaged_copies(tmp_path, "sr", sr)
    _damaged_copies(tmp_path, "teacher", teacher)
    good = {"records": str(tmp_path / "sr.tfrecord"), "lr_patch": 16, "batch_size": 2, "seed": 0}
    assert make_train_dataset(**good, teacher_records=str(tmp_path / "teacher.tfrecord"))
    # Training input: reported when the pipeline is built, before any step runs.
    for damage, message in DAMAGE.items():
        with pytest.raises(ValueError, match=rf"sr_{damage}\.tfrecord: {message}"):
            make_train_dataset(**{**good, "records": str(tmp_path / f"sr_{damage}.tfrecord")})
        with pytest.raises(ValueError, match=rf"teacher_{damage}\.tfrecord: {message}"):
            make_train_dataset(**good, teacher_records=str(tmp_path / f"teacher_{damage}.tfrecord"))

    # The framework-free reader (the teacher job): the length CRC is checked even without verify.
    read = rs.read_tfrecord
    with pytest.raises(rs.RecordError, match=r"sr_crc\.tfrecord: corrupt data in record 1 \(0-b"):
        list(read(tmp_path / "sr_crc.tfrecord"))
    assert len(list(read(tmp_path / "sr_crc.tfrecord", verify=False))) == 3
    with pytest.raises(rs.RecordError, match=r"sr_cut\.tfrecord: truncated record 2 \(0-based\)"):
        list(read(tmp_path / "sr_cut.tfrecord", verify=False))
    with pytest.raises(rs.RecordError,
                       match=r"sr_length\.tfrecord: corrupt length of record 1 \(0-based; bad CRC"):
        list(read(tmp_path / "sr_length.tfrecord", verify=False))
