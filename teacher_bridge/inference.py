"""Whole-image teacher inference: the official tiling rule, batched tiles, uint8 output, benchmark.

The official test wrapper (`MambaIRv2LightModel.test` in csguoh/MambaIR) cuts every LR image into
floor(side / 200) + 1 tiles per side, after reflect-padding the bottom/right edge to a multiple of
the tile count. Tiles overlap by floor(split / 10) pixels on their inner edges and each output keeps
only its tile's core (no blending). Every tile is a separate forward pass, so it gets its own x16
mirror padding and, with Gumbel routing, its own noise. `tile` and `overlap` generalise the 200 and
1/10; `tile=None` runs the whole image at once.

Gumbel routing is seeded per image: tile t (row-major) draws from a generator seeded with seed + t,
so the result depends neither on the batch size nor on other images, and a one-tile image on the CPU
equals the official model run right after `torch.manual_seed(seed)`.
"""
import contextlib
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

OFFICIAL_TILE = 200
OFFICIAL_OVERLAP = 0.1


@dataclasses.dataclass(frozen=True)
class Tile:
    """One tile in LR pixels of the reflect-padded image.

    Attributes:
        index: row-major tile number (also its Gumbel seed offset).
        rows, cols: (start, stop) of the tile input, overlap included.
        core_rows, core_cols: (start, stop) of the part this tile contributes to the output.
    """
    index: int
    rows: tuple
    cols: tuple
    core_rows: tuple
    core_cols: tuple


def _splits(size, tile, overlap):
    """Returns (padded size, [(input span, core span)]) along one side."""
    count = 1 if tile is None else size // tile + 1
    padded = size + (-size % count)
    split = padded // count
    # The epsilon keeps exact products like 30 * 0.1 from rounding below the integer.
    shave = int(split * overlap + 1e-9)
    spans = []
    for i in range(count):
        start = i * split - (shave if i > 0 else 0)
        stop = (i + 1) * split + (shave if i < count - 1 else 0)
        spans.append(((start, stop), (i * split, (i + 1) * split)))
    return padded, spans


def tile_grid(height, width, tile=OFFICIAL_TILE, overlap=OFFICIAL_OVERLAP, min_side=8):
    """Lays out the tiles for an LR image of height x width.

    Args:
        height, width: LR image size in pixels.
        tile: tiles per side = side // tile + 1 (official 200); None for a single tile.
        overlap: overlap as a fraction of the tile's core size (official 0.1).
        min_side: smallest tile side the model accepts.

    Returns:
        ((padded_height, padded_width), [Tile, ...]) in row-major order.

    Raises:
        ValueError: a tile would be smaller than min_side, or overlap is outside [0, 1).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be a positive number of pixels or None, got {tile}")
    padded_h, rows = _splits(height, tile, overlap)
    padded_w, cols = _splits(width, tile, overlap)
    smallest = min(min(r[1] - r[0] for r, _ in rows), min(c[1] - c[0] for c, _ in cols))
    if smallest < min_side:
        raise ValueError(f"tiling {height}x{width} with tile={tile} gives tiles of {smallest} px; "
                         f"the teacher needs at least {min_side} px per side")
    tiles = [Tile(i * len(cols) + j, r, c, rc, cc)
             for i, (r, rc) in enumerate(rows) for j, (c, cc) in enumerate(cols)]
    return (padded_h, padded_w), tiles


def tiling_rule(tile=OFFICIAL_TILE, overlap=OFFICIAL_OVERLAP):
    """Describes the tiling in words, for the metadata stored with teacher outputs."""
    per_tile = "x16 symmetric padding per forward; Gumbel generator seeded with seed + tile index"
    if tile is None:
        return f"untiled: the whole LR image in one forward; {per_tile}"
    name = "official" if (tile, overlap) == (OFFICIAL_TILE, OFFICIAL_OVERLAP) else "custom"
    return (f"{name}: tiles per side = floor(LR side / {tile}) + 1; reflect-pad bottom/right to a "
            f"multiple of the tile count; split = padded side / tiles; overlap "
            f"floor(split * {overlap}) px on inner edges; each tile's core copied (no blending), "
            f"tiles row-major; {per_tile}")


@contextlib.contextmanager
def _ieee_float32(device):
    """Turns off TF32 on CUDA (cuDNN convolutions use it by default on Ampere and newer)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def upscale_tensor(model, x, tile=OFFICIAL_TILE, overlap=OFFICIAL_OVERLAP, batch_size=4, seed=None):
    """Super-resolves one image tile by tile with `model` (a `MambaIRv2Light` or compatible module).

    Args:
        model: module with `upscale`, `window_size`, `routing` and `seed` attributes whose
            forward takes (B, 3, h, w) and `seeds=` (one int per batch item, for Gumbel routing).
        x: (1, 3, H, W) float RGB in [0, 1], on any device.
        tile, overlap: the tiling rule (see `tile_grid`); defaults are the official ones.
        batch_size: tiles of equal size per forward pass.
        seed: Gumbel seed of this image; defaults to `model.seed`.

    Returns:
        (1, 3, sH, sW) float32 raw output (not clamped) on the model's device.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1, C, H, W), got {tuple(x.shape)}")
    device = next(model.parameters()).device
    s = model.upscale
    height, width = x.shape[-2:]
    # The mirror padding to the window multiple can at most repeat the whole tile once.
    min_side = model.window_size - model.window_size // 2
    (padded_h, padded_w), tiles = tile_grid(height, width, tile, overlap, min_side)
    x = x.to(device=device, dtype=torch.float32)
    if (padded_h, padded_w) != (height, width):
        x = F.pad(x, (0, padded_w - width, 0, padded_h - height), mode="reflect")
    seed = model.seed if seed is None else seed
    out = torch.empty(1, x.shape[1], s * padded_h, s * padded_w, device=device)
    by_shape = {}
    for t in tiles:  # equal-size tiles can share a forward pass
        by_shape.setdefault((t.rows[1] - t.rows[0], t.cols[1] - t.cols[0]), []).append(t)
    with torch.inference_mode(), _ieee_float32(device):
        for group in by_shape.values():
            for first in range(0, len(group), batch_size):
                batch = group[first:first + batch_size]
                inputs = torch.cat([x[..., t.rows[0]:t.rows[1], t.cols[0]:t.cols[1]]
                                    for t in batch])
                seeds = [seed + t.index for t in batch] if model.routing == "gumbel" else None
                outputs = model(inputs, seeds=seeds)
                for t, y in zip(batch, outputs):
                    r0, r1 = (s * (v - t.rows[0]) for v in t.core_rows)
                    c0, c1 = (s * (v - t.cols[0]) for v in t.core_cols)
                    out[0, :, s * t.core_rows[0]:s * t.core_rows[1],
                        s * t.core_cols[0]:s * t.core_cols[1]] = y[:, r0:r1, c0:c1]
    return out[..., :s * height, :s * width]


def to_uint8(y):
    """(1, 3, H, W) float -> (H, W, 3) uint8 numpy: clamp to [0, 1], x255, round (as BasicSR)."""
    return (y[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def upscale_image(model, lr_uint8_hwc, tile=OFFICIAL_TILE, overlap=OFFICIAL_OVERLAP, batch_size=4,
                  seed=None):
    """Super-resolves an RGB uint8 image as the official test pipeline does.

    Args:
        model: see `upscale_tensor` (the upscale factor s is `model.upscale`).
        lr_uint8_hwc: (H, W, 3) uint8 RGB numpy array, H and W >= 8.
        tile, overlap, batch_size, seed: see `upscale_tensor`.

    Returns:
        (sH, sW, 3) uint8 RGB numpy array.
    """
    lr = np.asarray(lr_uint8_hwc)
    if lr.dtype != np.uint8 or lr.ndim != 3 or lr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {lr.dtype} {lr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)[None].float() / 255.0
    return to_uint8(upscale_tensor(model, x, tile, overlap, batch_size, seed))


def benchmark(model, sizes=((64, 64),), repeats=3, tile=OFFICIAL_TILE, overlap=OFFICIAL_OVERLAP,
              batch_size=4):
    """Times `upscale_image` on random images (one warm-up run per size, then `repeats` runs).

    Rates use the fastest run, since on a shared machine other load only ever adds time.

    Args:
        model: see `upscale_tensor`.
        sizes: (height, width) LR sizes.
        repeats: timed runs per size.
        tile, overlap, batch_size: see `upscale_tensor`.

    Returns:
        One dict per size: height, width, seconds (every timed run), images_per_s,
        s_per_megapixel (per LR megapixel), s_per_output_megapixel, device, threads.
    """
    rng = np.random.default_rng(0)
    device = next(model.parameters()).device
    results = []
    for height, width in sizes:
        lr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        upscale_image(model, lr, tile, overlap, batch_size)
        seconds = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            upscale_image(model, lr, tile, overlap, batch_size)  # ends with a copy to the host
            seconds.append(time.perf_counter() - start)
        best = min(seconds)
        megapixels = height * width / 1e6
        results.append({
            "height": height, "width": width, "seconds": seconds,
            "images_per_s": 1.0 / best,
            "s_per_megapixel": best / megapixels,
            "s_per_output_megapixel": best / (megapixels * model.upscale ** 2),
            "device": str(device), "threads": torch.get_num_threads(),
        })
    return results
