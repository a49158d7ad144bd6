"""MATLAB bicubic rule, data sources, SR record preparation and the tf.data training pipeline."""
import json
import os

import numpy as np
import pytest
from conftest import require_shared

from keras_sr.common import image_io
from keras_sr.common import record_schema as rs
from keras_sr.data import benchmark, builtin, load_benchmark, prepare_records
from keras_sr.data.matlab_resize import matlab_downscale, matlab_upscale, modcrop
from keras_sr.data.pipeline import make_train_dataset


# --- MATLAB bicubic rule. -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Set5", "Set14"])
def test_downscale_reproduces_official_lr_files_bit_for_bit(name):
    data_dir = require_shared("data", name)
    hr_files = benchmark.list_hr_files(os.path.join(data_dir, "HR"))
    assert len(hr_files) == {"Set5": 5, "Set14": 14}[name]
    for path in hr_files:
        stem = os.path.splitext(os.path.basename(path))[0]
        official = image_io.read_image(benchmark.lr_path(data_dir, stem, 3))
        ours = matlab_downscale(image_io.read_image(path), 3)  # bridge.png goes through as HxW
        assert ours.shape == official.shape, stem
        np.testing.assert_array_equal(ours, official, err_msg=stem)


def test_downscale_crops_to_a_multiple_of_three_and_centres_on_3i_minus_1():
    # A linear ramp is reproduced exactly by the symmetric kernel, at the sample centres u = 3i - 1
    # (1-based), i.e. 0-based input position 3i + 1 for 0-based output i, away from the mirrored
    # border. The 10 x 50 image is cropped to 9 x 48 first.
    ramp = np.tile((np.arange(50) * 5)[None, :], (10, 1)).astype(np.uint8)
    lr = matlab_downscale(ramp, 3)
    assert lr.shape == (3, 16)
    np.testing.assert_array_equal(lr[:, 2:-2], np.tile(5 * (3 * np.arange(2, 14) + 1), (3, 1)))
    np.testing.assert_array_equal(matlab_downscale(ramp, 3), matlab_downscale(ramp[:9, :48], 3))


def test_grayscale_is_resized_like_each_rgb_channel():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (31, 23), dtype=np.uint8)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    np.testing.assert_array_equal(matlab_downscale(gray)[..., None], matlab_downscale(rgb)[..., :1])
    np.testing.assert_array_equal(matlab_upscale(gray)[..., None], matlab_upscale(rgb)[..., :1])


def test_upscale_reproduces_a_quadratic_in_the_interior():
    # Keys' a = -0.5 cubic reproduces quadratics; a = -0.75 (OpenCV) or a wrong grid would not.
    x = np.arange(16, dtype=np.float64)
    lr = np.tile((x ** 2)[None, :], (4, 1)).astype(np.uint8)
    hr = matlab_upscale(lr, 3)
    assert hr.shape == (12, 48)
    u = (np.arange(1, 49) / 3 + 1 / 3) - 1  # 0-based LR coordinate of each output column
    want = np.floor(u ** 2 + 0.5)
    np.testing.assert_array_equal(hr[:, 6:-6], np.tile(want[6:-6], (12, 1)))


def test_resize_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        matlab_downscale(np.zeros((9, 9, 3), np.float32))
    with pytest.raises(ValueError, match="scale"):
        matlab_downscale(np.zeros((9, 9, 3), np.uint8), scale=1)
    with pytest.raises(ValueError, match="smaller than the scale"):
        matlab_downscale(np.zeros((2, 9), np.uint8))


# --- Benchmark layout, builtin set. ---------------------------------------------------------------
def test_builtin_val_round_trips_through_the_benchmark_layout(tmp_path):
    names = builtin.write_benchmark_layout(tmp_path / "val")
    assert names == list(builtin.VAL)
    images = load_benchmark(tmp_path / "val")
    assert [name for name, *_ in images] == sorted(builtin.VAL)
    originals = dict(builtin.load_split("val"))
    for name, lr, hr, is_gray in images:
        assert not is_gray
        np.testing.assert_array_equal(hr, modcrop(originals[name]))
        np.testing.assert_array_equal(lr, matlab_downscale(originals[name]))
    assert not set(builtin.TRAIN) & set(builtin.VAL)

    os.remove(benchmark.lr_path(tmp_path / "val", "coffee", 3))
    with pytest.raises(FileNotFoundError, match="coffeex3.png"):
        load_benchmark(tmp_path / "val")


# --- prepare_records. -----------------------------------------------------------------------------
def _read_records(output_dir):
    records = {}
    for name in sorted(os.listdir(output_dir)):
        if name.endswith(".tfrecord"):
            for serialized in rs.read_tfrecord(output_dir / name):
                ex = rs.decode_example(serialized, rs.SR_FEATURES)
                hr, lr = (image_io.decode_image(ex[k]) for k in ("hr_png", "lr_png"))
                records[ex["image_id"].decode()] = (hr, lr, ex["scale"])
    return records


def test_prepare_records_from_a_folder_skips_bad_files_with_reasons(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (50, 62, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (49, 52), dtype=np.uint8)
    (src / "a.bmp").write_bytes(image_io.encode_png(rgb))  # the content decides, not the suffix
    image_io.write_png(src / "b.png", gray)
    (src / "a.png").write_bytes(b"duplicate name")
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    image_io.write_png(src / "tiny.png", rgb[:20, :20])
    (src / "notes.txt").write_text("hello")

    out = tmp_path / "records"
    summary = prepare_records(f"folder:{src}", out, num_shards=2)
    counts = summary["num_examples"], summary["num_converted_gray"], summary["num_shards"]
    assert counts == (2, 1, 2)
    reasons = {os.path.basename(s["item"]): s["reason"] for s in summary["skipped"]}
    assert sorted(reasons) == ["a.png", "bad.png", "notes.txt", "tiny.png"]
    assert "duplicate" in reasons["a.png"] and "unreadable" in reasons["bad.png"]
    assert "too small" in reasons["tiny.png"] and "not a PNG" in reasons["notes.txt"]
    assert json.loads((out / "summary.json").read_text())["num_skipped"] == 4

    records = _read_records(out)
    assert sorted(records) == ["photos/a", "photos/b"]
    hr, lr, scale = records["photos/a"]
    assert scale == 3
    np.testing.assert_array_equal(hr, rgb[:48, :60])
    np.testing.assert_array_equal(lr, matlab_downscale(rgb))
    hr, lr, _ = records["photos/b"]
    np.testing.assert_array_equal(hr, np.repeat(gray[:48, :51, None], 3, axis=-1))
    np.testing.assert_array_equal(lr, np.repeat(matlab_downscale(gray)[..., None], 3, axis=-1))

    # A rerun with the same settings reuses the finished shards; a new shard count replaces them.
    shard = out / "sr-00000-of-00002.tfrecord"
    mtime = shard.stat().st_mtime_ns
    assert prepare_records(f"folder:{src}", out, num_shards=2)["num_examples"] == 2
    assert shard.stat().st_mtime_ns == mtime
    prepare_records(f"folder:{src}", out, num_shards=1)
    assert sorted(p.name for p in out.glob("sr-*")) == ["sr-00000-of-00001.json",
                                                        "sr-00000-of-00001.tfrecord"]


def test_prepare_records_from_benchmark_layout_takes_lr_as_given(tmp_path):
    layout = tmp_path / "val"
    builtin.write_benchmark_layout(layout)
    lr_file = benchmark.lr_path(layout, "chelsea", 3)
    marked = image_io.read_image(lr_file)
    marked[0, 0] = [1, 2, 3]  # no longer what the MATLAB rule gives: must be kept, not regenerated
    image_io.write_png(lr_file, marked)
    os.remove(benchmark.lr_path(layout, "coffee", 3))

    summary = prepare_records(f"benchmark:{layout}", tmp_path / "rec", num_shards=4)
    assert summary["num_examples"] == 1 and summary["num_shards"] == 1
    assert "missing LR file" in summary["skipped"][0]["reason"]
    (hr, lr, _), = _read_records(tmp_path / "rec").values()
    np.testing.assert_array_equal(lr, marked)


def test_prepare_records_from_tfds_uses_even_splits_and_tfds_ids(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    rng = np.random.default_rng(2)
    hrs = [rng.integers(0, 256, (60 + 3 * i, 51, 3), dtype=np.uint8) for i in range(4)]

    def as_dataset_fn(builder, split, read_config, **kwargs):
        # Stands in for the download: shard `split.index` of `split.count` gets every other image;
        # image 3 comes with an LR of the wrong size.
        assert read_config.add_tfds_id
        rows = [{"hr": hrs[i], "lr": hrs[i][::3, ::3] if i != 3 else hrs[i][::4, ::4],
                 "tfds_id": f"div2k-train.tfrecord-00000-of-00001__{i}"}
                for i in range(split.index, 4, split.count)]
        image = tf.TensorSpec([None, None, 3], tf.uint8)
        spec = {"hr": image, "lr": image, "tfds_id": tf.TensorSpec([], tf.string)}
        return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=spec)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset_fn):
        summary = prepare_records("tfds:div2k/bicubic_x3", tmp_path, num_shards=2)
    assert (summary["num_examples"], summary["num_shards"], summary["num_skipped"]) == (3, 2, 1)
    assert "is not HR" in summary["skipped"][0]["reason"]
    records = _read_records(tmp_path)
    assert sorted(records) == [f"div2k_train/div2k-train.tfrecord-00000-of-00001__{i}"
                               for i in range(3)]
    for i in range(3):
        hr, lr, _ = records[f"div2k_train/div2k-train.tfrecord-00000-of-00001__{i}"]
        np.testing.assert_array_equal(hr, hrs[i])  # heights 60, 63, 66 and width 51: no crop
        np.testing.assert_array_equal(lr, hrs[i][::3, ::3])  # the given LR, not regenerated


def test_bad_source_spec_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="bad source"):
        prepare_records("folders:/x", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        prepare_records(f"folder:{tmp_path / 'missing'}", tmp_path)
    with pytest.raises(ValueError, match="unknown builtin split"):
        prepare_records("builtin:test", tmp_path)


# --- Training pipeline. ---------------------------------------------------------------------------
# Toy images whose pixels encode their own coordinates: LR[y, x] = (y, x, 40 i) and
# HR[3y + dy, 3x + dx] = (y, x, 40 i + 3 dy + dx + 1), so any misaligned or differently transformed
# HR crop is detected. The teacher image is the HR with 120 added to the last channel.
# toy/2 is smaller than the 8 px patch and must be left out.
_LR_SIZES = {"toy/0": (30, 36), "toy/1": (27, 33), "toy/2": (6, 6)}


def _toy_images(index, h, w):
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    lr = np.stack([y, x, np.full_like(y, 40 * index)], axis=-1).astype(np.uint8)
    hr = np.repeat(np.repeat(lr, 3, axis=0), 3, axis=1)
    sub = np.tile(np.arange(9).reshape(3, 3), (h, w))
    hr[..., 2] += (sub + 1).astype(np.uint8)
    teacher = hr.copy()
    teacher[..., 2] += 120
    return lr, hr, teacher


def _write_toy_records(tmp_path, teacher_ids=None, teacher_crop=False):
    images = {k: _toy_images(i, *s) for i, (k, s) in enumerate(_LR_SIZES.items())}
    sr_file = tmp_path / "sr.tfrecord"
    rs.write_tfrecord(sr_file, [rs.encode_example(
        {"image_id": k, "hr_png": image_io.encode_png(hr), "lr_png": image_io.encode_png(lr),
         "scale": 3}, rs.SR_FEATURES) for k, (lr, hr, _) in images.items()])
    teacher_file = tmp_path / "teacher.tfrecord"
    teachers = []
    for k in reversed(teacher_ids if teacher_ids is not None else list(images) + ["other/9"]):
        t = images[k][2] if k in images else np.zeros((6, 6, 3), np.uint8)
        t = t[:-3] if teacher_crop else t
        teachers.append(rs.encode_example(
            {"image_id": k, "teacher_png": image_io.encode_png(t), "height": t.shape[0],
             "width": t.shape[1], "scale": 3, "checkpoint_sha256": "0" * 64, "routing": "argmax",
             "seed": 0, "tiling": "none"}, rs.TEACHER_FEATURES))
    rs.write_tfrecord(teacher_file, teachers)
    return images, str(sr_file), str(teacher_file)


_DIHEDRAL = [lambda a, k=k, f=f: np.rot90(a[:, ::-1] if f else a, k)
             for k in range(4) for f in (0, 1)]


def test_pipeline_crops_are_aligned_augmented_and_joined_with_the_teacher(tmp_path):
    images, sr_file, teacher_file = _write_toy_records(tmp_path)
    p = 8
    ds = make_train_dataset(sr_file, lr_patch=p, batch_size=2, teacher_records=teacher_file,
                            shuffle_buffer=8, seed=0, repeat=False, crops_per_image=6)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 6  # 2 usable images x 6 crops / batch of 2: the tiny image is left out
    transforms, positions = set(), set()
    for batch in batches:
        assert batch["lr"].shape == (2, p, p, 3) and batch["hr"].shape == (2, 3 * p, 3 * p, 3)
        assert batch["lr"].dtype == np.float32 and batch["hr"].max() <= 1.0
        u8 = {k: np.round(v * 255).astype(np.uint8) for k, v in batch.items()}
        np.testing.assert_allclose(u8["hr"] / 255.0, batch["hr"], atol=1e-6)
        for b in range(2):
            lr_crop = u8["lr"][b]
            index = int(lr_crop[0, 0, 2]) // 40
            lr, hr, teacher = images[f"toy/{index}"]
            matches = []
            for t, undo in enumerate(_DIHEDRAL):
                window = undo(lr_crop)
                y0, x0 = int(window[0, 0, 0]), int(window[0, 0, 1])
                if np.array_equal(window, lr[y0:y0 + p, x0:x0 + p]):
                    matches.append((t, y0, x0))
            assert len(matches) == 1, "LR crop is not a transformed window of its image"
            t, y0, x0 = matches[0]
            undo = _DIHEDRAL[t]
            window = np.s_[3 * y0:3 * (y0 + p), 3 * x0:3 * (x0 + p)]
            np.testing.assert_array_equal(undo(u8["hr"][b]), hr[window])
            np.testing.assert_array_equal(undo(u8["teacher"][b]), teacher[window])
            transforms.add(t)
            positions.add((index, y0, x0))
    assert len(transforms) >= 4 and len(positions) >= 10


def test_pipeline_is_reproducible_with_a_seed(tmp_path):
    _, sr_file, _ = _write_toy_records(tmp_path)

    def first(seed):
        ds = make_train_dataset(sr_file, lr_patch=8, batch_size=4, seed=seed, shuffle_buffer=16)
        return next(iter(ds))["hr"].numpy()

    np.testing.assert_array_equal(first(3), first(3))
    assert not np.array_equal(first(3), first(4))


def test_pipeline_reports_missing_or_mismatched_teacher_outputs(tmp_path):
    _, sr_file, teacher_file = _write_toy_records(tmp_path, teacher_ids=["toy/0", "toy/2"])
    with pytest.raises(ValueError, match=r"sr\.tfrecord: image 'toy/1' has no teacher output"):
        make_train_dataset(sr_file, lr_patch=8, teacher_records=teacher_file)
    _, sr_file, teacher_file = _write_toy_records(tmp_path, teacher_crop=True)
    with pytest.raises(ValueError, match=r"teacher\.tfrecord: teacher image of 'toy/\d' is \(\d+"):
        make_train_dataset(sr_file, lr_patch=8, teacher_records=teacher_file)
    with pytest.raises(ValueError, match="has scale 3, expected 4"):
        make_train_dataset(sr_file, lr_patch=4, scale=4)
    with pytest.raises(ValueError, match="large enough"):
        make_train_dataset(sr_file, lr_patch=40)
    with pytest.raises(ValueError, match=r"teacher\.tfrecord: not a readable record file"):
        make_train_dataset(teacher_file, lr_patch=8)  # teacher records passed as SR records
    with pytest.raises(FileNotFoundError, match="no TFRecord files"):
        make_train_dataset(str(tmp_path / "nothing*.tfrecord"))
