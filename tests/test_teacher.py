"""Tests of the PyTorch MambaIRv2-Light teacher: exactness against the official code, tiling.

The golden outputs in ../shared/fixtures/mambairv2_light_x3 come from the official class
(csguoh/MambaIR) with mamba's reference scan, on random weights in the official checkpoint format.
"""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import require_shared, run_tool
from torch import nn

import teacher_bridge
from keras_sr.common import image_io, record_schema
from teacher_bridge import inference, precompute
from teacher_bridge.load import CheckpointError, load_teacher, read_state_dict
from teacher_bridge.model import CONFIGS, MambaIRv2Light, mirror_pad
from teacher_bridge.scan import selective_scan, selective_scan_reference

FIXTURE_SHA256 = "069921ac356a2d5b3452221b8974adcdde73bf1e8dbfbf3057ee3c0269a9d680"
TOL = 1e-4  # a faithful float32 CPU re-implementation agrees to about 1e-5
MODES = {  # golden mode -> (routing, stable_sort)
    "argmax_stable_sort": ("argmax", True),
    "gumbel_seed1234_stable_sort": ("gumbel", True),
    "official_cpu_gumbel_seed1234_unstable_sort": ("gumbel", False),
}
INPUTS = ("x_20x27_b1", "x_32x32_b2", "x_48x40_b1")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two OpenMP threads on two shared cores stall each other badly when other jobs run; one thread
    # keeps this file's run time predictable.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def fixture_dir():
    return require_shared("fixtures", "mambairv2_light_x3")


@pytest.fixture(scope="module")
def golden(fixture_dir):
    return torch.load(fixture_dir / "golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def teacher(fixture_dir):
    return load_teacher(fixture_dir / "weights.pth", routing="argmax")


@pytest.fixture
def set_mode(teacher):
    """Sets routing and sort of the shared teacher for one test, restoring the defaults after it."""
    def set_(routing, stable_sort=True):
        teacher.routing, teacher.stable_sort = routing, stable_sort
        return teacher
    yield set_
    set_("argmax")


def test_lazy_package_import_keeps_torch_out():
    code = "import sys, teacher_bridge; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_size_matches_official_checkpoint(fixture_dir, teacher):
    model = MambaIRv2Light()
    state = model.state_dict()
    assert len(state) == 1019
    assert sum(p.numel() for p in model.parameters()) == 780_587
    official, where, sha256 = read_state_dict(fixture_dir / "weights.pth")
    assert where == "params" and sha256 == FIXTURE_SHA256
    assert list(state) == list(official)  # same names in the official order
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in official.items()}
    assert "mean" not in state
    assert teacher.checkpoint_sha256 == FIXTURE_SHA256
    assert not teacher.training


@pytest.mark.parametrize("config, thousands", [("light_x2", 774), ("light_x4", 790)])
def test_other_scales_have_the_published_size(config, thousands):
    model = MambaIRv2Light(config)
    # Paper: 774K (x2) and 790K (x4) parameters.
    assert round(sum(p.numel() for p in model.parameters()) / 1000) == thousands


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", INPUTS)
def test_matches_official_outputs(golden, set_mode, mode, name):
    routing, stable = MODES[mode]
    if not stable and not torch.__version__.startswith("2.13."):
        pytest.skip("the unstable-sort fixture depends on torch 2.13's CPU sort")
    model = set_mode(routing, stable)
    torch.manual_seed(1234)  # as the fixture: immediately before each forward
    with torch.inference_mode():
        out = model(golden["inputs"][name])
    err = (out - golden["outputs"][mode][name]).abs().max().item()
    assert err <= TOL, f"{mode}/{name}: max |ours - official| = {err:.3g} > {TOL}"


def test_matches_official_intermediates(golden, teacher):
    expected = golden["intermediates_argmax_stable_x_20x27_b1"]
    seen = {}
    hooks = [teacher.get_submodule(name).register_forward_hook(
        lambda mod, args, out, name=name: seen.__setitem__(name, out)) for name in expected]
    try:
        with torch.inference_mode():
            teacher(golden["inputs"]["x_20x27_b1"])
    finally:
        for hook in hooks:
            hook.remove()
    for name, want in expected.items():
        err = (seen[name] - want).abs().max().item()
        assert err <= TOL, f"{name}: max |ours - official| = {err:.3g}"


@pytest.mark.parametrize("length, chunk, segment", [
    (1, None, 4096), (5, None, 4096), (17, 4, 4096), (300, None, 4096), (300, 64, 4096),
    (300, None, 50), (300, 16, 70)])  # the last two: several segments, the last one partial
def test_chunked_scan_matches_sequential_scan(length, chunk, segment):
    g = torch.Generator().manual_seed(length)
    d, n = 6, 4
    u, delta = torch.randn(2, length, d, generator=g), 3 * torch.randn(2, length, d, generator=g)
    delta[0, :2] = 25.0  # softplus threshold branch
    a = -torch.exp(torch.randn(d, n, generator=g))
    b, c = torch.randn(2, length, n, generator=g), torch.randn(2, length, n, generator=g)
    skip, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    want = selective_scan_reference(u, delta, a, b, c, skip, bias)
    got = selective_scan(u, delta, a, b, c, skip, bias, chunk=chunk, segment=segment)
    assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


def test_mirror_padding_is_numpy_symmetric():
    x = torch.rand(1, 2, 9, 13)
    want = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 7), (0, 3)), mode="symmetric")
    np.testing.assert_array_equal(mirror_pad(x, 16).numpy(), want)
    with pytest.raises(ValueError, match="at least 8"):
        mirror_pad(torch.rand(1, 3, 7, 20), 16)


def test_batch_items_are_independent(golden, set_mode):
    x = golden["inputs"]["x_32x32_b2"]
    with torch.inference_mode():
        model = set_mode("argmax")
        err = (model(x)[1:] - model(x[1:])).abs().max().item()
        assert err <= 1e-5
        model = set_mode("gumbel")
        pair = model(x, seeds=[7, 8])
        err = (pair[1:] - model(x[1:], seeds=[8])).abs().max().item()
        assert err <= 1e-5
        # A private generator draws the same noise as the global RNG seeded alike.
        torch.manual_seed(8)
        err = (pair[1:] - model(x[1:])).abs().max().item()
        assert err <= 1e-5
        # The noise matters: another seed changes the routing and thereby the output.
        assert (pair[1:] - model(x[1:], seeds=[9])).abs().max().item() > 1e-3


def test_smoke_config_roundtrip_and_loading_rules(tmp_path):
    torch.manual_seed(0)
    source = MambaIRv2Light("smoke", routing="argmax").eval()
    x = torch.rand(1, 3, 11, 9)
    with torch.inference_mode():
        want = source(x)
    state = source.state_dict()
    wrapped = {"module." + k: v for k, v in state.items()}
    decoy = {k: torch.zeros_like(v) for k, v in state.items()}
    files = {"params_first": {"params": state, "params_ema": decoy},
             "ema": {"params_ema": wrapped}, "bare": wrapped}
    for name, obj in files.items():
        torch.save(obj, tmp_path / f"{name}.pth")
        model = load_teacher(tmp_path / f"{name}.pth", routing="argmax", config="smoke")
        with torch.inference_mode():
            assert torch.equal(model(x), want), name
    assert model.checkpoint_source == "bare"


def test_mismatched_checkpoint_reports_everything(tmp_path):
    state = MambaIRv2Light("smoke").state_dict()
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["conv_first.bias"] = torch.zeros(5)
    path = tmp_path / "broken.pth"
    torch.save({"params": state}, path)
    headline = r"broken\.pth' does not match MambaIRv2Light\('smoke'\)"
    with pytest.raises(CheckpointError, match=headline) as info:
        load_teacher(path, config="smoke")
    message = str(info.value)
    for part in ("broken.pth", "missing keys (1): norm.weight", "unexpected keys (1): extra.weight",
                 "conv_first.bias: checkpoint [5] vs model [24]"):
        assert part in message


def test_wrong_scale_gets_a_hint(fixture_dir):
    with pytest.raises(CheckpointError, match="config='light_x3'"):
        load_teacher(fixture_dir / "weights.pth", config="light_x2")


class _Payload:
    """Unpickling this calls `pathlib.Path.touch` on a marker file: code a checkpoint could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_unsafe_or_missing_files_are_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "opt": nn.Identity()}, path)  # a module: not safe
    with pytest.raises(CheckpointError, match="pickled.pth' refused: it carries pickled Python"):
        load_teacher(path)
    # A file whose unpickling would run code is refused without running it.
    marker = tmp_path / "ran.txt"
    torch.save({"params": {"w": torch.zeros(1)}, "x": _Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="evil.pth' refused.*weights_only=True"):
        load_teacher(tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_teacher(tmp_path / "absent.pth")


def test_checkpoint_sha256_is_checked_and_recorded(fixture_dir, tmp_path):
    weights = fixture_dir / "weights.pth"
    # Upper case and surrounding space are accepted: hashes are pasted from release pages.
    model = load_teacher(weights, routing="argmax", expected_sha256=f" {FIXTURE_SHA256.upper()} ")
    assert model.checkpoint_sha256 == FIXTURE_SHA256
    with pytest.raises(CheckpointError, match=f"has sha256 {FIXTURE_SHA256}, not the expected "
                                              f"{'0' * 64}"):
        load_teacher(weights, expected_sha256="0" * 64)
    # One flipped byte: another hash, so the same flag catches a damaged download.
    damaged = tmp_path / "damaged.pth"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="damaged.pth' has sha256 .* another or a damaged"):
        load_teacher(damaged, expected_sha256=FIXTURE_SHA256)


def test_official_tile_grid_example():
    # 640x360 (W x H) LR frame: 4 tiles across, 2 down, cores 160 x 180, overlaps 16 and 18 px.
    (padded_h, padded_w), tiles = inference.tile_grid(360, 640)
    assert (padded_h, padded_w) == (360, 640) and len(tiles) == 8
    first, second, below = tiles[0], tiles[1], tiles[4]
    assert first.core_cols == (0, 160) and first.cols == (0, 176)
    assert second.cols == (160 - 16, 320 + 16)
    assert below.core_rows == (180, 360) and below.rows == (180 - 18, 360)
    assert inference.tile_grid(199, 150)[1][0].rows == (0, 199)  # under 200 px: one tile
    with pytest.raises(ValueError, match="at least 8"):
        inference.tile_grid(40, 40, tile=4)


class _LocalUpscaler(nn.Module):
    """3x3 conv and pixel shuffle: receptive radius 1, so overlapping tiles reproduce it exactly."""

    upscale, window_size, routing, seed = 3, 16, "argmax", 0

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 27, 3, padding=1), nn.PixelShuffle(3))

    def forward(self, x, seeds=None):
        return self.body(x)


def test_tiled_matches_untiled_for_local_model():
    torch.manual_seed(0)
    model = _LocalUpscaler()
    x = torch.rand(1, 3, 40, 50)  # 4 x 5 tiles of 10 px, overlap 1 px
    with torch.inference_mode():
        want = model(x)
    for batch_size in (1, 3):
        got = inference.upscale_tensor(model, x, tile=12, batch_size=batch_size)
        err = (got - want).abs().max().item()
        assert err <= 1e-6, f"batch_size={batch_size}: max |tiled - untiled| = {err:.3g}"


@pytest.mark.parametrize("routing", ["argmax", "gumbel"])
def test_teacher_tiles_are_independent_forward_passes(golden, set_mode, routing):
    model = set_mode(routing)
    x = golden["inputs"]["x_48x40_b1"]  # tile=30: 2 x 2 tiles with 2 px overlap
    tiled = inference.upscale_tensor(model, x, tile=30, batch_size=1, seed=5)
    batched = inference.upscale_tensor(model, x, tile=30, batch_size=4, seed=5)
    assert (tiled - batched).abs().max().item() <= 1e-5
    _, tiles = inference.tile_grid(48, 40, tile=30)
    with torch.inference_mode():
        for t in tiles:
            crop = x[..., t.rows[0]:t.rows[1], t.cols[0]:t.cols[1]]
            alone = model(crop, seeds=[5 + t.index])
            r0, r1 = (3 * (v - t.rows[0]) for v in t.core_rows)
            c0, c1 = (3 * (v - t.cols[0]) for v in t.core_cols)
            core = tiled[..., 3 * t.core_rows[0]:3 * t.core_rows[1],
                         3 * t.core_cols[0]:3 * t.core_cols[1]]
            assert (core - alone[..., r0:r1, c0:c1]).abs().max().item() <= 1e-5, t


def test_upscale_image_is_the_official_image_path(set_mode):
    model = set_mode("gumbel")
    lr = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    sr = inference.upscale_image(model, lr, seed=77)
    torch.manual_seed(77)  # one tile: the official forward after seeding, then tensor2img
    with torch.inference_mode():
        raw = model(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255)
    want = (raw[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert sr.shape == (39, 51, 3) and sr.dtype == np.uint8
    np.testing.assert_array_equal(sr, want)
    assert 0.05 < (raw < 0).float().mean() and 0.05 < (raw > 1).float().mean()  # clamping mattered
    with pytest.raises(ValueError, match="uint8"):
        inference.upscale_image(model, lr.astype(np.float32))


def test_benchmark_reports_consistent_rates(set_mode):
    model = set_mode("argmax")
    (result,) = inference.benchmark(model, sizes=[(8, 10)], repeats=2)
    best = min(result["seconds"])
    assert len(result["seconds"]) == 2
    assert result["images_per_s"] == pytest.approx(1 / best)
    assert result["s_per_megapixel"] == pytest.approx(best / 80e-6)
    assert result["s_per_output_megapixel"] == pytest.approx(best / 720e-6)


def test_package_entry_point_and_routing_validation(fixture_dir):
    model = teacher_bridge.load_teacher(fixture_dir / "weights.pth", routing="gumbel", seed=3)
    assert (model.routing, model.seed, model.upscale) == ("gumbel", 3, 3)
    with pytest.raises(ValueError, match="routing"):
        model.routing = "soft"
    with pytest.raises(ValueError, match="unknown teacher config"):
        MambaIRv2Light("light_x5")
    assert set(CONFIGS) >= {"light_x2", "light_x3", "light_x4", "smoke"}


# --- precompute ---------------------------------------------------------------------------------
def _write_sr_records(folder, sizes, scale=3, prefix="toy"):
    """SR records of smooth random images, LR = OpenCV area downscale (any LR works here)."""
    rng = np.random.default_rng(1)
    examples = []
    for i, (h, w) in enumerate(sizes):
        hr = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h),
                        interpolation=cv2.INTER_CUBIC)
        lr = cv2.resize(hr, (w // scale, h // scale), interpolation=cv2.INTER_AREA)
        examples.append(record_schema.encode_example(
            {"image_id": f"{prefix}/{i}", "hr_png": image_io.encode_png(hr),
             "lr_png": image_io.encode_png(lr), "scale": scale}, record_schema.SR_FEATURES))
    folder.mkdir(parents=True, exist_ok=True)
    record_schema.write_tfrecord(folder / "sr-00000-of-00002.tfrecord", examples[:2])
    record_schema.write_tfrecord(folder / "sr-00001-of-00002.tfrecord", examples[2:])


@pytest.fixture(scope="module")
def smoke_teacher(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("ckpt") / "smoke.pth"
    torch.save({"params": MambaIRv2Light("smoke").state_dict()}, path)
    return load_teacher(path, routing="gumbel", seed=11, config="smoke")


def _read_teacher_records(folder):
    out = {}
    for path in sorted(folder.glob("teacher-*.tfrecord")):
        for data in record_schema.read_tfrecord(path):
            rec = record_schema.decode_example(data, record_schema.TEACHER_FEATURES)
            out[rec.pop("image_id").decode()] = rec
    return out


def test_precompute_writes_resumable_sharded_teacher_records(tmp_path, smoke_teacher):
    sizes = [(48, 60), (30, 33), (36, 27), (60, 45), (27, 30)]
    _write_sr_records(tmp_path / "sr", sizes)
    out = tmp_path / "teacher"
    # Two runs splitting three shards, as two machines would; tiles of 10 px exercise the tiling.
    settings = {"records": str(tmp_path / "sr"), "num_shards": 3, "tile": 10, "overlap": 0.25}
    first = precompute.precompute(smoke_teacher, out, shard_indices=[2], check_images=2,
                                  **settings)
    assert first["finished_shards"] == [2] and first["missing_shards"] == [0, 1]
    second = precompute.precompute(smoke_teacher, out, check_images=2, **settings)
    assert second["written_now"] == [0, 1] and second["missing_shards"] == []
    check = second["check"]["images"]
    assert [r["image_id"] for r in check] == ["toy/0", "toy/1"]
    assert all(np.isfinite(r["teacher_psnr_y"]) and r["bicubic_psnr_y"] > 20 for r in check)
    records = _read_teacher_records(out)
    assert sorted(records) == [f"toy/{i}" for i in range(5)]
    for i, (h, w) in enumerate(sizes):
        rec = records[f"toy/{i}"]
        want = inference.upscale_image(smoke_teacher, _lr_of(tmp_path / "sr", f"toy/{i}"),
                                       tile=10, overlap=0.25)
        np.testing.assert_array_equal(image_io.decode_image(rec["teacher_png"], "out"), want)
        assert (rec["height"], rec["width"], rec["scale"]) == (3 * (h // 3), 3 * (w // 3), 3)
        assert (rec["routing"], rec["seed"]) == (b"gumbel", 11)
        assert rec["checkpoint_sha256"].decode() == smoke_teacher.checkpoint_sha256
        assert rec["tiling"].decode() == inference.tiling_rule(10, 0.25)
    # A rerun with the same settings writes nothing; other settings redo every shard.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("teacher-*")}
    again = precompute.precompute(smoke_teacher, out, **settings)
    assert again["written_now"] == [] and again["check"] == {}
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("teacher-*")}
    assert not list(out.glob(".tmp-*"))
    smoke_teacher.routing = "argmax"
    try:
        redo = precompute.precompute(smoke_teacher, out, check_images=0, **settings)
    finally:
        smoke_teacher.routing = "gumbel"
    assert redo["written_now"] == [0, 1, 2] and redo["seed"] == precompute.NO_SEED


class _Killed(BaseException):
    """Stands in for SIGKILL: no `except Exception` stops it."""


def test_precompute_killed_mid_shard_reruns_to_the_bytes_of_an_uninterrupted_run(
        tmp_path, smoke_teacher, monkeypatch):
    _write_sr_records(tmp_path / "sr", [(30, 33), (36, 27), (27, 30), (33, 30)])
    settings = {"records": str(tmp_path / "sr"), "num_shards": 2, "check_images": 1}
    precompute.precompute(smoke_teacher, tmp_path / "straight", **settings)
    upscale = inference.upscale_image
    calls = []

    def dying(*args, **kwargs):  # the 4th image is the second one of shard 1
        calls.append(1)
        if len(calls) == 4:
            raise _Killed("killed while writing shard 1")
        return upscale(*args, **kwargs)

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(inference, "upscale_image", dying)
        with pytest.raises(_Killed):
            precompute.precompute(smoke_teacher, out, **settings)
    # Shard 0 is finished; shard 1 never reached its name; no temporary or lock file is left.
    assert sorted(p.name for p in out.iterdir()) == ["teacher-00000-of-00002.json",
                                                    "teacher-00000-of-00002.tfrecord"]
    resumed = precompute.precompute(smoke_teacher, out, **settings)
    assert resumed["written_now"] == [1]
    names = sorted(p.name for p in (tmp_path / "straight").iterdir())
    assert names == sorted(p.name for p in out.iterdir()) and len(names) == 5
    # Shards and their JSON are the same bytes; summary.json differs only in what the latest
    # run did (documented in `teacher_bridge.precompute`).
    for name in names:
        a, b = ((folder / name).read_bytes() for folder in (tmp_path / "straight", out))
        if name == precompute.SUMMARY_FILE:
            a, b = ({k: v for k, v in json.loads(x).items()
                     if k not in ("written_now", "check", "seconds")} for x in (a, b))
        assert a == b, name


def _lr_of(folder, image_id):
    for path in sorted(folder.glob("*.tfrecord")):
        for data in record_schema.read_tfrecord(path):
            rec = record_schema.decode_example(data, record_schema.SR_FEATURES)
            if rec["image_id"].decode() == image_id:
                return image_io.decode_image(rec["lr_png"], image_id)
    raise KeyError(image_id)


def test_precompute_rejects_duplicate_ids_and_wrong_scale(tmp_path, smoke_teacher):
    _write_sr_records(tmp_path / "a", [(30, 30)] * 3)
    _write_sr_records(tmp_path / "b", [(30, 30)] * 3, scale=2)
    with pytest.raises(ValueError, match="duplicate image_id 'toy/0'"):
        precompute.list_inputs(records=str(tmp_path / "*" / "*.tfrecord"))
    with pytest.raises(ValueError, match="has scale 2, the teacher is x3"):
        precompute.precompute(smoke_teacher, tmp_path / "out", records=str(tmp_path / "b"),
                              check_images=0)


def test_precompute_tool_on_an_image_folder(tmp_path, smoke_teacher):
    folder = tmp_path / "lr_images"
    folder.mkdir()
    rng = np.random.default_rng(2)
    images = {"a": rng.integers(0, 256, (12, 10, 3), dtype=np.uint8),
              "b": rng.integers(0, 256, (9, 14), dtype=np.uint8)}  # grey -> RGB
    for name, image in images.items():
        cv2.imwrite(str(folder / f"{name}.png"), image[..., ::-1] if image.ndim == 3 else image)
    out = tmp_path / "out"
    run_tool("precompute_teacher", f"--checkpoint={smoke_teacher.checkpoint_path}", "--config=smoke",
             f"--images={folder}", f"--output={out}", "--routing=argmax", "--num_shards=2")
    flags_used = json.loads((out / "flags.json").read_text())
    assert flags_used["routing"] == "argmax" and flags_used["num_shards"] == 2
    records = _read_teacher_records(out)
    assert sorted(records) == ["lr_images/a", "lr_images/b"]
    model = load_teacher(smoke_teacher.checkpoint_path, routing="argmax", config="smoke")
    for name, image in images.items():
        rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
        got = image_io.decode_image(records[f"lr_images/{name}"]["teacher_png"], name)
        np.testing.assert_array_equal(got, inference.upscale_image(model, rgb))


def test_precompute_tool_refuses_another_checkpoint_in_one_line(fixture_dir, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "keras_sr_tools.precompute_teacher",
         f"--checkpoint={fixture_dir / 'weights.pth'}", f"--checkpoint_sha256={'ab' * 32}",
         f"--images={tmp_path}", f"--output={out}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "error: --checkpoint: teacher checkpoint" in last and f"not the expected {'ab' * 32}" \
        in last, last
    assert not out.exists()  # refused before anything was written
