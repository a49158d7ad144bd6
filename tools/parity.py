"""INT8 TFLite vs Keras QAT parity on real images (% identical, % within 1 level, max diff, PSNR).

    keras-sr-parity --workdir=runs/stage3 --data=../shared/data/Set14
    keras-sr-parity --workdir=runs/stage3 --tflite=out/student_360p.tflite --data=builtin:val
    keras-sr-parity --workdir=runs/stage3 --tflite=out/student_360p.tflite --data=builtin:val \
        --kernels=builtin

Without --tflite the QAT model of --workdir is converted with a dynamic input shape and each image
runs whole; with --tflite a fixed-shape model is tiled (`TFLitePredictor`), and an image smaller
than the tile is reflect-padded on both sides alike. The Keras side is the QAT model with
training=False, which rounds every conv like XNNPACK: with --kernels=xnnpack (LiteRT's default) a
correct export is 100 % identical; with --kernels=builtin (LiteRT's own kernels, no delegate),
which requantize differently, it is not, and this measures by how much. The claim it checks: at
least 99.9 % of output values within 1 pixel level and none more than 3 apart; the exit status is 1
if not.

When --tflite has a SavedModel twin beside it (PATH.savedmodel/, written by keras-sr-export-tflite),
its agreement with the TFLite model on the same images is reported too ("savedmodel"). The twin is
the QAT graph run in graph mode, which rounds a share of values one level apart (see
keras_sr.export.files.save_serving_model): it is reported, not held to the claim.
"""
import os
import sys

from absl import app, flags

import keras_sr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from keras_sr.common import cli, fileio
from keras_sr.data import sources
from keras_sr.export import files, parity, tflite_lib, tflite_runner
from keras_sr.workdir import WorkDir

_WORKDIR = flags.DEFINE_string("workdir", None, "Stage-3 work directory or checkpoint prefix.",
                               required=True)
_TFLITE = flags.DEFINE_string("tflite", None, "INT8 .tflite to check (default: convert --workdir).")
_DATA = flags.DEFINE_string("data", None, "EDSR-layout folder or builtin:val.", required=True)
_THREADS = flags.DEFINE_integer("num_threads", 2, "Interpreter threads.", lower_bound=1)
_KERNELS = flags.DEFINE_enum("kernels", "xnnpack", list(tflite_runner.KERNELS),
                             "LiteRT kernel set of the TFLite model: xnnpack (the default "
                             "delegate) or builtin (LiteRT's own kernels, no delegate).")
_JSON = flags.DEFINE_string("json", None, "Also write the report to this JSON file.")

_KERNEL_NAMES = {"xnnpack": "LiteRT XNNPACK", "builtin": "LiteRT builtin (no delegate)"}


def _print_row(name, size, stats):
    print(f"{name:<14}{size:>12}{stats['identical']:>13.4f}{stats['within_1']:>12.4f}"
          f"{stats['max_diff']:>5}{stats['psnr']:>9.2f}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run = WorkDir.open(_WORKDIR.value)
    try:
        q_model = run.load("qat")
    except ValueError as e:  # not a Stage-3 run, or a checkpoint that does not fit its config
        raise app.UsageError(f"--workdir: {e}") from None
    model = _TFLITE.value or tflite_lib.convert_qat(q_model, (1, None, None, 3))
    predictor = tflite_runner.TFLitePredictor(model, num_threads=_THREADS.value,
                                              kernels=_KERNELS.value)
    images = sources.load_lr_images(_DATA.value, run.config.model.scale)
    report = parity.parity_report(q_model, predictor, images)
    report.update(flags=cli.resolved_flags(__name__), checkpoint=run.checkpoint,
                  tflite=_TFLITE.value or "(converted, dynamic shape)",
                  kernels=_KERNEL_NAMES[_KERNELS.value],
                  bit_identical_expected=_KERNELS.value in parity.BIT_IDENTICAL_KERNELS)
    print(f"{'image':<14}{'LR size':>12}{'identical %':>13}{'within 1 %':>12}{'max':>5}"
          f"{'PSNR dB':>9}")
    for row in report["per_image"]:
        _print_row(row["name"], "x".join(str(v) for v in row["lr_size"]), row)
    _print_row("ALL", "", report["overall"])
    verdict = "meets" if report["overall"]["ok"] else "FAILS"
    print(f"{verdict} the claim with {report['kernels']}: >= {parity.PARITY_MIN_WITHIN_1} % "
          f"within 1 level, max diff <= {parity.PARITY_MAX_DIFF}")
    twin = _TFLITE.value and _TFLITE.value[:-len(".tflite")] + ".savedmodel"
    if twin and _TFLITE.value.endswith(".tflite") and os.path.isdir(twin):
        # The twin is the reference side: the agreement of the TFLite model with it.
        overall = parity.parity_report(files.load_serving_model(twin), predictor,
                                       images)["overall"]
        report["savedmodel"] = {"path": twin, **{k: v for k, v in overall.items() if k != "ok"}}
        _print_row("SavedModel", "(all)", overall)
        print(f"SavedModel twin vs the TFLite model: {overall['identical']:.2f} % identical, "
              f"{overall['within_1']:.2f} % within 1 level, max diff {overall['max_diff']} "
              "(graph-mode rounding; not held to the claim)")
    if _JSON.value:
        fileio.write_json(_JSON.value, report)
    if not report["overall"]["ok"]:
        sys.exit(1)


def run():
    cli.run_main(main)


if __name__ == "__main__":
    run()
