"""Runs the whole keras-sr method as one resumable job within a wall-time budget (default 10 min).

    keras-sr-run --workdir=runs/demo
    keras-sr-run --workdir=runs/t91 --train_source=../shared/data/T91/HR \
        --val_source=../shared/data/Set5 --eval_data=../shared/data/Set14

Data, training, BN recalibration and fusion, QAT, INT8 export, parity, evaluation and the report
(WORKDIR/report.html, report.md, metrics.json) all count against --time_budget_minutes. With no
source flags it trains on the photographs embedded in the installed packages (no download) and
validates on held-out ones; see `keras_sr.recipe` for the folder layout.
"""
import time

_STARTED = time.time()  # the budget counts from here, TensorFlow's import included

# pylint: disable=wrong-import-position
from absl import app, flags  # noqa: E402

import keras_sr  # noqa: E402,F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf  # noqa: E402  # isort: skip  (after keras_sr)
from keras_sr import recipe  # noqa: E402
from keras_sr.common import cli  # noqa: E402
from keras_sr.configs import job as job_configs  # noqa: E402
from keras_sr.export import tflite_lib  # noqa: E402
from keras_sr.train import lib  # noqa: E402

_SOURCES = ("a folder of images, an EDSR-layout folder (HR/ + LR_bicubic/X3/), folder:PATH, "
            "benchmark:PATH, builtin:train|val or tfds:div2k/bicubic_x3")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Output folder; rerun to resume.")
_TRAIN = flags.DEFINE_string("train_source", "builtin:train", f"Training images: {_SOURCES}.")
_VAL = flags.DEFINE_string("val_source", "builtin:val", "Validation images (same forms); the "
                           "report's pictures come from them.")
_EVAL = flags.DEFINE_list("eval_data", [], "Further sets (same forms) to score the models on.")
_CONFIG = flags.DEFINE_enum("config", "default", list(job_configs.VARIANTS),
                            "Job config: default (CPU, budgeted), smoke (a few steps), paper "
                            "(DIV2K schedule for a GPU, no budget).")
_BUDGET = flags.DEFINE_float("time_budget_minutes", None,
                             "Wall time of the whole job (default: the config's; 0: no budget).")
_TEACHER = flags.DEFINE_string("teacher_records", None, "Teacher TFRecords for Stages 2 and 3.")
_TEACHER_CHECKPOINT = flags.DEFINE_string(
    "teacher_checkpoint", None, "Official MambaIRv2-Light x3 checkpoint: the job precomputes the "
    "teacher outputs (needs keras-sr[teacher]).")
_TEACHER_SHA256 = flags.DEFINE_string(
    "teacher_checkpoint_sha256", None, "Expected hex sha256 of --teacher_checkpoint; the job stops "
    "before writing anything if it differs.")
_SHAPE = cli.define_shape("input_shape", tflite_lib.DEFAULT_INPUT_SHAPE, "Fixed NHWC export shape.",
                          __name__)
_STRATEGY = flags.DEFINE_enum("strategy", "default", list(lib.STRATEGIES), "tf.distribute strategy.")
_DETERMINISTIC = cli.define_deterministic(__name__)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        recipe.check_sources(_TRAIN.value, _VAL.value, _EVAL.value)
        recipe.check_teacher(_TEACHER.value, _TEACHER_CHECKPOINT.value, _TEACHER_SHA256.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if _DETERMINISTIC.value:
        tf.config.experimental.enable_op_determinism()  # before the first op
    try:
        summary = recipe.run_recipe(
            _WORKDIR.value, _TRAIN.value, _VAL.value, config=_CONFIG.value,
            teacher_records=_TEACHER.value, teacher_checkpoint=_TEACHER_CHECKPOINT.value,
            eval_data=_EVAL.value, input_shape=_SHAPE(), strategy=_STRATEGY.value,
            time_budget_minutes=_BUDGET.value, run_info=cli.resolved_flags(__name__),
            started=_STARTED, teacher_checkpoint_sha256=_TEACHER_SHA256.value)
    except recipe.JobMismatch as e:
        raise app.UsageError(str(e)) from None
    for entry in summary["sets"]:
        for row in entry["rows"]:
            print(f"{entry['name']:24s} {row['model']:8s} PSNR-Y {row['psnr_y']:.3f} dB  "
                  f"PSNR-RGB {row['psnr_rgb']:.3f} dB  SSIM-Y {row['ssim_y']:.4f}")
    print(f"Whole job: {summary['wall_seconds'] / 60:.1f} min; report: "
          f"{_WORKDIR.value}/report.html")


def run():
    cli.run_main(main)


if __name__ == "__main__":
    run()
