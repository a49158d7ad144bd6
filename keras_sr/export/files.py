"""Export files: OUTPUT.tflite, its SavedModel twin and its JSON summary, each written atomically.

`export_workdir` is what `tools/export_tflite.py` and the whole-job runner call: it loads the
model a work directory holds (`keras_sr.workdir`), converts it (`tflite_lib`) and writes

    OUTPUT.tflite        the fixed-shape model
    OUTPUT.savedmodel/   serving_default: float NHWC RGB in [0, 1] -> the Keras model's output in
                         [0, 1], run as a TF graph (for INT8: within 1 level of it, not bit-identical)
    OUTPUT.json          ops, IO quantization, parameter count, MACs, source checkpoint, settings,
                         and for INT8 the kernel sets of the bit-identity claim ("bit_identical_kernels")

Exporting a checkpoint again writes the same OUTPUT.tflite and OUTPUT.json bytes, in any process
(so a job rerun after a kill does too). The SavedModel twin is not byte-stable: TensorFlow writes
a random UUID into its fingerprint.pb, and numbers its functions by what the process traced before.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from keras_sr.common import fileio
from keras_sr.data import sources
from keras_sr.export import parity, tflite_lib
from keras_sr.workdir import WorkDir

KINDS = ("int8", "float", "ptq")


def save_serving_model(model, path):
    """Writes `model` (training=False) as a SavedModel, atomically (a temp dir, then a rename).

    Its `serving_default` signature maps "lr": float32 (B, H, W, 3) RGB in [0, 1] to "sr":
    (B, 3H, 3W, 3). For the QAT model this twin is the QAT Keras graph in graph mode: it rounds
    like the INT8 model except where graph-mode float rounding differs (graph optimizations
    change the float arithmetic in front of each rounding), so it agrees with the INT8 model
    within 1 level but is not bit-identical to it (measured shares: `keras_sr.export.parity`).
    `keras-sr-parity --tflite=PATH.tflite` reports its agreement.
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


def load_serving_model(path):
    """The SavedModel twin at `path` as a callable like a Keras model: f(x, training=False).

    x: float32 (B, H, W, 3) RGB in [0, 1]; returns the "sr" output of `serving_default`.
    """
    serve = tf.saved_model.load(path).signatures["serving_default"]

    def call(x, training=False):
        if training:
            raise ValueError("a SavedModel twin runs in inference mode only")
        return serve(lr=tf.convert_to_tensor(x, tf.float32))["sr"]

    return call


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


class ExportInputError(ValueError):
    """The work directory or the export options cannot give the asked-for model (names the flag)."""


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

    Raises:
        ExportInputError: an unknown kind, PTQ without calibration data, or a work directory
            that holds no run of the stage `kind` needs (or a checkpoint its config cannot load).
    """
    if kind not in KINDS:
        raise ExportInputError(f"export kind must be one of {KINDS}, got {kind!r}")
    if kind == "ptq" and not calibration_data:
        raise ExportInputError("--ptq needs --calibration_data (a benchmark folder or "
                               "builtin:train)")
    # Tensor names in the .tflite come from Keras layer names, whose automatic suffixes count the
    # layers this process made before (a job exports after training): counting afresh makes an
    # export the same bytes in any process.
    keras.backend.reset_uids()
    try:
        run = WorkDir.open(workdir)
        # INT8 ships the QAT model; "float" and "ptq" start from the fused FP32 graph.
        model = run.load("qat" if kind == "int8" else "fused")
    except (FileNotFoundError, ValueError) as e:  # no run, another stage, another architecture
        raise ExportInputError(f"--workdir={workdir}: {e}") from None
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
    if kind == "int8":
        # Export does not run parity; this names the kernels the QAT model's bit identity holds
        # for (`keras-sr-parity --kernels=...` measures it).
        info["bit_identical_kernels"] = list(parity.BIT_IDENTICAL_KERNELS)
    return write_export(blob, output, model, info)
