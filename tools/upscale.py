"""Upscales image files x3 with an exported model (INT8 or FP32 .tflite, any image size).

    keras-sr-upscale --model=runs/demo --input=photo.jpg --output=photo_x3.jpg
    keras-sr-upscale --model=out/student_360p.tflite --input=photos/ --output=photos_x3/ --compare
    keras-sr-upscale --model=runs/demo --input='scans/*.png' --output=scans_x3 --json=scans_x3.json

--model: a .tflite file, or a folder holding export/student_int8.tflite (a keras-sr-run work
directory) or one .tflite file.
--input: a file, a folder (its image files, not recursive) or a glob pattern.
--output: a file when there is one input and it ends in an image extension, else a folder. Outputs
keep the input's format (grayscale stays grayscale, alpha is upscaled bicubic and kept) and never
overwrite an input; see keras_sr.upscale.

A file that cannot be read is reported with the reason and skipped (listed under "skipped" in
--json); the others are written. With --on_bad_image=fail the first unreadable file ends the run
(one line naming it; outputs written before it stay). Exit status: 0 all written, 1 some files
failed (or --on_bad_image=fail stopped the run), 2 a bad command line (also a folder without image
files).
"""
from absl import app, flags

import keras_sr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from keras_sr import upscale
from keras_sr.common import bad_images, cli, fileio

_MODEL = flags.DEFINE_string("model", None, "A .tflite file, or a folder holding one.", required=True)
_INPUT = flags.DEFINE_string("input", None, "An image file, a folder or a glob pattern.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output image file (one input) or folder.", required=True)
_COMPARE = flags.DEFINE_bool("compare", False,
                             "Also write NAME_compare.EXT: OpenCV bicubic | model, side by side.")
_JSON = flags.DEFINE_string("json", None, "Write the resolved flags and per-file results here.")
_THREADS = flags.DEFINE_integer("num_threads", 2, "Interpreter threads.", lower_bound=1)
_ON_BAD_IMAGE = flags.DEFINE_enum("on_bad_image", bad_images.DEFAULT_POLICY,
                                  list(bad_images.POLICIES), bad_images.FLAG_HELP)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        model, predictor = upscale.load_model(_MODEL.value, _THREADS.value)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(f"--model: {e}") from None
    try:
        inputs = upscale.list_inputs(_INPUT.value)
    except FileNotFoundError as e:
        raise app.UsageError(f"--input: {e}") from None
    try:
        jobs = upscale.plan_jobs(inputs, _OUTPUT.value, _COMPARE.value)
    except ValueError as e:
        raise app.UsageError(f"--output: {e}") from None

    progress = upscale.Progress(len(jobs))
    try:
        summary = upscale.upscale_files(predictor, jobs, progress, _ON_BAD_IMAGE.value)
    finally:
        progress.close()
    summary = {"flags": cli.resolved_flags(__name__), "model": model,
               "tile_shape": predictor.tile_shape, **summary}
    failed = f"; {summary['num_failed']} failed (named above)" if summary["failures"] else ""
    print(f"upscaled {summary['num_written']} of {summary['num_inputs']} images with {model} in "
          f"{summary['seconds']:.1f} s ({summary['images_per_s']:.2f} images/s, "
          f"{summary['megapixels_per_s']:.3f} input megapixels/s){failed}")
    if _JSON.value:
        fileio.write_json(_JSON.value, summary)
    return 1 if summary["failures"] else 0


def run():
    cli.run_main(main)


if __name__ == "__main__":
    run()
