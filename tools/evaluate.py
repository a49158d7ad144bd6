"""PSNR/SSIM (Y and RGB, border = scale) of a model on an EDSR-layout benchmark folder.

    keras-sr-evaluate --model=bicubic --data=../shared/data/Set5
    keras-sr-evaluate --model=runs/stage2 --data=../shared/data/Set14 --json=runs/stage2/set14.json
    keras-sr-evaluate --model=student_int8.tflite --data=builtin:val

--model: "bicubic", a training work directory or checkpoint prefix, or a .tflite file.
--data: a folder with HR/ and LR_bicubic/X<scale>/, or builtin:val (written to a temporary folder).
An image of the set that cannot be used is left out of the means and listed (table and --json
"skipped"), or with --on_bad_image=fail ends the run (one line naming it, exit status 1).
"""
import os
import tempfile

from absl import app, flags

import keras_sr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from keras_sr import evaluate
from keras_sr.common import bad_images, cli, fileio
from keras_sr.data import builtin

_MODEL = flags.DEFINE_string("model", None,
                             "bicubic, a work directory/checkpoint, or a .tflite file.",
                             required=True)
_DATA = flags.DEFINE_string("data", None, "EDSR-layout folder, or builtin:val.", required=True)
_JSON = flags.DEFINE_string("json", None, "Write the results (means, per image) to this JSON file.")
_SCALE = flags.DEFINE_integer("scale", 3, "Super-resolution factor.", lower_bound=2)
_CROP = flags.DEFINE_integer("crop_border", None,
                             "Border removed before measuring (default: scale).", lower_bound=0)
_ON_BAD_IMAGE = flags.DEFINE_enum("on_bad_image", bad_images.DEFAULT_POLICY,
                                  list(bad_images.POLICIES), bad_images.FLAG_HELP)

flags.register_validator("data", lambda d: d == "builtin:val" or os.path.isdir(d),
                         message="--data must be an existing folder (HR/, LR_bicubic/X<scale>/) or "
                                 "builtin:val")
flags.register_validator("model", lambda m: m == "bicubic" or os.path.exists(m)
                         or os.path.exists(m + ".index"),
                         message="--model must be bicubic, an existing work directory, checkpoint "
                                 "prefix or .tflite file")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    predictor = evaluate.make_predictor(_MODEL.value, _SCALE.value)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = _DATA.value
        if data_dir == "builtin:val":
            data_dir = os.path.join(tmp, "builtin_val")
            builtin.write_benchmark_layout(data_dir, "val", _SCALE.value)
        try:
            result = evaluate.evaluate_benchmark(predictor, data_dir, _SCALE.value, _CROP.value,
                                                 _ON_BAD_IMAGE.value)
        except (bad_images.NoImagesError, FileNotFoundError) as e:  # no HR/, an empty set
            raise app.UsageError(f"--data={_DATA.value}: {e}") from None
    result = {"model": _MODEL.value, "data": _DATA.value, "flags": cli.resolved_flags(__name__),
              **result}
    print(f"{_MODEL.value} on {_DATA.value} (x{result['scale']}, border {result['crop_border']}):")
    print(evaluate.format_table(result))
    if _JSON.value:
        fileio.write_json(_JSON.value, result)


def run():
    cli.run_main(main)


if __name__ == "__main__":
    run()
