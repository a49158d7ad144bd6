"""TFLite export: fully-int8 graph, parity with the Keras QAT model, FP32 export, tiling, files.

Parity is measured with LiteRT's default XNNPACK kernels (other kernel sets differ by design,
tfmot_qat.md section 7).
"""
import json

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import interpreter as litert
from conftest import QAT_CONFIG, fused_student, synthetic_pair

from keras_sr import configs, quant, workdir
from keras_sr.common import fileio, metrics
from keras_sr.export import files, parity, tflite_lib, tflite_runner
from keras_sr.quant.integer_add import RuntimeAdd

SHAPE = (1, 48, 64, 3)
PARAMETERS = 82_683  # 3x3 convs 3->32, 8 x 32->32, 32->27, with biases


def _lr_images(seed, count, height, width):
    pairs = [synthetic_pair(np.random.default_rng(seed + i), batch=1, size=max(height, width))
             for i in range(count)]
    return [np.round(lr[0, :height, :width] * 255).astype(np.uint8) for lr, _ in pairs]


@pytest.fixture(scope="session")
def int8_blob(qat_run):
    return tflite_lib.convert_qat(qat_run.q_model, SHAPE)


def test_int8_graph_is_fully_integer(int8_blob):
    info = tflite_lib.describe(int8_blob)
    assert info["ops"] == (["QUANTIZE"] + ["CONV_2D"] * 9 + ["ADD", "CONV_2D", "DEPTH_TO_SPACE"]
                           + ["QUANTIZE"]), info["ops"]
    assert set(info["tensor_dtypes"].values()) == {"uint8", "int8", "int32"}
    assert info["parameters"] == PARAMETERS
    for side, shape in (("inputs", [1, 48, 64, 3]), ("outputs", [1, 144, 192, 3])):
        (tensor,) = info[side]
        assert tensor["shape"] == shape and tensor["dtype"] == "uint8"
        assert tensor["scale"] == pytest.approx(1 / 255, rel=1e-6) and tensor["zero_point"] == 0


def test_biases_match_the_converters_int32_grid(qat_run, int8_blob):
    """The fake-quant bias of every conv equals the int32 bias the converter stored."""
    interpreter = litert.Interpreter(
        model_content=int8_blob,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    convs = [op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
    wrappers = quant.conv_wrappers(qat_run.q_model)
    assert len(convs) == len(wrappers)
    for op, wrapper in zip(convs, wrappers):
        bias_index = op["inputs"][2]
        stored = interpreter.get_tensor(bias_index).astype(np.float64)
        scales = tensors[bias_index]["quantization_parameters"]["scales"]
        _, bias = quant.latent_conv_weights(wrapper)
        emulated = wrapper.quantize_config.bias_quantizer(bias, False, {}).numpy()
        np.testing.assert_allclose(emulated, stored * scales, rtol=1e-6, atol=1e-9,
                                   err_msg=wrapper.name)


def test_int8_tflite_matches_keras_qat(qat_run, int8_blob):
    predictor = tflite_runner.TFLitePredictor(int8_blob, num_threads=2)
    images = [(f"synthetic{i}", lr) for i, lr in enumerate(_lr_images(10, 3, *SHAPE[1:3]))]
    report = parity.parity_report(qat_run.q_model, predictor, images)
    overall = report["overall"]
    print("INT8 TFLite (XNNPACK) vs Keras QAT:", overall)
    # The QAT model rounds every conv like XNNPACK (exact requantization): bit-identical outputs.
    assert overall["identical"] == 100.0, overall
    assert overall["within_1"] >= parity.PARITY_MIN_WITHIN_1, overall
    assert overall["max_diff"] <= parity.PARITY_MAX_DIFF, overall
    assert overall["ok"]


def test_int8_io_option(qat_run):
    info = tflite_lib.describe(tflite_lib.convert_qat(qat_run.q_model, (1, 16, 24, 3), io="int8"))
    assert "QUANTIZE" not in info["ops"]
    for tensor in info["inputs"] + info["outputs"]:
        assert tensor["dtype"] == "int8" and tensor["zero_point"] == -128
        assert tensor["scale"] == pytest.approx(1 / 255, rel=1e-6)


@pytest.fixture(scope="session")
def float_export(qat_run):
    twin = quant.float_twin(qat_run.q_model, fused_student())
    return twin, tflite_lib.convert_float(twin, SHAPE)


def test_float_export_matches_keras(qat_run, float_export):
    twin, blob = float_export
    for wrapper in quant.conv_wrappers(qat_run.q_model):
        for latent, copied in zip(quant.latent_conv_weights(wrapper),
                                  twin.get_layer(wrapper.layer.name).weights):
            np.testing.assert_array_equal(latent.numpy(), copied.numpy())
    x = np.random.default_rng(5).uniform(0, 1, SHAPE).astype(np.float32)
    interpreter = litert.Interpreter(model_content=blob, num_threads=2)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, twin(x, training=False).numpy(), atol=2e-5, rtol=1e-5)


def test_check_int8_rejects_a_float_model(float_export):
    _, blob = float_export
    with pytest.raises(ValueError, match=r"not fully int8.*non-integer tensors.*Ops: CONV_2D"):
        tflite_lib.check_int8(blob)


@pytest.mark.parametrize("size,tile,margin", [(10, 48, 12), (48, 48, 12), (49, 48, 12),
                                              (150, 48, 12), (1000, 360, 12), (64, 30, 10)])
def test_tile_spans_cover_the_image_with_clean_cores(size, tile, margin):
    spans = tflite_runner._spans(size, tile, margin)
    assert spans[0][1] == 0 and spans[-1][2] == size
    for (start, begin, end), following in zip(spans, spans[1:] + [None]):
        assert 0 <= start and (start + tile <= size or size <= tile) and begin < end
        assert begin == 0 or begin >= start + margin
        assert end == size or end <= start + tile - margin
        if following:
            assert following[1] == end


def test_tiled_run_equals_whole_image_run(qat_run, int8_blob):
    tiled = tflite_runner.TFLitePredictor(int8_blob, num_threads=2)
    assert tiled.tile_shape == (48, 64) and tiled.margin == 12  # receptive radius 10, plus 2
    whole = tflite_runner.TFLitePredictor(
        tflite_lib.convert_qat(qat_run.q_model, (1, None, None, 3)), num_threads=2)
    assert whole.dynamic
    (big,) = _lr_images(20, 1, 100, 150)  # 3 x 4 tiles
    np.testing.assert_array_equal(tiled(big), whole(big))
    # An image smaller than the tile is reflect-padded at its far edges; pixels beyond the receptive
    # radius from those edges are exact.
    (small,) = _lr_images(21, 1, 30, 40)
    keep = (30 - 10) * 3, (40 - 10) * 3
    np.testing.assert_array_equal(tiled(small)[:keep[0], :keep[1]],
                                  whole(small)[:keep[0], :keep[1]])


def test_ptq_export_is_fully_integer_and_close_to_float(qat_run, float_export):
    twin, _ = float_export
    samples = [lr[None].astype(np.float32) / 255 for lr in _lr_images(30, 4, *SHAPE[1:3])]
    blob = tflite_lib.convert_ptq(twin, samples, SHAPE)
    # The same ops as the QAT export (no CONCATENATION: the default student has no anchor; no
    # DEPTHWISE_CONV_2D: it is dense).
    assert set(tflite_lib.describe(blob)["ops"]) == tflite_lib.INT8_OPS - {"CONCATENATION",
                                                                            "DEPTHWISE_CONV_2D"}
    (lr,) = _lr_images(40, 1, *SHAPE[1:3])
    reference = parity.keras_uint8(twin, lr)
    stats = parity.parity_stats(reference, tflite_runner.TFLitePredictor(blob)(lr))
    assert stats["psnr"] > 30.0, stats


def test_write_export_files(qat_run, int8_blob, tmp_path):
    output = tmp_path / "out" / "student.tflite"
    summary = files.write_export(int8_blob, str(output), qat_run.q_model, {"note": "test"})
    assert output.read_bytes() == int8_blob
    written = json.loads((tmp_path / "out" / "student.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["parameters"] == PARAMETERS and written["note"] == "test"
    assert written["inputs"][0]["zero_point"] == 0
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]

    loaded = tf.saved_model.load(str(tmp_path / "out" / "student.savedmodel"))
    flags = [v for v in loaded.variables_ if v.dtype == tf.bool]
    # 10 weight flags (convs), 10 activation flags (9 ReLU outputs, the Add); phase C: all frozen.
    assert len(flags) == 20 and all(bool(v.numpy()) for v in flags)
    x = qat_run.pairs[0][0]
    served = loaded.signatures["serving_default"](lr=tf.constant(x))["sr"].numpy()
    # The SavedModel runs the QAT model as a graph, and graph mode may round a tie differently
    # from eager mode on some CPUs (1 of 27,648 values one level apart on a 2-core AVX2 machine,
    # none on AVX-512), so the twin is held to the parity claim, not to bit identity.
    stats = parity.parity_stats(metrics.to_uint8(qat_run.q_model(x, training=False).numpy()),
                                metrics.to_uint8(served))
    assert parity.parity_ok(stats) and stats["within_1"] == 100.0, stats
    # Writing again replaces the previous export.
    files.write_export(int8_blob, str(output), qat_run.q_model)
    assert "note" not in json.loads((tmp_path / "out" / "student.json").read_text())


def test_load_qat_model_and_export_workdir(qat_run, int8_blob, tmp_path):
    """A Stage-3 work directory (config.json + checkpoints/) round-trips through export_workdir."""
    run_dir = tmp_path / "stage3"
    # config.json as the code before the typed configs wrote it: such work directories still load.
    fileio.write_json(str(run_dir / workdir.CONFIG), {
        "stage": 3, "model": {"block_type": "mobileone", "channels": 32, "num_blocks": 8,
                              "num_branches": 4, "scale": 3},
        "loss": {"name": "stage2", "charbonnier_weight": 1.0, "dct_weight": 0.1, "kd_weight": 0.5,
                 "gamma": 20.0, "w_min": 0.1, "w_max": 1.0, "eps": 1e-3},
        "qat": {"phase_a": 0.4, "phase_b": 0.3, "calibration_batches": 32, "ema_decay": 0.99,
                "range_percentile": 99.99}, "lr_patch": 48, "batch_size": 16, "steps": 1500})
    checkpoint = tf.train.Checkpoint(model=qat_run.q_model, optimizer=qat_run.optimizer,
                                     step=tf.Variable(30, dtype=tf.int64))
    tf.train.CheckpointManager(checkpoint, str(run_dir / workdir.CHECKPOINTS), 1).save()

    run = workdir.WorkDir.open(str(run_dir))
    assert run.config.loss == configs.LossConfig() and run.config.qat == configs.QATConfig()
    assert run.config.model.arch == "student" and not run.config.model.anchor
    loaded = run.load("qat")
    x = qat_run.pairs[2][0]
    np.testing.assert_array_equal(loaded(x, training=False).numpy(),
                                  qat_run.q_model(x, training=False).numpy())
    output = tmp_path / "export" / "m.tflite"
    summary = files.export_workdir(str(run_dir), str(output), SHAPE)
    # The same model as converted in memory (the bytes differ only in generated tensor names).
    (lr,) = _lr_images(50, 1, *SHAPE[1:3])
    np.testing.assert_array_equal(tflite_runner.TFLitePredictor(str(output))(lr),
                                  tflite_runner.TFLitePredictor(int8_blob)(lr))
    assert summary["stage"] == 3 and summary["kind"] == "int8"


def _copy_qat_model(q_model, fused):
    copy = quant.build_qat_model(fused, QAT_CONFIG)
    copy(np.zeros((1, 8, 8, 3), np.float32), training=False)  # tfmot builds the weights lazily
    copy.set_weights(q_model.get_weights())
    return copy


def test_anchored_int8_tflite_is_fully_integer_and_matches_keras_qat(anchored_qat_run):
    q_model = anchored_qat_run.q_model
    blob = tflite_lib.convert_qat(q_model, SHAPE)
    info = tflite_lib.describe(blob)
    assert info["ops"] == (["QUANTIZE", "CONCATENATION", "CONCATENATION"] + ["CONV_2D"] * 3
                           + ["ADD", "CONV_2D", "ADD", "DEPTH_TO_SPACE", "QUANTIZE"]), info["ops"]
    assert info["parameters"] == anchored_qat_run.fused.count_params()
    (output,) = info["outputs"]
    assert output["scale"] == pytest.approx(1 / 255, rel=1e-6) and output["zero_point"] == 0
    images = [(f"synthetic{i}", lr) for i, lr in enumerate(_lr_images(20, 3, *SHAPE[1:3]))]
    overall = parity.parity_report(q_model, tflite_runner.TFLitePredictor(blob), images)["overall"]
    assert overall["identical"] == 100.0, overall

    # A residual grid of 1.5 output steps puts every odd residual level on a half-way point of
    # the output grid, where XNNPACK's fixed-point ADD and a float sum round apart: the Keras
    # model still matches because its anchor Add computes the runtime's integers.
    tricky = _copy_qat_model(q_model, anchored_qat_run.fused)
    tail = tricky.get_layer("quant_tail").quantize_config.output_vars()
    tail["min_var"].assign(-128 * 1.5 / 255)
    tail["max_var"].assign(127 * 1.5 / 255)
    predictor = tflite_runner.TFLitePredictor(tflite_lib.convert_qat(tricky, SHAPE))
    overall = parity.parity_report(tricky, predictor, images)["overall"]
    assert overall["identical"] == 100.0, overall
    tricky.get_layer("quant_anchor_add").layer.runtime_rounding = False
    overall = parity.parity_report(tricky, predictor, images)["overall"]
    assert overall["identical"] < 99.0 and overall["max_diff"] == 1, overall


# The INT8 graph of each of conftest.ARCH_CONFIGS: every conv (and depthwise conv) one int8 op.
ARCH_OPS = {
    "abpn": (["QUANTIZE", "CONCATENATION", "CONCATENATION"] + ["CONV_2D"] * 7
             + ["ADD", "DEPTH_TO_SPACE", "QUANTIZE"]),
    "fsrcnn": ["QUANTIZE"] + ["CONV_2D"] * 8 + ["DEPTH_TO_SPACE", "QUANTIZE"],
    "repdw": (["QUANTIZE", "CONV_2D"] + ["DEPTHWISE_CONV_2D", "CONV_2D"] * 2
              + ["ADD", "CONV_2D", "DEPTH_TO_SPACE", "QUANTIZE"]),
}
ARCH_PARAMETERS = {"abpn": 42_539, "fsrcnn": 24_535,
                   "repdw": 3 * 9 * 16 + 16 + 2 * (9 * 16 + 16 + 16 * 16 + 16) + 16 * 9 * 27 + 27}


def test_int8_tflite_of_every_arch_is_fully_integer_and_matches_keras_qat(arch_qat_run):
    """ABPN, FSRCNN and the depthwise student export fully int8, bit-identical under XNNPACK."""
    q_model = arch_qat_run.q_model
    blob = tflite_lib.convert_qat(q_model, SHAPE)
    info = tflite_lib.check_int8(blob)
    assert info["ops"] == ARCH_OPS[arch_qat_run.arch], info["ops"]
    assert info["parameters"] == arch_qat_run.fused.count_params() == (
        ARCH_PARAMETERS[arch_qat_run.arch])
    for tensor in info["inputs"] + info["outputs"]:
        assert tensor["dtype"] == "uint8" and tensor["zero_point"] == 0
        assert tensor["scale"] == pytest.approx(1 / 255, rel=1e-6)
    images = [(f"synthetic{i}", lr) for i, lr in enumerate(_lr_images(60, 3, *SHAPE[1:3]))]
    overall = parity.parity_report(q_model, tflite_runner.TFLitePredictor(blob), images)["overall"]
    print(f"{arch_qat_run.arch}: INT8 TFLite (XNNPACK) vs Keras QAT:", overall)
    assert overall["identical"] == 100.0, overall


@pytest.mark.parametrize("arch_qat_run", ["repdw"], indirect=True)
def test_depthwise_filters_keep_the_qat_models_per_channel_grids(arch_qat_run):
    """Each depthwise channel's int8 scale is its frozen QAT range / 127, also where that range
    is wider than the channel's weights (the converter must not re-derive it from them)."""
    tricky = _copy_qat_model(arch_qat_run.q_model, arch_qat_run.fused)
    wrapper = tricky.get_layer("quant_block_0_dw")
    ranges = wrapper.quantize_config.kernel_quantizer.built_vars[0]
    assert ranges["max_var"].shape == (16,) and bool(ranges["frozen"])  # per channel, phase C
    widened = ranges["max_var"].numpy() * np.where(np.arange(16) % 2, 1.5, 1.0)
    ranges["min_var"].assign(-widened)
    ranges["max_var"].assign(widened)
    blob = tflite_lib.convert_qat(tricky, SHAPE)
    interpreter = litert.Interpreter(
        model_content=blob,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    depthwise = [op for op in interpreter._get_ops_details()
                 if op["op_name"] == "DEPTHWISE_CONV_2D"]
    filters = tensors[depthwise[0]["inputs"][1]]
    assert list(filters["shape"]) == [1, 3, 3, 16]
    np.testing.assert_allclose(filters["quantization_parameters"]["scales"], widened / 127,
                               rtol=1e-6)
    images = [(f"synthetic{i}", lr) for i, lr in enumerate(_lr_images(70, 2, *SHAPE[1:3]))]
    overall = parity.parity_report(tricky, tflite_runner.TFLitePredictor(blob), images)["overall"]
    assert overall["identical"] == 100.0, overall


def _int8_add_model(ranges, output_range):
    """A TFLite model of one int8 ADD of two uint8 inputs "a" and "b" with the given ranges."""
    @tf.function
    def add(a, b):
        quantized = [tf.quantization.fake_quant_with_min_max_vars(x, *r)
                     for x, r in zip((a, b), ranges)]
        return tf.quantization.fake_quant_with_min_max_vars(sum(quantized), *output_range)

    spec = [tf.TensorSpec([1, 256, 256, 1], tf.float32, name=n) for n in ("a", "b")]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([add.get_concrete_function(*spec)])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = converter.inference_output_type = tf.uint8
    return converter.convert()


@pytest.mark.parametrize("ranges, output_range, halfway", [
    # The anchor Add: anchor on the output grid, residual steps of 1.5 or 1.25 output steps (many
    # sums on half-way points), or of a learned-looking width.
    (((0.0, 1.0), (-128 * 1.5 / 255, 127 * 1.5 / 255)), (0.0, 1.0), True),
    (((0.0, 1.0), (-60 * 1.25 / 255, 195 * 1.25 / 255)), (0.0, 1.0), True),
    (((0.0, 1.0), (-0.813, 0.644)), (0.0, 1.0), False),
    (((0.0, 1.7), (-0.4, 1.1)), (-0.3, 2.2), False),  # any three grids
])
def test_runtime_add_equals_xnnpacks_int8_add(ranges, output_range, halfway):
    """RuntimeAdd's sum equals LiteRT's XNNPACK ADD on every pair of uint8 input levels."""
    interpreter = litert.Interpreter(model_content=_int8_add_model(ranges, output_range))
    interpreter.allocate_tensors()
    levels = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    for detail in interpreter.get_input_details():
        i = "ab".index(detail["name"].rsplit("_", 1)[-1].split(":")[0])
        interpreter.set_tensor(detail["index"], levels[i].astype(np.uint8)[None, ..., None])
    interpreter.invoke()
    (output,) = interpreter.get_output_details()
    expected = interpreter.get_tensor(output["index"])[0, ..., 0]

    def range_vars(low, high):
        return {"min_var": tf.Variable(low, dtype=tf.float32),
                "max_var": tf.Variable(high, dtype=tf.float32)}

    values, variables = [], []  # each input's levels on its grid, as the QAT model holds them
    for level, r in zip(levels, ranges):
        scale = (r[1] - r[0]) / 255
        values.append(tf.quantization.fake_quant_with_min_max_vars(
            tf.constant(level * scale + r[0], tf.float32), *r))
        variables.append(range_vars(*r))
    layer = RuntimeAdd()
    layer.link(variables, range_vars(*output_range))
    s_out = (output_range[1] - output_range[0]) / 255
    got = np.round(layer(values).numpy() / s_out - output_range[0] / s_out).astype(np.int64)
    np.testing.assert_array_equal(got, expected)
    # Fake-quant of the float sum (what a plain Add would train with) misses the half-way cases:
    # measured 2,513 of the 65,536 level pairs for the 1.25 grid, 7.8 % for the 1.5 grid.
    layer.runtime_rounding = False
    plain = tf.quantization.fake_quant_with_min_max_vars(layer(values), *output_range).numpy()
    plain = np.round(plain / s_out - output_range[0] / s_out).astype(np.int64)
    assert np.any(plain != expected) == halfway
