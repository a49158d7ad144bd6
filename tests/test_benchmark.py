"""The speed benchmark's parts (MACs, latency statistics, kernel agreement, ratios, Markdown) and
`keras-sr-benchmark --only=tflite` on a tiny shape; `keras-sr-parity --kernels` and the SavedModel
twin's agreement. No speed is asserted: targets live in the benchmark, not in tests.
"""
import json
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl import app
from conftest import run_tool, smooth_image

from keras_sr import benchmark, configs, quant
from keras_sr.common import machine
from keras_sr.export import files, parity, tflite_lib, tflite_runner

SHAPE = (1, 32, 48, 3)


@pytest.fixture(scope="module")
def tiny_int8():
    """An untrained, calibrated INT8 student (8 channels, 2 blocks) at SHAPE: .tflite bytes."""
    keras.utils.set_random_seed(2)
    model_config = configs.ModelConfig(block_type="plain", channels=8, num_blocks=2)
    q_model = quant.qat_checkpoint_model(model_config, configs.QATConfig())
    rng = np.random.default_rng(0)
    batch = np.stack([smooth_image(rng, 32, 48) for _ in range(2)]).astype(np.float32) / 255.0
    quant.calibrate(q_model, [batch], configs.QATConfig(calibration_batches=1))
    return q_model, model_config, tflite_lib.convert_qat(q_model, SHAPE)


def test_count_macs_equals_a_hand_count():
    model = keras.Sequential([
        keras.Input((8, 10, 3)),
        keras.layers.Conv2D(4, 3, padding="same"),                           # 8*10*4 * 3*3*3
        keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2),  # 8*10*8 * 3*3
        keras.layers.Conv2D(5, (1, 3), strides=2, padding="same"),           # 4*5*5 * 1*3*8
        keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same"),       # 4*5*5 * 3*3*2
        keras.layers.Conv2D(6, 3, padding="same", groups=2)])                # 8*10*6 * 3*3*1
    blob = tflite_lib.convert_float(model, (1, 8, 10, 3))
    info = tflite_lib.describe(blob)
    assert info["ops"] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "TRANSPOSE_CONV", "CONV_2D"]
    hand = 8 * 10 * 4 * 27 + 8 * 10 * 8 * 9 + 4 * 5 * 5 * 3 * 8 + 4 * 5 * 5 * 9 * 2 + 8 * 10 * 6 * 9
    assert info["macs"] == tflite_lib.count_macs(blob) == hand == 22_920
    # The converter adds the transposed conv's 2 biases with a separate ADD: they are not counted.
    assert info["parameters"] == model.count_params() - 2

    one_conv = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, padding="same")])
    dynamic = tflite_lib.convert_float(one_conv, (1, None, None, 3))
    assert tflite_lib.describe(dynamic)["macs"] is None
    assert tflite_lib.count_macs(dynamic, (1, 8, 10, 3)) == 8 * 10 * 4 * 27
    assert tflite_lib.count_macs(dynamic, (1, 16, 10, 3)) == 2 * 8 * 10 * 4 * 27
    with pytest.raises(ValueError, match="dynamic input shape"):
        tflite_lib.count_macs(dynamic)


def test_count_macs_of_the_student_is_its_weight_count_per_pixel(tiny_int8):
    _, _, blob = tiny_int8
    info = tflite_lib.describe(blob)
    # A 3x3 "same" conv net at stride 1 does one MAC per filter weight per LR pixel.
    biases = 8 * 3 + 27
    assert info["macs"] == (info["parameters"] - biases) * SHAPE[1] * SHAPE[2]


def test_latency_stats_excludes_warmup_and_orders_the_statistics():
    clock = [0.0]
    durations = iter([50.0, 40.0, 0.003, 0.001, 0.010, 0.002])  # seconds: 2 warm-up, 4 timed

    def run_once():
        clock[0] += next(durations)

    stats = tflite_runner.latency_stats(run_once, runs=4, warmup=2, timer=lambda: clock[0])
    assert stats["min_ms"] == pytest.approx(1.0)
    assert stats["median_ms"] == pytest.approx(2.5)
    assert stats["max_ms"] == pytest.approx(10.0)
    assert (stats["runs"], stats["warmup"]) == (4, 2)
    with pytest.raises(StopIteration):  # exactly warmup + runs calls were made
        run_once()
    with pytest.raises(ValueError, match="runs >= 1"):
        tflite_runner.latency_stats(run_once, runs=0)


def test_interleaved_latency_takes_turns_and_pools_every_round():
    """Every key is rebuilt and warmed up each round and timed for its share of the runs, in
    turn, so a load change between rounds reaches every key."""
    calls, clock = [], [0.0]

    def maker(key, ms):
        def make():
            calls.append(f"make {key}")

            def run_once():
                calls.append(key)
                clock[0] += ms / 1000.0 * (1 + calls.count("make a"))  # slower each round
            return run_once
        return make

    stats = benchmark.interleaved_latency({"a": maker("a", 1.0), "b": maker("b", 2.0)}, runs=5,
                                          warmup=1, rounds=2, timer=lambda: clock[0])
    # Round 1: 3 timed calls each (5 = 3 + 2), round 2: 2; one warm-up call per round.
    assert calls == ["make a", "a", "a", "a", "a", "make b", "b", "b", "b", "b",
                     "make a", "a", "a", "a", "make b", "b", "b", "b"]
    assert stats["a"]["runs"] == stats["b"]["runs"] == 5 and stats["a"]["warmup"] == 1
    # Round 1 ran at 2x, round 2 at 3x a call's base time; b's ratio to a stays 2 throughout.
    assert (stats["a"]["min_ms"], stats["a"]["max_ms"]) == pytest.approx((2.0, 3.0))
    assert (stats["b"]["min_ms"], stats["b"]["max_ms"]) == pytest.approx((4.0, 6.0))
    assert stats["b"]["median_ms"] == pytest.approx(2 * stats["a"]["median_ms"])


def test_time_tflite_of_a_tiny_model(tiny_int8):
    _, _, blob = tiny_int8
    for kernels in tflite_runner.KERNELS:
        stats = tflite_runner.time_tflite(blob, 1, runs=3, warmup=1, kernels=kernels)
        assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]
    with pytest.raises(ValueError, match="kernels must be one of"):
        tflite_runner.time_tflite(blob, kernels="gpu")


def test_kernel_agreement_of_builtin_and_xnnpack(tiny_int8):
    _, _, blob = tiny_int8
    rng = np.random.default_rng(3)
    # One image smaller than the model's input, one larger: both are fitted to it.
    images = [smooth_image(rng, 20, 30), smooth_image(rng, 40, 64)]
    stats = parity.kernel_agreement(blob, images, num_threads=1)
    assert 0.0 <= stats["identical"] <= stats["within_1"] <= 100.0
    assert stats["max_diff"] >= 0
    for kernels in tflite_runner.KERNELS:
        same = parity.kernel_agreement(blob, images, 1, reference=kernels, candidate=kernels)
        assert (same["identical"], same["max_diff"]) == (100.0, 0), kernels
    # The same values as the predictors give one by one.
    outputs = [tflite_runner.TFLitePredictor(blob, 1, kernels=k)(
        tflite_lib.fit_to_shape(images[1], 32, 48)) for k in ("xnnpack", "builtin")]
    one = parity.kernel_agreement(blob, images[1:], 1)
    assert one["identical"] == pytest.approx(100.0 * np.mean(outputs[0] == outputs[1]))


def _rows():
    """Latency rows of a made-up run: the student at 10 ms INT8 / 30 ms FP32, ABPN at 4 ms."""
    macs = {"student": 2_000_000_000, "abpn": 1_000_000_000, "ceiling_c32": 3_000_000_000,
            "ceiling_c128": 8_000_000_000}
    rows = []
    for model, precision, ms in (("student", "int8", 10.0), ("student", "fp32", 30.0),
                                 ("abpn", "int8", 4.0), ("ceiling_c32", "int8", 6.0),
                                 ("ceiling_c128", "int8", 10.0)):
        stats = {"median_ms": ms, "min_ms": ms, "max_ms": ms, "runs": 1, "warmup": 0}
        rows.append(benchmark._row(model, precision, "xnnpack", SHAPE, 2, stats, macs[model]))
    stats = {"median_ms": 1.0, "min_ms": 1.0, "max_ms": 2.0, "runs": 2, "warmup": 0}
    rows.append(benchmark._row("bicubic", "uint8", "opencv", SHAPE, 2, stats))
    return benchmark.add_ceiling_fractions(rows)


def test_ceiling_fractions_and_headline_ratios():
    rows = _rows()
    student = rows[0]
    assert student["gmacs_per_s"] == pytest.approx(200.0)
    # Ceilings: 3 GMAC in 6 ms = 500 GMAC/s, 8 GMAC in 10 ms = 800 GMAC/s.
    assert student["fraction_of_ceiling_c32"] == pytest.approx(0.4)
    assert student["fraction_of_ceiling_c128"] == pytest.approx(0.25)
    assert rows[1]["fraction_of_ceiling_c32"] is None  # FP32 against an int8 ceiling: no
    assert rows[-1]["gmacs_per_s"] is None
    (ratio,) = benchmark.headline_ratios(rows)
    assert ratio["student_int8_over_abpn_int8"] == pytest.approx(2.5)
    assert ratio["student_int8_speedup"] == pytest.approx(3.0)
    assert ratio["student_fraction_of_ceiling_c32"] == pytest.approx(0.4)
    (alone,) = benchmark.headline_ratios([r for r in rows if r["model"] != "abpn"])
    assert alone["student_int8_over_abpn_int8"] is None


def test_markdown_names_the_cpu_and_holds_the_tables():
    info = machine.machine_info()
    rows = _rows()
    result = {"runs": 1, "warmup": 0, "latency": rows, "ratios": benchmark.headline_ratios(rows),
              "kernel_agreement": [{"model": "student", "shape": list(SHAPE), "images": 2,
                                    "identical": 97.5, "within_1": 100.0, "max_diff": 1}],
              "errors": {"fsrcnn": "ValueError: no QAT config"}}
    text = benchmark.to_markdown({"tflite": result, "pipeline": {"examples_per_s": 1234.0}}, info)
    assert f"CPU: {info['text']}" in text.splitlines()
    assert ("| student | int8 | xnnpack | 32x48 | 2 | 10.00 | 10.00-10.00 | 2.000 | 200.0 | 0.400 "
            "| 0.250 |") in text
    assert "| 32x48 | 2 | 10.00 | 2.500 | 0.400 | 0.250 | 3.00 |" in text
    assert "| student | 32x48 | 2 | 97.500 | 100.000 | 1 |" in text
    assert "Not built: fsrcnn: ValueError" in text and "1,234 examples/s" in text


def test_model_specs_follow_the_model_config_fields():
    names = [name for name, _ in benchmark.model_specs()]
    assert names[:2] == ["student", "student_anchor"]
    has_arch = "arch" in configs.ModelConfig.__dataclass_fields__
    assert ("abpn" in names) == ("fsrcnn" in names) == has_arch


def _finite_numbers(value, path="$"):
    """Every number in a JSON value, with its path; fails on NaN or infinity."""
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _finite_numbers(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in _finite_numbers(v, f"{path}[{i}]")]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert math.isfinite(value), path
        return [value]
    return []


def test_benchmark_binary_tflite_section(tiny_int8, tmp_path, capsys, monkeypatch):
    _, model_config, blob = tiny_int8
    # The tiny student stands in for the default one (whose QAT build and conversion are slow).
    monkeypatch.setattr(benchmark, "STUDENTS", (("student", model_config.to_dict()),))
    (tmp_path / "tiny.tflite").write_bytes(blob)
    out, table = tmp_path / "bench.json", tmp_path / "bench.md"
    run_tool("benchmark", "--only=tflite", "--shapes=32x48", "--threads=1", "--runs=2",
             "--warmup=1", "--models=student", f"--tflite=tiny={tmp_path / 'tiny.tflite'}",
             f"--json={out}", f"--markdown={table}")
    written = json.loads(out.read_text())
    result = written["results"]["tflite"]
    assert len(_finite_numbers(written)) > 50
    assert sorted(result["models"]) == ["student", "tiny"] and not result["errors"]
    # Stem 3->8, two 8->8 blocks, tail 8->27, all 3x3 with biases.
    assert result["models"]["student"]["parameters"] == 224 + 2 * 584 + 1971
    kinds = {(r["model"], r["precision"], r["kernels"]) for r in result["latency"]}
    assert kinds == {("student", "int8", "xnnpack"), ("student", "int8", "builtin"),
                     ("student", "fp32", "xnnpack"), ("tiny", "int8", "xnnpack"),
                     ("tiny", "int8", "builtin"), ("ceiling_c32", "int8", "xnnpack"),
                     ("ceiling_c128", "int8", "xnnpack"), ("bicubic", "uint8", "opencv")}
    student = next(r for r in result["latency"] if r["model"] == "student")
    # One MAC per filter weight (parameters less biases) per LR pixel.
    weights = result["models"]["student"]["parameters"] - 8 * 3 - 27
    assert student["macs"] == weights * 32 * 48 == tflite_lib.count_macs(blob)
    assert result["int8_speedup"] == result["headline"]["student_int8_speedup"] > 0
    assert [r["model"] for r in result["kernel_agreement"]] == ["student", "tiny"]
    assert written["machine"] == machine.machine_info()
    assert f"CPU: {written['machine']['text']}" in table.read_text()
    assert "| ceiling_c128 | int8 | xnnpack | 32x48 | 1 |" in capsys.readouterr().out
    with pytest.raises(app.UsageError, match="--models: \\['vdsr'\\] cannot be built here"):
        run_tool("benchmark", "--only=tflite", "--models=vdsr")


def test_parity_binary_kernels_and_savedmodel_twin(tiny_int8, tmp_path):
    """A Stage-3 work directory of the tiny student: export (JSON names the kernels of the
    bit-identity claim), then keras-sr-parity with each kernel set, reporting the twin."""
    from keras_sr import workdir
    from keras_sr.common import fileio

    q_model, model_config, _ = tiny_int8
    run_dir = tmp_path / "stage3"
    fileio.write_json(str(run_dir / workdir.CONFIG),
                      configs.TrainConfig(stage=3, model=model_config).to_dict())
    tf.train.CheckpointManager(tf.train.Checkpoint(model=q_model),
                               str(run_dir / workdir.CHECKPOINTS), 1).save()
    output = tmp_path / "export" / "m.tflite"
    summary = files.export_workdir(str(run_dir), str(output), SHAPE)
    assert summary["bit_identical_kernels"] == ["xnnpack"]
    assert summary["macs"] == tflite_lib.count_macs(output.read_bytes())

    reports = {}
    for kernels in tflite_runner.KERNELS:
        report_path = tmp_path / f"parity_{kernels}.json"
        try:
            run_tool("parity", f"--workdir={run_dir}", f"--tflite={output}", "--data=builtin:val",
                     f"--kernels={kernels}", "--num_threads=1", f"--json={report_path}")
        except SystemExit as e:  # the builtin kernels may miss the claim: exit status 1
            assert kernels == "builtin" and e.code == 1
        reports[kernels] = json.loads(report_path.read_text())
    xnnpack, builtin = reports["xnnpack"], reports["builtin"]
    # Bit identity itself is test_export's; here the claim and which kernels report what.
    assert xnnpack["overall"]["ok"] and xnnpack["bit_identical_expected"]
    assert builtin["kernels"].startswith("LiteRT builtin") and not builtin["bit_identical_expected"]
    assert builtin["overall"]["identical"] <= 100.0
    # The twin against the TFLite model: within 1 level (graph-mode rounding), as documented.
    twin = xnnpack["savedmodel"]
    assert twin["path"] == str(output)[:-len(".tflite")] + ".savedmodel"
    assert twin["within_1"] == 100.0 and twin["max_diff"] <= 1 and 0 < twin["identical"] <= 100


def test_train_rates_time_every_form_in_turn():
    """Interleaved rounds: every form gets a rate and a ratio; plain is the deploy graph itself."""
    from keras_sr.configs import ModelConfig
    from keras_sr.train import speed

    rates = speed.student_train_rates(ModelConfig(channels=4, num_blocks=1, num_branches=2),
                                      block_types=("plain", "mobileone_linear"), steps=3,
                                      warmup=1, rounds=2, batch_size=2, lr_patch=8,
                                      steps_per_call=2)
    assert set(rates) == {"deploy_form_steps_per_s", "plain_steps_per_s",
                          "mobileone_linear_steps_per_s", "plain_ratio_to_deploy",
                          "mobileone_linear_ratio_to_deploy", "deploy_form_2_per_call_steps_per_s",
                          "deploy_form_2_per_call_ratio_to_deploy"}
    assert all(np.isfinite(v) and v > 0 for v in rates.values())
    assert rates["plain_ratio_to_deploy"] == pytest.approx(
        rates["plain_steps_per_s"] / rates["deploy_form_steps_per_s"])


def test_several_steps_per_call_are_the_same_steps():
    """One call of a 3-step loop updates the weights as three calls of one step do."""
    from keras_sr import models
    from keras_sr.train import speed

    fields = dict(channels=4, num_blocks=1, reparameterized=True)
    looped, single = models.build_student(**fields), models.build_student(**fields)
    single.set_weights(looped.get_weights())
    start = looped.get_weights()
    speed._train_step(looped, 2, 8, False, steps_per_call=3)()
    one = speed._train_step(single, 2, 8, False)
    for _ in range(3):
        one()
    assert max(np.abs(a - b).max() for a, b in zip(looped.get_weights(), start)) > 1e-5
    for a, b in zip(looped.get_weights(), single.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
