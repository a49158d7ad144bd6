"""Export files: OUTPUT.tflite, its SavedModel twin and its JSON summary, each written atomically.

`export_workdir` is what `tools/export_tflite.py` and the whole-job runner call: it loads the
model a work directory holds (`keras_sr.workdir`), converts it (`tflite_lib`) and writes

    OUTPUT.tflite        the fixed-shape model
    OUTPUT.savedmodel/   serving_default: float NHWC RGB in [0, 1] -> the model's output in [0, 1]
    OUTPUT.json          ops, IO quantization, parameter count, source checkpoint, settings
"""
import numpy as np
import tensorflow as tf

from keras_sr.common import fileio
from keras_sr.data import sources
from keras_sr.export import tflite_lib
from keras_sr.workdir import WorkDir

KINDS = ("int8", "float", "ptq")


def save_serving_model(model, path):
    """Writes `model` (training=False) as a SavedModel, atomically (a temp dir, then a rename).

    Its `serving_default` signature maps "lr": float32 (B, H, W, 3) RGB in [0, 1] to "sr":
    (B, 3H, 3W, 3); for the QAT model that is its output on the 1/255 grid of [0, 1], computed
    with the runtime's rounding. It runs as a graph, which on some CPUs rounds a few ties one level
    differently from the eager QAT model; it meets the parity claim (`keras_sr.export.parity`),
    it is not promised to be bit-identical to the INT8 model.
    """
    module = tf.Module()
    # The variables (weights, ranges, freeze flags, decays) are attached explicitly: the function
    # captures all of them, and saving the Keras object itself would re-trace every tfmot layer.
    module.variables_ = list(model.variables)
    module.serve = tf.function(lambda lr: {"sr": model(lr, training=False)},
                               input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                                              name="lr")])
    with fileio.atomic_directory(path) as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})


def write_export(blob, output, keras_model, metadata=None):
    """Writes OUTPUT (.tflite), its SavedModel twin and its JSON summary, each atomically.

    Args:
        blob: .tflite bytes.
        output: path ending in .tflite; PATH.savedmodel/ and PATH.json are written beside it.
        keras_model: the Keras model the blob was converted from (saved as the SavedModel).
        metadata: extra JSON-serializable entries for PATH.json (e.g. source checkpoint, flags).

    Returns:
        The JSON summary (see `describe`, without the per-tensor dtypes, plus `metadata`).
    """
    if not output.endswith(".tflite"):
        raise ValueError(f"the output path must end in .tflite, got {output!r}")
    stem = output[:-len(".tflite")]
    summary = {k: v for k, v in tflite_lib.describe(blob).items() if k != "tensor_dtypes"}
    summary.update(metadata or {})
    save_serving_model(keras_model, stem + ".savedmodel")
    fileio.write_bytes_atomic(output, blob)
    fileio.write_json(stem + ".json", summary)
    return summary


def export_workdir(workdir, output, input_shape=tflite_lib.DEFAULT_INPUT_SHAPE, io="uint8", kind="int8",
                   calibration_data=None, metadata=None):
    """Exports a trained model to OUTPUT (.tflite) + .savedmodel/ + .json.

    Args:
        workdir: a training work directory or checkpoint prefix.
        output: the .tflite path.
        input_shape: fixed NHWC input shape.
        io: "uint8" or "int8" for the integer kinds.
        kind: "int8" (QAT), "float" or "ptq".
        calibration_data: for "ptq": an EDSR-layout folder or "builtin:train"/"builtin:val" whose LR
            images, padded/cropped to the input shape, are the representative dataset.
        metadata: extra entries for the JSON summary.

    Returns:
        The JSON summary.
    """
    if kind not in KINDS:
        raise ValueError(f"export kind must be one of {KINDS}, got {kind!r}")
    if kind == "ptq" and not calibration_data:
        raise ValueError("--ptq needs --calibration_data (a benchmark folder or builtin:train)")
    run = WorkDir.open(workdir)
    # INT8 ships the QAT model; "float" and "ptq" start from the fused FP32 graph.
    model = run.load("qat" if kind == "int8" else "fused")
    if kind == "int8":
        blob = tflite_lib.convert_qat(model, input_shape, io)
    elif kind == "float":
        blob = tflite_lib.convert_float(model, input_shape)
    else:
        _, height, width, _ = input_shape
        samples = [tflite_lib.fit_to_shape(lr, height, width)[None].astype(np.float32) / 255.0
                   for _, lr in sources.load_lr_images(calibration_data, run.config.model.scale)]
        blob = tflite_lib.convert_ptq(model, samples, input_shape, io)
    info = {"kind": kind, "io": "float32" if kind == "float" else io,
            "input_shape": list(input_shape), "checkpoint": run.checkpoint, "stage": run.stage,
            "model": run.config.model.to_dict(), **(metadata or {})}
    return write_export(blob, output, model, info)
