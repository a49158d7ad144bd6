"""Runs the whole keras-sr method (data, Stages 1-3, INT8 export, evaluation) as one resumable job.

    keras-sr-run --workdir=runs/demo

With no source flags it trains on the photographs embedded in scikit-image (no download) and validates
on the held-out ones; see `keras_sr.recipe` for the folder layout and README.md for real data.
"""
from absl import app, flags

import keras_sr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from keras_sr import configs, recipe
from keras_sr.common import cli
from keras_sr.export import tflite_lib
from keras_sr.train import lib

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Output folder; rerun to resume.")
_TRAIN = flags.DEFINE_string("train_source", "builtin:train",
                             "Training images: builtin:train, folder:PATH, benchmark:PATH or "
                             "tfds:div2k/bicubic_x3.")
_VAL = flags.DEFINE_string("val_source", "builtin:val", "Validation images (same forms).")
_EVAL = flags.DEFINE_list("eval_data", [], "Further EDSR-layout folders to report PSNR on.")
_CONFIG = flags.DEFINE_enum("config", "default", list(configs.VARIANTS),
                            "Config variant of every stage.")
_TEACHER = flags.DEFINE_string("teacher_records", None, "Teacher TFRecords for Stages 2 and 3.")
_SHAPE = cli.define_shape("input_shape", tflite_lib.DEFAULT_INPUT_SHAPE, "Fixed NHWC export shape.",
                          __name__)
_STRATEGY = flags.DEFINE_enum("strategy", "default", list(lib.STRATEGIES), "tf.distribute strategy.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    summary = recipe.run_recipe(
        _WORKDIR.value, _TRAIN.value, _VAL.value, config=_CONFIG.value,
        teacher_records=_TEACHER.value, eval_data=_EVAL.value,
        input_shape=_SHAPE(), strategy=_STRATEGY.value, run_info=cli.resolved_flags(__name__))
    for data_dir, rows in summary["scores"].items():
        for name, s in rows.items():
            print(f"{data_dir:40s} {name:12s} PSNR-Y {s['psnr_y']:.3f} dB  SSIM-Y {s['ssim_y']:.4f}  "
                  f"PSNR-RGB {s['psnr_rgb']:.3f} dB")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
