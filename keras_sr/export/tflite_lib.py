"""TFLite export of the student: fully-integer INT8 from the QAT model, FP32, and a PTQ baseline.

    q = keras_sr.quant.load_qat_model(workdir)
    blob = convert_qat(q, input_shape=(1, 360, 640, 3))      # bytes; raises if anything is float
    write_export(blob, "student.tflite", q)                  # + student.savedmodel/ + student.json

The INT8 graph is QUANTIZE(uint8->int8) -> 10 x CONV_2D (fused ReLU) -> ADD -> DEPTH_TO_SPACE ->
QUANTIZE(int8->uint8). With uint8 IO the input and output tensors have scale 1/255 and zero point 0,
so their bytes are pixel values; with int8 IO (no QUANTIZE ops) the zero point is -128. The shape is
fixed (NHWC, batch 1; 1x360x640x3 and 1x720x1280x3 are the documented deploy shapes);
`keras_sr.export.tflite_runner.TFLitePredictor` tiles a fixed-shape model over images of any size.

Parity (`parity_stats`, `parity_ok`) is the claim that INT8 TFLite and the Keras QAT model
(training=False) agree within 1 pixel level on at least 99.9 % of output values and never differ by
more than 3, with the LiteRT XNNPACK kernels. The QAT model rounds every conv output the way
XNNPACK requantizes it (`keras_sr.quant.quantizers.requantize`), so with XNNPACK the two are
bit-identical; other kernel sets (the builtin reference kernels, NPU delegates) round differently
(tfmot_qat.md section 7). Without that emulation a fused MobileOne student, whose hidden features
span ~[0, 100], measured only ~97-99 % within 1 level and differences up to ~25 levels: the ~1e-5
per-layer rounding flips of plain fake-quant survive along the folded identity path of every block.
"""
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from ai_edge_litert import interpreter as litert

from keras_sr import fileio, models, quant
from keras_sr.data import benchmark, builtin, image_io, matlab_resize
from keras_sr.train import restore
from keras_sr.train import workdir as wd

DEFAULT_INPUT_SHAPE = (1, 360, 640, 3)
KINDS = ("int8", "float", "ptq")
IO_TYPES = {"uint8": tf.uint8, "int8": tf.int8}
# The only ops of a fully-integer student; anything else (DEQUANTIZE, a float op) is an export bug.
INT8_OPS = frozenset({"QUANTIZE", "CONV_2D", "ADD", "DEPTH_TO_SPACE"})
INTEGER_TYPES = frozenset({np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int32)})
# Parity claim, in output pixel levels (see the module docstring).
PARITY_MIN_WITHIN_1 = 99.9
PARITY_MAX_DIFF = 3


def _concrete_function(model, input_shape):
    if len(input_shape) != 4 or input_shape[-1] != 3:
        raise ValueError(f"input shape must be NHWC with 3 channels, got {tuple(input_shape)}")

    @tf.function
    def serve(lr):
        return model(lr, training=False)

    return serve.get_concrete_function(tf.TensorSpec(input_shape, tf.float32, name="lr"))


def convert_qat(q_model, input_shape=DEFAULT_INPUT_SHAPE, io="uint8"):
    """Converts a QAT model (keras_sr.quant) to a fully-integer TFLite flatbuffer.

    Args:
        q_model: the fake-quant Keras model, input float RGB in [0, 1].
        input_shape: NHWC input shape; None for H and W gives a dynamic-shape model.
        io: "uint8" (scale 1/255, zero point 0: raw pixels) or "int8" (zero point -128).

    Returns:
        The .tflite bytes.

    Raises:
        ValueError: if the result holds a float tensor, a DEQUANTIZE or an unexpected op.
    """
    if io not in IO_TYPES:
        raise ValueError(f"io must be one of {sorted(IO_TYPES)}, got {io!r}")
    # The converter folds plain FakeQuant ops; the runtime then computes what the QAT model's
    # rounding emulates.
    with quant.converter_graph(q_model):
        function = _concrete_function(q_model, input_shape)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], q_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = converter.inference_output_type = IO_TYPES[io]
    blob = converter.convert()
    check_int8(blob)
    return blob


def convert_float(model, input_shape=DEFAULT_INPUT_SHAPE):
    """Converts a float Keras model (e.g. `keras_sr.quant.float_twin`) to an FP32 flatbuffer."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [_concrete_function(model, input_shape)], model)
    return converter.convert()


def convert_ptq(model, representative_inputs, input_shape=DEFAULT_INPUT_SHAPE, io="uint8"):
    """Post-training int8 quantization of a float model (the paper's PTQ ablation).

    Args:
        model: the fused FP32 student.
        representative_inputs: a re-iterable collection of float32 arrays of `input_shape`, RGB
            in [0, 1].
        input_shape: the fixed NHWC input shape.
        io: "uint8" or "int8" model inputs and outputs. The output range is calibrated, so unlike
            the QAT export its output scale is not 1/255 (the runner dequantizes whatever it is).

    Returns:
        The .tflite bytes (checked to be fully integer).
    """
    if io not in IO_TYPES:
        raise ValueError(f"io must be one of {sorted(IO_TYPES)}, got {io!r}")
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [_concrete_function(model, input_shape)], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x] for x in representative_inputs)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = IO_TYPES[io]
    blob = converter.convert()
    check_int8(blob)
    return blob


def _interpreter(blob):
    # Builtin kernels without XNNPACK: the op list is then the model's own, not the delegate's.
    return litert.Interpreter(
        model_content=blob,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def _io_entry(detail):
    scale, zero_point = detail["quantization"]
    return {"name": detail["name"], "shape": [int(v) for v in detail["shape_signature"]],
            "dtype": np.dtype(detail["dtype"]).name, "scale": float(scale),
            "zero_point": int(zero_point)}


def describe(blob):
    """Summary of a .tflite model: ops, IO quantization, tensor types, deploy parameter count.

    Returns:
        dict with "ops" (op names in execution order), "inputs"/"outputs" (name, shape with -1 for
        dynamic dims, dtype, scale, zero_point), "tensor_dtypes" (name -> dtype of every tensor),
        "parameters" (number of conv filter and bias values) and "bytes".
    """
    interpreter = _interpreter(blob)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # pylint: disable=protected-access
    parameters = 0
    for op in ops:
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            parameters += sum(int(np.prod(tensors[i]["shape"])) for i in op["inputs"][1:] if i >= 0)
    return {
        "ops": [op["op_name"] for op in ops],
        "inputs": [_io_entry(d) for d in interpreter.get_input_details()],
        "outputs": [_io_entry(d) for d in interpreter.get_output_details()],
        "tensor_dtypes": {t["name"]: np.dtype(t["dtype"]).name for t in tensors.values()},
        "parameters": parameters,
        "bytes": len(blob),
    }


def check_int8(blob):
    """Raises ValueError (listing the ops) unless the model is fully integer.

    Fully integer: every op is one of INT8_OPS, there is no DEQUANTIZE, and every tensor is int8,
    uint8 or int32 (biases).
    """
    info = describe(blob)
    problems = []
    unexpected = sorted(set(info["ops"]) - INT8_OPS)
    if unexpected:
        problems.append(f"unexpected ops {unexpected}")
    floats = sorted(name for name, dtype in info["tensor_dtypes"].items()
                    if np.dtype(dtype) not in INTEGER_TYPES)
    if floats:
        problems.append(f"{len(floats)} non-integer tensors, e.g. {floats[:5]}")
    if problems:
        raise ValueError("the exported model is not fully int8: " + "; ".join(problems)
                         + f". Ops: {' -> '.join(info['ops'])}")
    return info


def keras_uint8(model, lr_uint8):
    """Runs a Keras SR model (training=False) on uint8 HWC RGB; returns uint8 (3H, 3W, 3).

    For the QAT model the output is exactly on the 1/255 grid, so the rounding is lossless.
    """
    lr = tf.convert_to_tensor(np.asarray(lr_uint8, np.float32)[None] / 255.0)
    sr = model(lr, training=False)[0].numpy()
    return np.clip(np.round(sr * 255.0), 0, 255).astype(np.uint8)


def parity_stats(reference, candidate):
    """Agreement of two uint8 images (or batches), in pixel levels.

    Returns:
        dict: "identical" and "within_1" (percent of values), "max_diff", "mean_abs_diff" and "psnr"
        (dB of candidate against reference, inf when identical).
    """
    reference = np.asarray(reference)
    candidate = np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: {reference.shape} vs {candidate.shape}")
    diff = np.abs(reference.astype(np.int32) - candidate.astype(np.int32))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {
        "identical": 100.0 * float(np.mean(diff == 0)),
        "within_1": 100.0 * float(np.mean(diff <= 1)),
        "max_diff": int(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "psnr": float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse),
    }


def parity_ok(stats):
    """Whether `parity_stats` output meets the INT8 parity claim (>= 99.9 % within 1, max <= 3)."""
    return stats["within_1"] >= PARITY_MIN_WITHIN_1 and stats["max_diff"] <= PARITY_MAX_DIFF


# --------------------------------------------------------------------------------------------------
# Files.

def _default_mode(mode):
    """`mode` masked by the process umask (temp files are created private)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def save_serving_model(model, path):
    """Writes `model` (training=False) as a SavedModel, atomically (a temp dir, then a rename).

    Its `serving_default` signature maps "lr": float32 (B, H, W, 3) RGB in [0, 1] to "sr":
    (B, 3H, 3W, 3); for the QAT model that is its output on the 1/255 grid of [0, 1], computed
    with the runtime's rounding (bit-identical to the INT8 TFLite model under XNNPACK).
    """
    module = tf.Module()
    # The variables (weights, ranges, freeze flags, decays) are attached explicitly: the function
    # captures all of them, and saving the Keras object itself would re-trace every tfmot layer.
    module.variables_ = list(model.variables)
    module.serve = tf.function(lambda lr: {"sr": model(lr, training=False)},
                               input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                                              name="lr")])
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    try:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        os.chmod(tmp, _default_mode(0o777))
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=".old-")
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    summary = {k: v for k, v in describe(blob).items() if k != "tensor_dtypes"}
    summary.update(metadata or {})
    save_serving_model(keras_model, stem + ".savedmodel")
    fileio.write_bytes_atomic(output, blob)
    fileio.write_json(stem + ".json", summary)
    return summary


# --------------------------------------------------------------------------------------------------
# From a training work directory (what tools/export_tflite.py and tools/parity.py call).

def load_lr_images(data, scale=3):
    """(name, LR uint8 (h, w, 3) RGB) pairs of an evaluation set.

    Args:
        data: an EDSR-layout folder (HR/ + LR_bicubic/X<scale>/), or "builtin:train" /
            "builtin:val" (the embedded photographs, LR made with the MATLAB bicubic rule).
        scale: SR factor of the LR images.
    """
    if data.startswith("builtin:"):
        return [(name, matlab_resize.matlab_downscale(matlab_resize.modcrop(hr, scale), scale))
                for name, hr in builtin.load_split(data[len("builtin:"):])]
    return [(name, image_io.to_rgb(lr)) for name, lr, _, _ in benchmark.load_benchmark(data, scale)]


def fit_to_shape(image, height, width):
    """Reflect-pads and centre-crops an (h, w, 3) image to exactly (height, width, 3)."""
    pad_h, pad_w = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return image[top:top + height, left:left + width]


def load_workdir_model(workdir, kind):
    """The Keras model to export from a work directory or checkpoint prefix.

    Args:
        workdir: a training work directory (latest checkpoint) or a checkpoint prefix.
        kind: "int8" (needs a Stage-3 QAT run), "float" or "ptq" (the fused FP32 graph: the QAT
            model's latent weights for Stage 3, the re-parameterized student for Stages 1-2).

    Returns:
        (Keras model, TrainConfig).
    """
    if kind not in KINDS:
        raise ValueError(f"export kind must be one of {KINDS}, got {kind!r}")
    model, config = restore.load_model(workdir)
    if kind == "int8":
        if config.stage != 3:
            raise ValueError(f"{workdir} is a Stage-{config.stage} (FP32) run: an INT8 export "
                             "needs a Stage-3 QAT run; use --float, or --ptq for post-training "
                             "quantization")
        return model, config
    if config.stage == 3:
        template = models.build_student(**{**config.model, "reparameterized": True})
        return quant.float_twin(model, template), config
    return models.reparameterize(model), config


def export_workdir(workdir, output, input_shape=DEFAULT_INPUT_SHAPE, io="uint8", kind="int8",
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
    model, config = load_workdir_model(workdir, kind)
    if kind == "int8":
        blob = convert_qat(model, input_shape, io)
    elif kind == "float":
        blob = convert_float(model, input_shape)
    else:
        if not calibration_data:
            raise ValueError("--ptq needs --calibration_data (a benchmark folder or builtin:train)")
        _, height, width, _ = input_shape
        samples = [fit_to_shape(lr, height, width)[None].astype(np.float32) / 255.0
                   for _, lr in load_lr_images(calibration_data, config.model.get("scale", 3))]
        blob = convert_ptq(model, samples, input_shape, io)
    info = {"kind": kind, "io": "float32" if kind == "float" else io,
            "input_shape": list(input_shape), "checkpoint": wd.resolve_checkpoint(workdir)[1],
            "stage": config.stage,
            "model": config.model, **(metadata or {})}
    return write_export(blob, output, model, info)


def parity_report(q_model, predictor, images):
    """INT8 TFLite vs Keras QAT parity over images.

    Args:
        q_model: the Keras QAT model (run with training=False).
        predictor: callable uint8 LR -> uint8 SR (e.g. `TFLitePredictor`). If it has a
            `padded_input` method (a fixed-shape model on an image smaller than its tile), the Keras
            reference runs on that padded image and is cropped, so both sides see the same pixels.
        images: (name, LR uint8 (h, w, 3)) pairs.

    Returns:
        dict with "overall" (`parity_stats` over all output values, plus "ok" for the parity claim)
        and "per_image" (name, LR size and `parity_stats`).
    """
    per_image, references, candidates = [], [], []
    pad = getattr(predictor, "padded_input", lambda image: image)
    for name, lr in images:
        candidate = predictor(lr)
        reference = keras_uint8(q_model, pad(lr))[:candidate.shape[0], :candidate.shape[1]]
        per_image.append({"name": name, "lr_size": list(lr.shape[:2]),
                          **parity_stats(reference, candidate)})
        references.append(reference.ravel())
        candidates.append(candidate.ravel())
    overall = parity_stats(np.concatenate(references), np.concatenate(candidates))
    return {"overall": {**overall, "ok": parity_ok(overall)}, "per_image": per_image}
