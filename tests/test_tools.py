"""Every binary once, in this process, on its smallest input; Stage 3 through the trainer.

The binaries run as installed (`keras_sr_tools.*`, see `conftest.run_tool`). The Stage-3 chain
trains Stage 1 and Stage 3 with the smoke configs through `keras-sr-train`, kills a second Stage-3
run halfway and resumes it, then exports and checks the INT8 model of that run.
"""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import app, flags
from conftest import Killed, kill_before_step, require_shared, run_tool

from keras_sr import configs, evaluate, models, workdir
from keras_sr.export import tflite_lib


@pytest.fixture(scope="module")
def stage3_runs(tiny_data, tmp_path_factory):
    """Stage 1, then Stage 3 twice from it: once straight through, once killed and resumed."""
    records, val = tiny_data
    root = tmp_path_factory.mktemp("stage3")
    common = ["--config=smoke", f"--train_records={records}", f"--val_data={val}"]
    run_tool("train", "--stage=1", f"--workdir={root / 's1'}", *common)
    stage3 = [*common, "--stage=3", f"--init_from={root / 's1'}"]
    run_tool("train", f"--workdir={root / 'straight'}", *stage3)
    with pytest.MonkeyPatch.context() as monkeypatch:
        # The smoke config checkpoints every 3 of its 6 steps: ckpt-3 is the last one written.
        kill_before_step(monkeypatch, 5)
        with pytest.raises(Killed, match="before step 5"):
            run_tool("train", f"--workdir={root / 'resumed'}", *stage3)
    assert workdir.WorkDir.open(root / "resumed").checkpoint.endswith("ckpt-3")
    run_tool("train", f"--workdir={root / 'resumed'}", *stage3)
    return root, val


def test_stage3_resumed_run_ends_where_the_uninterrupted_one_does(stage3_runs):
    root, _ = stage3_runs
    straight, resumed = (workdir.WorkDir.open(root / name) for name in ("straight", "resumed"))
    assert straight.checkpoint.endswith("ckpt-6") and resumed.checkpoint.endswith("ckpt-6")
    assert json.loads((root / "resumed" / "flags.json").read_text())["stage"] == "3"
    a, b = straight.load("qat"), resumed.load("qat")
    # Weights, activation ranges, freeze flags: everything the checkpoint holds.
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wb, wa, rtol=1e-6, atol=1e-7)
    metrics_a, metrics_b = (json.loads((root / n / "metrics.json").read_text())
                            for n in ("straight", "resumed"))
    assert metrics_b["step"] == metrics_a["step"] == 6
    assert metrics_b["val_psnr_y"] == pytest.approx(metrics_a["val_psnr_y"], abs=1e-4)


def test_export_check_int8_and_parity_of_the_stage3_run(stage3_runs, capsys):
    root, val = stage3_runs
    output = root / "export" / "student.tflite"
    run_tool("export_tflite", f"--workdir={root / 'resumed'}", f"--output={output}",
             "--input_shape=1,32,40,3")
    info = tflite_lib.check_int8(output.read_bytes())
    assert info["parameters"] == 82_683
    # Exporting again (in this process, after other models were built) writes the same bytes.
    written = output.read_bytes(), output.with_suffix(".json").read_bytes()
    run_tool("export_tflite", f"--workdir={root / 'resumed'}", f"--output={output}",
             "--input_shape=1,32,40,3")
    assert (output.read_bytes(), output.with_suffix(".json").read_bytes()) == written
    assert info["inputs"][0]["shape"] == [1, 32, 40, 3]
    assert info["inputs"][0]["scale"] == pytest.approx(1 / 255)
    summary = json.loads(output.with_suffix(".json").read_text())
    assert summary["flags"]["input_shape"] == ["1", "32", "40", "3"] and summary["stage"] == 3

    report_path = root / "parity.json"
    run_tool("parity", f"--workdir={root / 'resumed'}", f"--tflite={output}", f"--data={val}",
             f"--json={report_path}")
    report = json.loads(report_path.read_text())
    # The fake-quant graph rounds like XNNPACK: the tiled INT8 model reproduces it exactly.
    assert report["overall"]["ok"] and report["overall"]["max_diff"] <= 3, report["overall"]
    assert "meets the claim" in capsys.readouterr().out

    # The tiled fixed-shape INT8 model scores what its own evaluation says it scores.
    scored = evaluate.evaluate_benchmark(evaluate.make_predictor(str(output)), val)
    run_tool("evaluate", f"--model={output}", f"--data={val}", f"--json={root / 'eval.json'}")
    again = json.loads((root / "eval.json").read_text())
    assert again["psnr_y"] == pytest.approx(scored["psnr_y"], abs=1e-9)


def test_parity_and_export_refuse_a_stage1_run(stage3_runs):
    root, val = stage3_runs
    with pytest.raises(app.UsageError, match=r"--workdir: .* Stage-1 \(FP32\) run: the 'qat' form"):
        run_tool("parity", f"--workdir={root / 's1'}", f"--data={val}")
    with pytest.raises(app.UsageError, match=r"--workdir=.*s1: .*Stage-1 \(FP32\) run: the 'qat' "
                                             "form needs a Stage-3"):
        run_tool("export_tflite", f"--workdir={root / 's1'}", f"--output={root / 'x.tflite'}")
    assert not (root / "x.tflite").exists()


def test_train_validates_its_flags_before_writing_anything(tiny_data, tmp_path):
    records, _ = tiny_data
    target = tmp_path / "never"
    with pytest.raises(app.UsageError, match=r"bad training flags: qat phase_a=2.0, phase_b=0.33: need two"):
        run_tool("train", "--stage=3", "--config=smoke", f"--workdir={target}",
                 f"--train_records={records}", "--qat_phase_a=2")
    with pytest.raises(app.UsageError, match="--qat_\\* flags apply to --stage=3 only"):
        run_tool("train", "--stage=1", f"--workdir={target}", f"--train_records={records}",
                 "--qat_phase_a=0.5")
    with pytest.raises(app.UsageError, match="--anchor applies to --stage=1 only"):
        run_tool("train", "--stage=2", f"--workdir={target}", f"--train_records={records}",
                 "--anchor")
    with pytest.raises(flags.IllegalFlagValueError, match="value should be one of"):
        run_tool("train", "--config=huge", f"--workdir={target}", f"--train_records={records}")
    with pytest.raises(app.UsageError, match="--train_records: no TFRecord files found for "
                                             "'nothing\\*.tfrecord'"):
        run_tool("train", "--stage=1", f"--workdir={target}", "--train_records=nothing*.tfrecord")
    with pytest.raises(app.UsageError, match=f"--init_from={tmp_path}: .* no checkpoint"):
        run_tool("train", "--stage=3", f"--workdir={target}", f"--train_records={records}",
                 f"--init_from={tmp_path}")
    assert not target.exists()


def test_train_refuses_a_workdir_of_another_stage_or_model(stage3_runs, tiny_data):
    """A rerun resumes a work directory's checkpoints, so it must be the same stage and model."""
    root, _ = stage3_runs
    records, _ = tiny_data
    with pytest.raises(app.UsageError, match=r"--workdir=.*s1 holds a Stage-1 run of another model "
                                             r"or stage \(block_type: '\w+' there, 'plain' now"):
        run_tool("train", "--stage=1", "--config=smoke", f"--workdir={root / 's1'}",
                 f"--train_records={records}", "--block_type=plain")
    with pytest.raises(app.UsageError, match=r"s1 holds a Stage-1 run .*\(Stage 3 now\)"):
        run_tool("train", "--stage=3", "--config=smoke", f"--workdir={root / 's1'}",
                 f"--train_records={records}", f"--init_from={root / 's1'}")


# Slow (over 10 s on a fast 2-core CPU): kept out of the default run (`--run-slow`).
@pytest.mark.slow
def test_train_arch_trains_a_baseline_through_stage3_and_export(tiny_data, tmp_path):
    """--arch=abpn: Stage 1 builds ABPN at its paper's sizes; Stage 3 and export take it from there."""
    records, _ = tiny_data
    common = ["--config=smoke", f"--train_records={records}"]
    run_tool("train", "--stage=1", "--arch=abpn", f"--workdir={tmp_path / 's1'}", *common)
    stage1 = workdir.WorkDir.open(tmp_path / "s1")
    assert stage1.config.model == configs.ModelConfig.for_arch("abpn")
    assert models.student_config(stage1.load("training"))["arch"] == "abpn"
    run_tool("train", "--stage=3", f"--init_from={tmp_path / 's1'}", f"--workdir={tmp_path / 's3'}",
             *common)
    output = tmp_path / "abpn.tflite"
    run_tool("export_tflite", f"--workdir={tmp_path / 's3'}", f"--output={output}",
             "--input_shape=1,16,16,3")
    info = tflite_lib.check_int8(output.read_bytes())
    assert info["parameters"] == 42_539 and info["ops"].count("CONV_2D") == 7
    with pytest.raises(app.UsageError, match="--arch applies to --stage=1 only"):
        run_tool("train", "--stage=3", "--arch=abpn", f"--workdir={tmp_path / 'x'}", *common)
    with pytest.raises(app.UsageError, match="arch 'abpn' is plain convolutions"):
        run_tool("train", "--stage=1", "--arch=abpn", "--block_type=mobileone",
                 f"--workdir={tmp_path / 'x'}", *common)
    assert not (tmp_path / "x").exists()


def test_evaluate_binary_writes_json_and_table(tmp_path, capsys):
    data = require_shared("data", "Set5")
    out = tmp_path / "set5.json"
    run_tool("evaluate", "--model=bicubic", f"--data={data}", f"--json={out}")
    result = json.loads(out.read_text())
    assert result["psnr_y"] == pytest.approx(30.40, abs=0.01)
    assert [m["name"] for m in result["per_image"]] == ["baby", "bird", "butterfly", "head", "woman"]
    assert result["flags"]["model"] == "bicubic"
    stdout = capsys.readouterr().out
    assert "mean" in stdout and "30.40" in stdout
    with pytest.raises(flags.IllegalFlagValueError, match="--data must be an existing folder"):
        run_tool("evaluate", "--model=bicubic", f"--data={tmp_path / 'missing'}")


def test_prepare_data_binary_writes_benchmark_layout_and_records(tmp_path):
    layout, records = tmp_path / "val", tmp_path / "records"
    run_tool("prepare_data", "--source=builtin:val", f"--output={layout}", "--format=benchmark")
    run_tool("prepare_data", "--source=builtin:val", f"--output={records}", "--num_shards=2",
             "--num_workers=1")
    assert sorted(p.name for p in (layout / "HR").iterdir()) == ["chelsea.png", "coffee.png"]
    summary = json.loads((records / "summary.json").read_text())
    assert (summary["num_examples"], summary["num_shards"], summary["skipped"]) == (2, 2, [])
    assert json.loads((records / "flags.json").read_text())["num_shards"] == 2
    # The LR files are the MATLAB rule's: bicubic upscaling of them scores the known value.
    chelsea = evaluate.evaluate_benchmark(evaluate.bicubic_predictor(3), str(layout))
    assert chelsea["num_images"] == 2 and 25.0 < chelsea["psnr_y"] < 40.0


def test_benchmark_binary_times_the_input_pipeline(tmp_path, capsys):
    records, out = tmp_path / "records", tmp_path / "bench.json"
    run_tool("prepare_data", "--source=builtin:val", f"--output={records}", "--num_shards=1")
    run_tool("benchmark", "--only=pipeline", f"--train_records={records}", f"--json={out}")
    written = json.loads(out.read_text())
    assert written["flags"]["only"] == ["pipeline"] and list(written["results"]) == ["pipeline"]
    assert written["results"]["pipeline"]["examples_per_s"] > 0
    assert "[pipeline]" in capsys.readouterr().out


@pytest.mark.parametrize("tool, args, message", [
    ("prepare_data", ["--source=builtin:val"], "--output"),
    ("upscale", ["--input=missing.png", "--output=out.png", "--model=missing.tflite"],
     "missing.tflite"),
])
def test_a_bad_command_line_gets_one_line_and_exit_status_2(tool, args, message, tmp_path):
    """`cli.run_main`: flag errors and usage errors print one line (no traceback) and exit 2."""
    proc = subprocess.run([sys.executable, "-m", f"keras_sr_tools.{tool}", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{tool}.py: error:" in last or "error:" in last, last
    assert message in last, last
    assert not any(tmp_path.iterdir())  # nothing written
