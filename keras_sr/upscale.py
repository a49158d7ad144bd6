"""Upscaling image files with an exported .tflite model: what `keras-sr-upscale` runs.

    path, predictor = load_model("runs/demo", num_threads=2)   # a job work directory or a .tflite
    jobs = plan_jobs(list_inputs("photos/"), "photos_x3/", compare=True)
    summary = upscale_files(predictor, jobs, Progress(len(jobs), bar=False))

The model (INT8 or FP32, fixed or dynamic shape) runs through
`keras_sr.export.tflite_runner.TFLitePredictor`, which tiles a fixed-shape model over an image of
any size: a tiled run equals a whole-image run, and axes shorter than the tile are reflect-padded.
Each file is read with `keras_sr.common.image_io.read_rgb` (any bit depth, palette, CMYK, EXIF
orientation applied), and the output keeps the input's layout:

* RGB in, RGB out: the model's output.
* Grayscale in: the gray plane runs as three equal channels; the output is converted back to one
  plane with the BT.601 luma weights (0.299 R + 0.587 G + 0.114 B, OpenCV's COLOR_RGB2GRAY), which
  is the mean wherever the model keeps the channels equal.
* Alpha: the alpha plane is upscaled by OpenCV bicubic (INTER_CUBIC) and re-attached (a gray+alpha
  input comes back as RGBA with equal colour channels: OpenCV writes no gray+alpha files).

Outputs are written atomically, upright (no EXIF), in the format of the output's extension: in
folder mode the input's own if OpenCV writes it, else PNG. A format without alpha (JPEG, BMP)
drops the alpha plane, with a note. `--compare` adds NAME_compare.EXT beside each output: OpenCV
bicubic | model, side by side under a white band of LABEL_BAND rows that holds the labels.
"""
import glob
import os
import sys
import time
from typing import NamedTuple, Optional

import cv2
import numpy as np
from tqdm import tqdm

from keras_sr.common import bad_images, fileio, image_io
from keras_sr.configs import job as job_configs
from keras_sr.export.tflite_runner import TFLitePredictor

# Where `keras-sr-run` writes its INT8 model inside a job work directory (the configs layer
# imports nothing but the standard library, so this binary still starts without TensorFlow).
JOB_TFLITE = job_configs.INT8_MODEL
COMPARE_SUFFIX = "_compare"
LABEL_BAND = 20  # rows of the label band on top of a comparison image


class Job(NamedTuple):
    """One input file and the files written for it (compare None: no comparison image)."""
    input: str
    output: str
    compare: Optional[str] = None


def resolve_model(spec):
    """The .tflite file a model spec names.

    Args:
        spec: a .tflite file; or a folder holding export/student_int8.tflite (a `keras-sr-run` job
            work directory), or directly inside student_int8.tflite or else exactly one .tflite
            file (an export folder).

    Returns:
        The path of the .tflite file.

    Raises:
        FileNotFoundError: nothing usable at `spec` (the message names what was looked for).
        ValueError: a file that is not a .tflite, or a folder with several candidates.
    """
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        if not spec.endswith(".tflite"):
            raise ValueError(f"{spec} is not a .tflite file")
        return spec
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"{spec} does not exist (expected a .tflite file or a folder with one)")
    job = os.path.join(spec, JOB_TFLITE)
    for candidate in (job, os.path.join(spec, os.path.basename(JOB_TFLITE))):
        if os.path.isfile(candidate):
            return candidate
    found = sorted(glob.glob(os.path.join(glob.escape(spec), "*.tflite")))
    if len(found) > 1:
        raise ValueError(f"{spec} holds several .tflite files "
                         f"({', '.join(os.path.basename(f) for f in found)}): name one of them")
    if not found:
        raise FileNotFoundError(f"{spec} holds no model: neither {job} (a keras-sr-run job) nor a "
                                ".tflite file directly inside (keras-sr-export-tflite writes one)")
    return found[0]


def load_model(spec, num_threads=2):
    """(path, TFLitePredictor) for a model spec (see `resolve_model`).

    Raises:
        FileNotFoundError, ValueError: as `resolve_model`; ValueError also for a file LiteRT
            cannot load (the message names it).
    """
    path = resolve_model(spec)
    try:
        return path, TFLitePredictor(path, num_threads=num_threads)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a usable TFLite model: {e}") from None


def list_inputs(spec):
    """The image files an --input value names, sorted.

    Args:
        spec: a file (taken whatever its name; the content decides the format), a folder (its
            entries with an image extension, `image_io.ANY_IMAGE_EXTENSIONS`, not recursive,
            hidden files and folders left out; broken links and symlink loops are listed, and
            reading them gives the reason) or a glob pattern (the files it matches).

    Raises:
        FileNotFoundError: `spec` is none of these, or names no file.
    """
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        files = sorted(os.path.join(spec, f) for f in os.listdir(spec)
                       if not f.startswith(".") and f.lower().endswith(image_io.ANY_IMAGE_EXTENSIONS)
                       and not os.path.isdir(os.path.join(spec, f)))
        if not files:
            raise FileNotFoundError(f"{spec} holds no image files "
                                    f"({'/'.join(image_io.ANY_IMAGE_EXTENSIONS)})")
        return files
    if glob.has_magic(spec):
        files = sorted(f for f in glob.glob(spec) if os.path.isfile(f))
        if not files:
            raise FileNotFoundError(f"{spec} matches no files")
        return files
    raise FileNotFoundError(f"{spec} does not exist (expected a file, a folder or a glob pattern)")


def plan_jobs(inputs, output, compare=False):
    """Where each input's output (and comparison image) goes.

    `output` is a file when there is one input, `output` is not an existing folder and it ends in
    an image extension; the file's extension then sets the format. Otherwise it is a folder
    (created when written) that receives NAME.EXT for every input NAME.IEXT, where EXT is IEXT if
    OpenCV writes that format, else .png.

    Args:
        inputs: input file paths (`list_inputs`).
        output: the --output value.
        compare: also plan NAME_compare.EXT beside each output.

    Returns:
        A list of `Job`, in the order of `inputs`.

    Raises:
        ValueError: an output file name with several inputs, a format OpenCV cannot write, two
            inputs with the same output, or an output that is one of the inputs.
    """
    output = os.fspath(output)
    ext = os.path.splitext(output)[1].lower()
    as_file = not os.path.isdir(output) and ext in image_io.ANY_IMAGE_EXTENSIONS
    if as_file and len(inputs) > 1:
        raise ValueError(f"--output={output} names a file, but there are {len(inputs)} inputs: "
                         "give a folder")
    if as_file and not image_io.can_write(ext):
        raise ValueError(f"--output={output}: this OpenCV cannot write {ext} files")
    jobs = []
    for path in inputs:
        if as_file:
            target = output
        else:
            stem, in_ext = os.path.splitext(os.path.basename(path))
            target = os.path.join(output, stem + (in_ext if image_io.can_write(in_ext) else ".png"))
        stem, out_ext = os.path.splitext(target)
        jobs.append(Job(path, target, stem + COMPARE_SUFFIX + out_ext if compare else None))
    sources = {_identity(p): p for p in inputs}
    written = {}
    for job in jobs:
        for target in filter(None, job[1:]):
            key = _identity(target)
            if key in sources:
                raise ValueError(f"{target} would overwrite the input {sources[key]}")
            if key in written:
                raise ValueError(f"{written[key]} and {job.input} would both be written to {target}")
            written[key] = job.input
    return jobs


def _identity(path):
    """What makes two paths the same file: (device, inode) if it exists, else the real path."""
    try:
        stat = os.stat(path)
        return stat.st_dev, stat.st_ino
    except OSError:
        return os.path.realpath(path)


def _layout(rgb, alpha, gray):
    """gray HxW, RGB HxWx3 or RGBA HxWx4 (a gray plane with alpha as RGBA)."""
    if alpha is None:
        return rgb[..., 0] if gray else rgb
    return np.dstack([rgb, alpha])


def upscale_image(predictor, image):
    """Runs the model on a decoded image and returns the output in the input's layout.

    Args:
        predictor: callable uint8 (h, w, 3) RGB -> uint8 (s*h, s*w, 3) RGB (a TFLitePredictor).
        image: an `image_io.DecodedImage`.

    Returns:
        uint8 (s*h, s*w) for a gray image without alpha, (s*h, s*w, 4) RGBA with alpha (upscaled
        by OpenCV bicubic), else (s*h, s*w, 3) RGB.
    """
    h, w = image.rgb.shape[:2]
    sr = np.asarray(predictor(image.rgb))
    scale = sr.shape[0] // h
    if sr.dtype != np.uint8 or scale < 1 or sr.shape != (scale * h, scale * w, 3):
        raise ValueError(f"the model returned {sr.dtype} {sr.shape} for a {h}x{w} image")
    if image.gray:
        sr = np.repeat(cv2.cvtColor(sr, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)
    alpha = None
    if image.alpha is not None:
        alpha = cv2.resize(image.alpha, (scale * w, scale * h), interpolation=cv2.INTER_CUBIC)
    return _layout(sr, alpha, image.gray)


def side_by_side(image, upscaled):
    """OpenCV bicubic of the input | `upscaled`, under a white band of LABEL_BAND rows with labels.

    Args:
        image: the `image_io.DecodedImage` that was upscaled.
        upscaled: its output, uint8 (H, W[, C]) as `upscale_image` returns it.

    Returns:
        uint8 (LABEL_BAND + H, 2 * W[, C]); rows LABEL_BAND: and columns W: equal `upscaled`.
    """
    height, width = upscaled.shape[:2]
    scale = height // image.rgb.shape[0]
    source = _layout(image.rgb, image.alpha, image.gray)
    bicubic = cv2.resize(source, (width, height), interpolation=cv2.INTER_CUBIC)
    band = np.full((LABEL_BAND, 2 * width) + upscaled.shape[2:], 255, np.uint8)
    black = (0, 0, 0, 255)[:1 if upscaled.ndim == 2 else upscaled.shape[2]]
    for x, label in ((0, f"OpenCV bicubic x{scale}"), (width, f"model x{scale}")):
        cv2.putText(band, label, (x + 4, LABEL_BAND - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1,
                    cv2.LINE_AA)
    return np.concatenate([band, np.concatenate([bicubic, upscaled], axis=1)], axis=0)


def _write(path, pixels, notes):
    ext = os.path.splitext(path)[1]
    if pixels.ndim == 3 and pixels.shape[2] == 4 and not image_io.can_write(ext, alpha=True):
        pixels = pixels[..., :3]
        notes.append(f"alpha dropped: {ext} files hold none")
    fileio.write_bytes_atomic(path, image_io.encode_image(pixels, ext))


def upscale_file(predictor, job):
    """Reads, upscales and writes one `Job`; returns its result entry (see `upscale_files`).

    Raises:
        image_io.ImageError: the input cannot be read (the message names it and the reason).
        OSError: an output cannot be written.
    """
    start = time.perf_counter()
    image = image_io.read_rgb(job.input)
    upscaled = upscale_image(predictor, image)
    notes = list(image.notes)
    _write(job.output, upscaled, notes)
    if job.compare:
        _write(job.compare, side_by_side(image, upscaled), [])
    result = {"input": job.input, "output": job.output, "input_size": list(image.rgb.shape[:2]),
              "output_size": list(upscaled.shape[:2]), "notes": notes,
              "seconds": round(time.perf_counter() - start, 4)}
    if job.compare:
        result["compare"] = job.compare
    return result


def upscale_files(predictor, jobs, progress=None, on_bad_image=bad_images.DEFAULT_POLICY):
    """Upscales every job; a file that cannot be read or written is recorded and skipped.

    Args:
        predictor: a TFLitePredictor (or any callable of that contract, see `upscale_image`).
        jobs: `Job`s from `plan_jobs`.
        progress: optional callable(result or failure dict, throughput dict), called per file.
        on_bad_image: "skip" or "fail" (`keras_sr.common.bad_images`): an input that cannot be
            read is recorded and skipped, or raises `bad_images.BadImageError` (outputs written
            before it stay).

    Returns:
        dict: "files" (per written input: input, output, [compare], input_size and output_size
        [h, w], notes, seconds), "failures" (input, reason: unreadable inputs and outputs that
        could not be written), "num_inputs", "num_written", "num_failed", "num_skipped" and
        "skipped" (the unreadable inputs as item, reason, as in every job's summary), "seconds",
        and the throughput: "images_per_s" (files written per second) and "megapixels_per_s"
        (input megapixels per second).
    """
    start = time.perf_counter()
    files, failures, pixels = [], [], 0
    bad = bad_images.BadImages(on_bad_image)
    throughput = {}
    for job in jobs:
        try:
            entry = upscale_file(predictor, job)
            files.append(entry)
            pixels += entry["input_size"][0] * entry["input_size"][1]
        except image_io.ImageError as e:
            bad.add(job.input, str(e), log=False)  # the progress line reports it
            entry = {"input": job.input, "reason": str(e)}
            failures.append(entry)
        except OSError as e:
            entry = {"input": job.input, "reason": f"{job.input}: cannot write "
                                                  f"{e.filename or job.output} ({e.strerror or e})"}
            failures.append(entry)
        seconds = max(time.perf_counter() - start, 1e-9)
        throughput = {"seconds": round(seconds, 3), "images_per_s": round(len(files) / seconds, 3),
                      "megapixels_per_s": round(pixels / seconds / 1e6, 4)}
        if progress is not None:
            progress(entry, throughput)
    return {"files": files, "failures": failures, "num_inputs": len(jobs), "num_written": len(files),
            "num_failed": len(failures), **bad.to_json(), **throughput}


class Progress:
    """Reports each finished file: a tqdm bar on a terminal, else one plain line per file.

    Args:
        total: number of files.
        bar: show a tqdm bar (None: when `stream` is a terminal and there are several files).
        stream: where the bar and the lines go (default stderr); failures always get a line.
    """

    def __init__(self, total, bar=None, stream=None):
        self._stream = stream or sys.stderr
        if bar is None:
            bar = total > 1 and self._stream.isatty()
        # tqdm's own rate would count failed files too: the postfix carries the rates instead.
        self._bar = tqdm(total=total, file=self._stream, dynamic_ncols=True,
                         bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
                         ) if bar else None
        self._total, self._done = total, 0

    def __call__(self, entry, throughput):
        self._done += 1
        where = f"[{self._done}/{self._total}]"
        if "reason" in entry:
            line = f"{where} FAILED {entry['reason']}"
        else:
            (h, w), (oh, ow) = entry["input_size"], entry["output_size"]
            notes = f" ({'; '.join(entry['notes'])})" if entry["notes"] else ""
            line = (f"{where} {entry['input']} -> {entry['output']}: {w}x{h} -> {ow}x{oh} in "
                    f"{entry['seconds']:.2f} s{notes}")
        if self._bar is None:
            print(line, file=self._stream, flush=True)
            return
        if "reason" in entry:
            self._bar.write(line, file=self._stream)
        self._bar.set_postfix({"img/s": f"{throughput['images_per_s']:.2f}",
                               "MP/s": f"{throughput['megapixels_per_s']:.3f}"}, refresh=False)
        self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._bar.close()
