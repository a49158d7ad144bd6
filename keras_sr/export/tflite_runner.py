"""Running and timing .tflite SR models with the LiteRT interpreter (XNNPACK kernels by default).

Kernel sets (`KERNELS`): "xnnpack" is LiteRT's default (the XNNPACK delegate takes every op it
supports), the one the QAT model rounds like; "builtin" is LiteRT's own CPU kernels without
any delegate (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`), which requantize differently.
"""
import os
import time

import numpy as np
from ai_edge_litert import interpreter as litert

KERNELS = ("xnnpack", "builtin")


def _read_model(model):
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TFLite model {path} does not exist")
    with open(path, "rb") as f:
        return f.read()


def make_interpreter(model, num_threads=None, kernels="xnnpack"):
    """A LiteRT interpreter of a .tflite path or bytes with the kernel set `kernels` (`KERNELS`).

    Args:
        model: path of a .tflite file, or its bytes.
        num_threads: CPU threads (None: LiteRT's default).
        kernels: "xnnpack" (the default delegate) or "builtin" (no delegate).
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    resolver = (litert.OpResolverType.AUTO if kernels == "xnnpack"
                else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return litert.Interpreter(model_content=_read_model(model), num_threads=num_threads,
                              experimental_op_resolver_type=resolver)


def builtin_interpreter(blob):
    """An interpreter with LiteRT's builtin kernels and no XNNPACK delegate.

    Its op list is then the model's own, not the delegate's (for inspecting a model).
    """
    return make_interpreter(blob, kernels="builtin")


def receptive_radius(blob):
    """LR-pixel radius of the model's receptive field: the sum of (k - 1) / 2 over its convs."""
    interpreter = builtin_interpreter(blob)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    radius = 0
    for op in interpreter._get_ops_details():  # pylint: disable=protected-access
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            _, kh, kw, _ = tensors[op["inputs"][1]]["shape"]
            radius += (max(kh, kw) - 1) // 2
    return radius


def _spans(size, tile, margin):
    """Tiles along one axis: (start, core_begin, core_end), cores partitioning [0, size).

    Tiles lie inside the image (no padding) when size >= tile; a core keeps `margin` pixels away
    from every tile edge that is not an image edge.
    """
    if size <= tile:
        return [(0, 0, size)]
    if tile <= 2 * margin:
        raise ValueError(f"tile {tile} is too small for an overlap margin of {margin} on each side")
    spans, begin = [], 0
    start = 0
    while True:
        if start + tile >= size:
            spans.append((size - tile, begin, size))
            return spans
        end = start + tile - margin
        spans.append((start, begin, end))
        begin = end
        start = min(end - margin, size - tile)


class TFLitePredictor:
    """Callable uint8 (H, W, 3) RGB LR image -> uint8 (sH, sW, 3) RGB SR image, through LiteRT.

    Inputs are mapped to the model's input tensor with its quantization parameters (for the
    project's uint8 models, scale 1/255 and zero point 0: the bytes go in unchanged; float models
    get x / 255), and outputs are de-quantized, scaled by 255, rounded and clipped.

    Dynamic-shape models run each image whole. A fixed-shape model (1, th, tw, 3) is run over an
    image of any size by tiling. Tiling rule: along each axis, tiles of the model's size are placed
    inside the image (the first at 0, the last ending at the image edge); each output pixel is taken
    from the core of one tile, where the core stops `margin` LR pixels short of every tile edge that
    is not an image edge. `margin` defaults to the receptive radius of the network (sum of (k - 1) /
    2 over its convs: 10 LR px for the student's ten 3x3 convs) plus 2. Every kept pixel then sees
    exactly the inputs it would see in a whole-image run, so a tiled result equals a dynamic-shape
    whole-image run exactly (no seams). Along an axis shorter than the tile the image is padded at
    the far end by reflection (`padded_input`); pixels within the receptive radius of that edge then
    differ from a whole-image run of the unpadded image (which zero-pads every layer there), the
    rest is exact.

    Args:
        model: path of a .tflite file, or its bytes.
        num_threads: CPU threads for the interpreter (and XNNPACK).
        margin: overlap margin in LR pixels (None: receptive radius + 2).
        kernels: the kernel set, "xnnpack" or "builtin" (`KERNELS`).
    """

    def __init__(self, model, num_threads=2, margin=None, kernels="xnnpack"):
        blob = _read_model(model)
        self._interpreter = make_interpreter(blob, num_threads, kernels)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.dynamic = any(int(d) < 0 for d in self._input["shape_signature"][1:3])
        self.margin = receptive_radius(blob) + 2 if margin is None else int(margin)
        if not self.dynamic:
            self._interpreter.allocate_tensors()
        self._shape = None

    @property
    def tile_shape(self):
        """(height, width) of the fixed input, or None for a dynamic-shape model."""
        return None if self.dynamic else tuple(int(v) for v in self._input["shape"][1:3])

    def _quantize(self, lr_uint8):
        dtype = self._input["dtype"]
        x = lr_uint8.astype(np.float32) / 255.0
        if np.issubdtype(dtype, np.floating):
            return x.astype(dtype)
        scale, zero_point = self._input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)

    def _dequantize(self, y):
        if not np.issubdtype(y.dtype, np.floating):
            scale, zero_point = self._output["quantization"]
            y = (y.astype(np.float32) - zero_point) * scale
        return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)

    def _run(self, batch_uint8):
        """Runs the model on a (B, h, w, 3) uint8 batch of the input size."""
        if self.dynamic and batch_uint8.shape != self._shape:
            self._interpreter.resize_tensor_input(self._input["index"], batch_uint8.shape)
            self._interpreter.allocate_tensors()
            self._shape = batch_uint8.shape
        self._interpreter.set_tensor(self._input["index"], self._quantize(batch_uint8))
        self._interpreter.invoke()
        return self._dequantize(self._interpreter.get_tensor(self._output["index"]))

    def padded_input(self, lr_uint8_hwc):
        """The image the model effectively runs on: reflect-padded at bottom/right to the tile size.

        `self(lr)` equals a whole-image run on this image cropped to the top-left (s*h, s*w); it is
        `lr` itself for dynamic models and for images at least as large as the tile.
        """
        if self.dynamic:
            return lr_uint8_hwc
        (tile_h, tile_w), (h, w) = self.tile_shape, lr_uint8_hwc.shape[:2]
        return np.pad(lr_uint8_hwc, ((0, max(0, tile_h - h)), (0, max(0, tile_w - w)), (0, 0)),
                      mode="reflect")

    def __call__(self, lr_uint8_hwc):
        lr = np.asarray(lr_uint8_hwc)
        if lr.ndim != 3 or lr.shape[-1] != 3 or lr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {lr.dtype} {lr.shape}")
        if self.dynamic:
            return self._run(lr[None])[0]
        tile_h, tile_w = self.tile_shape
        batch = int(self._input["shape"][0])
        rows = _spans(lr.shape[0], tile_h, self.margin)
        cols = _spans(lr.shape[1], tile_w, self.margin)
        padded = self.padded_input(lr)
        tiles = [(r, c) for r in rows for c in cols]
        sr = None
        for i in range(0, len(tiles), batch):
            group = tiles[i:i + batch]
            inputs = [padded[r[0]:r[0] + tile_h, c[0]:c[0] + tile_w] for r, c in group]
            inputs += inputs[-1:] * (batch - len(inputs))
            outputs = self._run(np.stack(inputs))
            if sr is None:
                scale = outputs.shape[1] // tile_h
                sr = np.empty((lr.shape[0] * scale, lr.shape[1] * scale, 3), np.uint8)
            for ((r0, rb, re), (c0, cb, ce)), out in zip(group, outputs):
                sr[rb * scale:re * scale, cb * scale:ce * scale] = out[
                    (rb - r0) * scale:(re - r0) * scale, (cb - c0) * scale:(ce - c0) * scale]
        return sr


def timed_calls(run_once, runs=10, warmup=2, timer=time.perf_counter):
    """Milliseconds of each of `runs` calls of `run_once()`, after `warmup` untimed ones.

    Args:
        run_once: the callable to time (no arguments).
        runs: timed calls (at least 1).
        warmup: untimed calls first (first-call allocation, XNNPACK packing its weights, caches).
        timer: seconds as a float (tests pass a fake one).
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        run_once()
    times = []
    for _ in range(runs):
        start = timer()
        run_once()
        times.append(1000.0 * (timer() - start))
    return times


def summarize_times(times, warmup):
    """{"median_ms", "min_ms", "max_ms", "runs", "warmup"} of call times in milliseconds."""
    return {"median_ms": float(np.median(times)), "min_ms": float(min(times)),
            "max_ms": float(max(times)), "runs": len(times), "warmup": warmup}


def latency_stats(run_once, runs=10, warmup=2, timer=time.perf_counter):
    """Times `run_once()` (`timed_calls`) and summarizes the calls (`summarize_times`).

    Returns:
        dict: "median_ms", "min_ms", "max_ms" over the timed calls, "runs", "warmup".
    """
    return summarize_times(timed_calls(run_once, runs, warmup, timer), warmup)


def invoker(model, num_threads=2, input_shape=None, kernels="xnnpack"):
    """An interpreter of a .tflite model set up on random input: its `invoke` (to time it).

    Args:
        model: path of a .tflite file, or its bytes.
        num_threads: interpreter threads.
        input_shape: NHWC shape for a dynamic-shape model (ignored for fixed shapes).
        kernels: "xnnpack" or "builtin" (`KERNELS`).
    """
    interpreter = make_interpreter(model, num_threads, kernels)
    detail = interpreter.get_input_details()[0]
    if any(int(d) < 0 for d in detail["shape_signature"]):
        if input_shape is None:
            raise ValueError("the model has a dynamic input shape: pass input_shape")
        interpreter.resize_tensor_input(detail["index"], list(input_shape))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    if np.issubdtype(detail["dtype"], np.floating):
        x = rng.uniform(0, 1, detail["shape"]).astype(detail["dtype"])
    else:
        info = np.iinfo(detail["dtype"])
        x = rng.integers(info.min, info.max + 1, detail["shape"]).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], x)
    return interpreter.invoke


def time_tflite(model, num_threads=2, runs=10, warmup=2, input_shape=None, kernels="xnnpack"):
    """`latency_stats` of one `invoke()` of a .tflite model on random input (see `invoker`)."""
    return latency_stats(invoker(model, num_threads, input_shape, kernels), runs, warmup)


def benchmark_tflite(path_or_bytes, num_threads=2, runs=10, warmup=2, input_shape=None):
    """Median latency in ms of one `invoke()` on random input (XNNPACK, `num_threads` threads).

    Args:
        path_or_bytes: the .tflite model.
        num_threads: interpreter threads.
        runs: timed runs (the median is returned).
        warmup: untimed runs first.
        input_shape: NHWC shape for a dynamic-shape model (ignored for fixed shapes).
    """
    return time_tflite(path_or_bytes, num_threads, runs, warmup, input_shape)["median_ms"]
