"""TFLite conversion of the student: fully-integer INT8 from the QAT model, FP32, and a PTQ baseline.

    q = keras_sr.workdir.load("runs/stage3", "qat")
    blob = convert_qat(q, input_shape=(1, 360, 640, 3))      # bytes; raises if anything is float
    keras_sr.export.files.write_export(blob, "student.tflite", q)   # + .savedmodel/ + .json

The INT8 graph is QUANTIZE(uint8->int8) -> 10 x CONV_2D (fused ReLU) -> ADD -> DEPTH_TO_SPACE ->
QUANTIZE(int8->uint8); an anchored student (and ABPN) adds two CONCATENATIONs of the input and an
ADD before DEPTH_TO_SPACE; the "repdw" student has a DEPTHWISE_CONV_2D and a 1x1 CONV_2D per block;
FSRCNN is CONV_2Ds and DEPTH_TO_SPACE. With uint8 IO the input and output tensors have scale 1/255
and zero point 0, so their bytes are pixel values; with int8 IO (no QUANTIZE ops) the zero point
is -128. The shape is fixed (NHWC, batch 1; 1x360x640x3 and 1x720x1280x3 are the documented deploy shapes);
`keras_sr.export.tflite_runner.TFLitePredictor` tiles a fixed-shape model over images of any size.
How closely the INT8 model reproduces the Keras QAT model is `keras_sr.export.parity`.
"""
import numpy as np
import tensorflow as tf

from keras_sr import quant
from keras_sr.export.tflite_runner import builtin_interpreter

# The documented deploy shape, and the default of every binary that exports.
DEFAULT_INPUT_SHAPE = (1, 360, 640, 3)
# Every documented deploy shape (what `keras-sr-benchmark` times).
DEPLOY_SHAPES = (DEFAULT_INPUT_SHAPE, (1, 720, 1280, 3))
IO_TYPES = {"uint8": tf.uint8, "int8": tf.int8}
# The only ops of a fully-integer student; anything else (DEQUANTIZE, a float op) is an export bug.
INT8_OPS = frozenset({"QUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "DEPTH_TO_SPACE",
                      "CONCATENATION"})
INTEGER_TYPES = frozenset({np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int32)})


def _converter(model, input_shape, io=None, traced=None):
    """A TFLiteConverter of `model` at `input_shape`, set up for integer IO of type `io` if given.

    Args:
        model: a Keras model, input float RGB in [0, 1].
        input_shape: NHWC input shape with 3 channels; None for H and W: a dynamic shape.
        io: None (float IO), "uint8" or "int8".
        traced: the concrete function to convert, when it must be traced in a special context.
    """
    if io is not None and io not in IO_TYPES:
        raise ValueError(f"io must be one of {sorted(IO_TYPES)}, got {io!r}")
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [traced or _concrete_function(model, input_shape)], model)
    if io is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.inference_input_type = converter.inference_output_type = IO_TYPES[io]
    return converter


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
    # The converter folds plain FakeQuant ops; the runtime then computes what the QAT model's
    # rounding emulates.
    with quant.converter_graph(q_model):
        traced = _concrete_function(q_model, input_shape)
    blob = _converter(q_model, input_shape, io, traced).convert()
    check_int8(blob)
    return blob


def convert_float(model, input_shape=DEFAULT_INPUT_SHAPE):
    """Converts a float Keras model (e.g. `keras_sr.quant.float_twin`) to an FP32 flatbuffer."""
    return _converter(model, input_shape).convert()


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
    converter = _converter(model, input_shape, io)
    converter.representative_dataset = lambda: ([x] for x in representative_inputs)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    blob = converter.convert()
    check_int8(blob)
    return blob


def _io_entry(detail):
    scale, zero_point = detail["quantization"]
    return {"name": detail["name"], "shape": [int(v) for v in detail["shape_signature"]],
            "dtype": np.dtype(detail["dtype"]).name, "scale": float(scale),
            "zero_point": int(zero_point)}


# The ops whose multiply-accumulates `count_macs` counts: all of a conv net's arithmetic worth
# counting (ADD, CONCATENATION, DEPTH_TO_SPACE and QUANTIZE are memory-bound and cost ~1 op a value).
MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED")


def _op_macs(name, op, shapes):
    """Multiply-accumulates of one op, from its tensors' shapes (`shapes`: index -> shape)."""
    if name == "TRANSPOSE_CONV":  # inputs: output shape, filter (Cout, kh, kw, Cin), input
        cout, kh, kw, _ = shapes[op["inputs"][1]]
        return int(np.prod(shapes[op["inputs"][2]])) * kh * kw * cout
    filter_shape = shapes[op["inputs"][1]]
    output = shapes[op["outputs"][0]]
    if name == "CONV_2D":  # filter (Cout, kh, kw, Cin / groups): each output sums kh*kw*Cin/groups
        return int(np.prod(output)) * int(np.prod(filter_shape[1:]))
    if name == "DEPTHWISE_CONV_2D":  # filter (1, kh, kw, Cout): each output sums one kh x kw window
        return int(np.prod(output)) * int(filter_shape[1] * filter_shape[2])
    return int(np.prod(output)) * int(filter_shape[-1])  # FULLY_CONNECTED: filter (Cout, Cin)


def _macs(interpreter):
    """Multiply-accumulates of one invocation at the interpreter's current tensor shapes."""
    shapes = {t["index"]: [int(v) for v in t["shape"]] for t in interpreter.get_tensor_details()}
    return sum(_op_macs(op["op_name"], op, shapes)
               for op in interpreter._get_ops_details()  # pylint: disable=protected-access
               if op["op_name"] in MAC_OPS)


def _is_dynamic(interpreter):
    return any(int(d) < 0 for d in interpreter.get_input_details()[0]["shape_signature"])


def count_macs(model, input_shape=None):
    """Multiply-accumulates of one invocation of a .tflite model (the ops of `MAC_OPS`).

    CONV_2D: H_out * W_out * C_out * kh * kw * C_in / groups (times the batch); DEPTHWISE_CONV_2D:
    H_out * W_out * C_out * kh * kw; TRANSPOSE_CONV: H_in * W_in * C_in * kh * kw * C_out;
    FULLY_CONNECTED: rows * C_out * C_in. One MAC is one multiply and one add (2 FLOPs).

    Args:
        model: .tflite bytes or path.
        input_shape: NHWC shape, needed for (and only used with) a dynamic-shape model.

    Returns:
        int.
    """
    interpreter = builtin_interpreter(model)
    if _is_dynamic(interpreter):
        if input_shape is None:
            raise ValueError("the model has a dynamic input shape: pass input_shape")
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"],
                                        list(input_shape))
        interpreter.allocate_tensors()
    return _macs(interpreter)


def describe(blob):
    """Summary of a .tflite model: ops, IO quantization, tensor types, parameters, MACs.

    Returns:
        dict with "ops" (op names in execution order), "inputs"/"outputs" (name, shape with -1 for
        dynamic dims, dtype, scale, zero_point), "tensor_dtypes" (name -> dtype of every tensor),
        "parameters" (filter and bias values of the `MAC_OPS`), "macs" (multiply-accumulates per
        invocation, `count_macs`; None for a dynamic-shape model) and "bytes".
    """
    interpreter = builtin_interpreter(blob)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # pylint: disable=protected-access
    parameters = 0
    for op in ops:
        if op["op_name"] in MAC_OPS:
            # Filter and bias; TRANSPOSE_CONV's inputs are (output shape, filter, input, bias).
            weights = op["inputs"][1::2] if op["op_name"] == "TRANSPOSE_CONV" else op["inputs"][1:]
            parameters += sum(int(np.prod(tensors[i]["shape"])) for i in weights if i >= 0)
    return {
        "ops": [op["op_name"] for op in ops],
        "inputs": [_io_entry(d) for d in interpreter.get_input_details()],
        "outputs": [_io_entry(d) for d in interpreter.get_output_details()],
        "tensor_dtypes": {t["name"]: np.dtype(t["dtype"]).name for t in tensors.values()},
        "parameters": parameters,
        "macs": None if _is_dynamic(interpreter) else _macs(interpreter),
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


def fit_to_shape(image, height, width):
    """Reflect-pads and centre-crops an (h, w, 3) image to exactly (height, width, 3)."""
    pad_h, pad_w = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return image[top:top + height, left:left + width]
