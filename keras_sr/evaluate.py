"""Benchmark evaluation: run a predictor over an EDSR-layout set and score it like SR papers do.

A predictor maps an LR image, uint8 [h, w, 3] RGB, to its SR image, uint8 [scale*h, scale*w, 3].
Grayscale images (Set14 `bridge`) are given to it as three equal channels and scored on one plane
(`keras_sr.common.metrics`). `make_predictor` builds one from a spec:

* "bicubic": MATLAB-compatible bicubic upscaling of the LR (the usual baseline row);
* a training work directory or checkpoint prefix: the model the run trains
  (`keras_sr.workdir.WorkDir.trained_form`) runs on the whole LR image as float [0, 1], its output
  is clamped, x255 and rounded;
* a ".tflite" file (`keras_sr.export.tflite_runner.TFLitePredictor`).
"""
import os
import time

import numpy as np
import tensorflow as tf

from keras_sr.common import bad_images, image_io, metrics
from keras_sr.data.benchmark import load_benchmark
from keras_sr.data.matlab_resize import matlab_upscale
from keras_sr.export.tflite_runner import TFLitePredictor
from keras_sr.workdir import WorkDir

METRIC_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")


def bicubic_predictor(scale=3):
    """The MATLAB bicubic x`scale` upscaler as a predictor."""
    return lambda lr: matlab_upscale(lr, scale)


def keras_model_predictor(model):
    """Wraps a Keras model (float [1, h, w, 3] in [0, 1] -> [1, s*h, s*w, 3]) as a predictor."""
    predict = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)],
                          reduce_retracing=True)

    def predictor(lr):
        sr = predict(tf.convert_to_tensor(lr[None], tf.float32) / 255.0)[0]
        return metrics.to_uint8(sr.numpy())

    return predictor


def make_predictor(spec, scale=3):
    """Builds a predictor from "bicubic", a .tflite file, or a training work directory/checkpoint.

    Raises:
        FileNotFoundError: a .tflite path that does not exist.
    """
    if spec == "bicubic":
        return bicubic_predictor(scale)
    if spec.endswith(".tflite"):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"TFLite model {spec} does not exist")
        return TFLitePredictor(spec)
    run = WorkDir.open(spec)
    return keras_model_predictor(run.load(run.trained_form))


def evaluate_benchmark(predict_fn, data_dir, scale=3, crop_border=None,
                       on_bad_image=bad_images.DEFAULT_POLICY):
    """Scores a predictor on every image of an EDSR-layout folder.

    Args:
        predict_fn: callable lr uint8 [h, w, 3] -> sr uint8 [scale*h, scale*w, 3].
        data_dir: folder with HR/ and LR_bicubic/X<scale>/ (see `keras_sr.data.load_benchmark`).
        scale: SR factor.
        crop_border: border removed before measuring; default `scale`, the usual convention.
        on_bad_image: "skip" or "fail" (`keras_sr.common.bad_images`) for an image of the set
            that cannot be used (unreadable, 16-bit, LR of the wrong size): left out of the
            means and listed under "skipped", or the first one raises `BadImageError`.

    Returns:
        dict: "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb" (means over images), "per_image" (list of
            dicts
        with "name", "is_gray", "lr_size" and the four metrics), "data_dir", "scale", "crop_border",
        "num_images", "num_skipped", "skipped" (item, reason), "seconds".

    Raises:
        ValueError: a prediction of the wrong dtype or shape (the message names the image).
        bad_images.NoImagesError: no usable image in the set.
    """
    crop_border = scale if crop_border is None else crop_border
    start = time.time()
    per_image = []
    bad = bad_images.BadImages(on_bad_image)
    loaded = load_benchmark(data_dir, scale, bad)
    if not loaded:
        raise bad_images.NoImagesError(f"no usable image in {data_dir} "
                                       f"({bad.to_json()['num_skipped']} skipped)")
    for name, lr, hr, is_gray in loaded:
        sr = np.asarray(predict_fn(image_io.to_rgb(lr)))
        want = (scale * lr.shape[0], scale * lr.shape[1], 3)
        if sr.dtype != np.uint8 or sr.shape != want:
            raise ValueError(f"prediction for {name} in {data_dir} is {sr.dtype} {sr.shape}, "
                             f"expected uint8 {want}")
        per_image.append({"name": name, "is_gray": is_gray, "lr_size": list(lr.shape[:2]),
                          **metrics.compute_metrics(sr, hr, crop_border)})
    result = {key: float(np.mean([m[key] for m in per_image])) for key in METRIC_KEYS}
    result.update(data_dir=os.fspath(data_dir), scale=scale, crop_border=crop_border,
                  num_images=len(per_image), per_image=per_image, **bad.to_json(),
                  seconds=round(time.time() - start, 2))
    return result


def format_table(result):
    """A plain-text table of per-image and mean metrics."""
    width = max([len(m["name"]) for m in result["per_image"]] + [5])
    lines = [f"{'image':<{width}}  PSNR-Y   SSIM-Y  PSNR-RGB SSIM-RGB"]
    rows = result["per_image"] + [{"name": "mean", **result}]
    for m in rows:
        if m["name"] == "mean":
            lines.append("-" * len(lines[0]))
        gray = "  (gray)" if m.get("is_gray") else ""
        lines.append(f"{m['name']:<{width}}  {m['psnr_y']:6.2f}  {m['ssim_y']:.4f}  "
                     f"{m['psnr_rgb']:6.2f}   {m['ssim_rgb']:.4f}{gray}")
    for entry in result.get("skipped", []):
        lines.append(f"skipped (not in the mean): "
                     f"{bad_images.line(entry['item'], entry['reason'])}")
    return "\n".join(lines)
