"""Exports a trained keras-sr model as a fixed-shape TFLite model (fully-integer INT8 by default).

    keras-sr-export-tflite --workdir=runs/stage3 --output=out/student_360p.tflite
    keras-sr-export-tflite --workdir=runs/stage3 --input_shape=1,720,1280,3 \
        --output=out/student_720p.tflite
    keras-sr-export-tflite --workdir=runs/stage3 --float --output=out/student_fp32.tflite
    keras-sr-export-tflite --workdir=runs/stage2 --ptq --calibration_data=builtin:train \
        --output=out/student_ptq.tflite

--workdir: a training work directory (latest checkpoint) or a checkpoint prefix. INT8 needs a
Stage-3 (QAT) run; --float exports the same fused graph in FP32 (for Stage 3: the QAT model's latent
weights); --ptq quantizes the fused FP32 model after training with a representative dataset (an
ablation).

Writes OUTPUT (.tflite), OUTPUT.savedmodel/ (serving_default: float NHWC RGB in [0, 1] -> the
Keras model's output in [0, 1], run as a TF graph; for INT8 that is the QAT graph, within 1 level of
the INT8 model but not bit-identical to it) and OUTPUT.json (IO quantization, op list, parameter
count, MACs, resolved flags; for INT8 "bit_identical_kernels", the LiteRT kernel sets with which
the INT8 model equals the eager Keras QAT model). The INT8 export fails with the op list if any
float tensor, DEQUANTIZE or unexpected op is left. uint8 IO has scale 1/255 and zero point 0: the
bytes are pixel values.
"""
from absl import app, flags

import keras_sr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from keras_sr.common import cli
from keras_sr.export import files, tflite_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Training work directory or checkpoint prefix.",
                               required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output .tflite path.", required=True)
_INPUT_SHAPE = cli.define_shape("input_shape", tflite_lib.DEFAULT_INPUT_SHAPE,
                                "Fixed NHWC input shape, e.g. 1,360,640,3 or 1,720,1280,3.", __name__)
_IO = flags.DEFINE_enum("io", "uint8", ["uint8", "int8"], "Integer type of the model's IO tensors.")
_FLOAT = flags.DEFINE_bool("float", False, "Export an FP32 model of the same fused graph.")
_PTQ = flags.DEFINE_bool("ptq", False, "Post-training int8 quantization of the fused FP32 model.")
_CALIBRATION = flags.DEFINE_string(
    "calibration_data", None,
    "For --ptq: an EDSR-layout folder or builtin:train/builtin:val (representative LR images).")

flags.register_validator("output", lambda p: p.endswith(".tflite"),
                         message="--output must end in .tflite")
flags.register_multi_flags_validator(["float", "ptq"], lambda f: not (f["float"] and f["ptq"]),
                                     message="--float and --ptq are exclusive")
flags.register_multi_flags_validator(["ptq", "calibration_data"],
                                     lambda f: not f["ptq"] or f["calibration_data"],
                                     message="--ptq needs --calibration_data")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    kind = "float" if _FLOAT.value else "ptq" if _PTQ.value else "int8"
    try:
        summary = files.export_workdir(
            _WORKDIR.value, _OUTPUT.value, _INPUT_SHAPE(), _IO.value, kind,
            calibration_data=_CALIBRATION.value, metadata={"flags": cli.resolved_flags(__name__)})
    except files.ExportInputError as e:
        raise app.UsageError(str(e)) from None
    print(f"wrote {_OUTPUT.value} ({summary['bytes']} bytes, {summary['parameters']} parameters)")
    print("ops: " + " -> ".join(summary["ops"]))
    for side in ("inputs", "outputs"):
        for t in summary[side]:
            print(f"{side[:-1]} {t['name']}: {t['dtype']} {t['shape']} scale {t['scale']:.8g} "
                  f"zero point {t['zero_point']}")


def run():
    cli.run_main(main)


if __name__ == "__main__":
    run()
