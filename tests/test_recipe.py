"""The whole job (`keras-sr-run`): every artifact, scores equal to tools/evaluate.py, resume, refusal
of other settings, the budget plan and the progress view."""
import hashlib
import io
import json
import math
import pathlib

import cv2
import numpy as np
import pytest
from absl import app
from conftest import Killed, browser_check, kill_before_step, require_shared, run_tool

from keras_sr.configs import job as job_configs
from keras_sr.export import tflite_lib
from keras_sr.recipe.progress import JobProgress


def _finite_numbers(value):
    if isinstance(value, dict):
        return all(_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def test_smoke_job_writes_every_artifact_with_the_scores_of_evaluate(tiny_data, tmp_path, capsys):
    records, _ = tiny_data
    images = pathlib.Path(records).parent
    job = tmp_path / "job"
    flags = [f"--workdir={job}", f"--train_source={images / 'train'}",
             f"--val_source=folder:{images / 'val'}", f"--eval_data={images / 'val_set'}",
             "--config=smoke", "--input_shape=1,32,40,3"]
    run_tool("run", *flags)
    out = capsys.readouterr().out
    assert "report.html" in out
    for name in ("report.html", "report.md", "metrics.json", "job.json",
                 "export/student_int8.tflite", "export/student_fp32.tflite"):
        assert (job / name).is_file(), name
    tflite_lib.check_int8((job / "export" / "student_int8.tflite").read_bytes())
    metrics = json.loads((job / "metrics.json").read_text())
    assert _finite_numbers(metrics)
    state = json.loads((job / "job.json").read_text())
    assert set(state["done"]) == {"data", "stage1", "stage3", "export"}

    # Every row is what tools/evaluate.py reports for the same model on the same set.
    specs = {"bicubic": "bicubic", "fp32": str(job / "export" / "student_fp32.tflite"),
             "qat": str(job / "stage3"), "int8": str(job / "export" / "student_int8.tflite")}
    assert [s["name"] for s in metrics["sets"]] == ["val", "val_set"]
    for entry in metrics["sets"]:
        for row in entry["rows"]:
            result = tmp_path / f"{row['model']}.json"
            run_tool("evaluate", f"--model={specs[row['model']]}", f"--data={entry['path']}",
                     f"--json={result}")
            expected = json.loads(result.read_text())
            for key in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
                assert row[key] == pytest.approx(expected[key], abs=1e-9), (row["model"], key)
    int8_row = next(r for r in metrics["sets"][0]["rows"] if r["model"] == "int8")
    assert int8_row["file_bytes"] == (job / "export" / "student_int8.tflite").stat().st_size
    assert int8_row["latency_ms"] > 0
    # The report's pictures decode.
    pictures = list((job / "report_files").glob("*.png"))
    assert pictures
    for picture in pictures:
        decoded = cv2.imread(str(picture))
        assert decoded is not None and decoded.size > 0, picture

    # The report in a browser: every image decoded, one table per set with a row per model.
    browser, dom = browser_check(job / "report.html", tmp_path)
    assert len(browser["widths"]) == len(pictures) and min(browser["widths"]) > 0
    assert browser["tables"][:2] == [[5, 9], [5, 9]]

    # A rerun skips every finished part and reports the same scores.
    before = (job / "stage3" / "metrics.json").read_text()
    run_tool("run", *flags)
    assert (job / "stage3" / "metrics.json").read_text() == before
    rerun = json.loads((job / "metrics.json").read_text())
    scores = lambda m: [(r["model"], r["psnr_y"], r["ssim_rgb"])  # noqa: E731
                        for entry in m["sets"] for r in entry["rows"]]
    assert scores(rerun) == scores(metrics)
    # Other settings in the same work directory: refused, naming what differs.
    with pytest.raises(app.UsageError, match=r"other settings \(time_budget_minutes: 0.0 -> 3.0"):
        run_tool("run", *flags, "--time_budget_minutes=3")


def test_budget_split_follows_the_stages_left():
    job = job_configs.DEFAULT
    stages = job.stages(with_teacher=False)
    assert stages == ("stage1", "stage3")
    s1 = job.stage_seconds("stage1", 500.0, stages)
    s3 = job.stage_seconds("stage3", 500.0 - s1, stages[1:])
    assert s1 + s3 == pytest.approx(500.0)
    assert s1 / 500.0 == pytest.approx(job.shares[0] / (job.shares[0] + job.shares[2]))
    # With a teacher Stage 2 gets its share; an overrun shrinks what is left, never the job's end.
    assert job.stages(with_teacher=True) == ("stage1", "stage2", "stage3")
    assert job.stage_seconds("stage3", -5.0, ("stage3",)) == 0.0
    assert job.tail_seconds() >= job.tail_min_seconds
    # A slow machine keeps the time of `tail_steps` of its training steps for the tail.
    assert job.tail_seconds(steps_per_second=1.0) == job.tail_steps > job.tail_seconds()
    with pytest.raises(ValueError, match="shares must be three fractions"):
        job.replace(shares=(0.5, 0.5))
    with pytest.raises(ValueError, match="not a job config"):
        job_configs.get_job_config("huge")


def test_progress_view_writes_log_lines_when_not_a_terminal(caplog):
    view = JobProgress(["data", "stage1"], deadline=None, stream=io.StringIO(), log_seconds=0.0)
    caplog.set_level("INFO", logger="absl")
    view.start("stage1", total=10)
    for step in range(1, 11):
        view.update(step, 10)
    view.close()
    lines = [r.getMessage() for r in caplog.records if "Job [2/2] stage1: step" in r.getMessage()]
    assert len(lines) == 10 and lines[-1].startswith("Job [2/2] stage1: step 10/10")


# About a minute on an idle 2-core CPU (the teacher runs on the CPU): kept out of the default run.
@pytest.mark.slow
def test_teacher_checkpoint_runs_the_precompute_inside_the_job(tiny_data, tmp_path):
    """--teacher_checkpoint: teacher outputs precomputed in a subprocess, Stage 2 distils from them."""
    weights = require_shared("fixtures", "mambairv2_light_x3", "weights.pth")
    records, _ = tiny_data
    images = pathlib.Path(records).parent
    job = tmp_path / "job"
    run_tool("run", f"--workdir={job}", f"--train_source={images / 'train'}",
             f"--val_source={images / 'val_set'}", "--config=smoke", "--input_shape=1,32,40,3",
             f"--teacher_checkpoint={weights}",
             f"--teacher_checkpoint_sha256={hashlib.sha256(weights.read_bytes()).hexdigest()}")
    state = json.loads((job / "job.json").read_text())
    assert set(state["done"]) == {"data", "teacher", "stage1", "stage2", "stage3", "export"}
    assert list((job / "teacher").glob("*.tfrecord"))
    stage2 = json.loads((job / "stage2" / "metrics.json").read_text())
    # Random teacher weights are far from the images: every pixel gets the KD weight floor w_min.
    assert 0.0 < stage2["train_kd"] <= 0.1
    # The report's teacher row scores the teacher's own outputs for the set's LR images.
    metrics = json.loads((job / "metrics.json").read_text())
    rows = {row["model"]: row for row in metrics["sets"][0]["rows"]}
    assert list(rows) == ["bicubic", "teacher", "fp32", "qat", "int8"]
    assert 0.0 < rows["teacher"]["psnr_y"] < rows["bicubic"]["psnr_y"]  # random weights


def test_teacher_flags_are_checked_before_anything_is_written(tmp_path):
    weights = tmp_path / "teacher.pth"
    weights.write_bytes(b"not really a checkpoint")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    job = tmp_path / "job"
    for flags, message in (
            ([f"--teacher_checkpoint={weights}", f"--teacher_checkpoint_sha256={'0' * 64}"],
             f"has sha256 {digest}, not --teacher_checkpoint_sha256={'0' * 64}"),
            ([f"--teacher_checkpoint={tmp_path / 'absent.pth'}"], "absent.pth: no such file"),
            ([f"--teacher_checkpoint_sha256={digest}"], "needs --teacher_checkpoint"),
            ([f"--teacher_checkpoint={weights}", f"--teacher_records={weights}"], "not both")):
        with pytest.raises(app.UsageError, match=message):
            run_tool("run", f"--workdir={job}", "--config=smoke", *flags)
        assert not job.exists()


def test_speed_probe_times_the_jobs_student():
    from keras_sr.recipe import job

    rate = job._speed_probe(job_configs.SMOKE, steps=2)
    assert np.isfinite(rate) and rate > 0


# Two smoke jobs: over a minute on 2 cores.
@pytest.mark.slow
def test_a_job_killed_mid_stage_resumes_to_byte_identical_models(tiny_data, tmp_path):
    """The smoke job has no time budget, so its steps are fixed; under op determinism (conftest)
    a killed and resumed job must ship the very bytes of an uninterrupted one."""
    records, _ = tiny_data
    images = pathlib.Path(records).parent

    def job(name):
        return [f"--workdir={tmp_path / name}", f"--train_source={images / 'train'}",
                f"--val_source=folder:{images / 'val'}", "--config=smoke",
                "--input_shape=1,32,40,3", "--deterministic"]

    run_tool("run", *job("straight"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        kill_before_step(monkeypatch, 5)  # Stage 1 dies after its checkpoint at step 3
        with pytest.raises(Killed):
            run_tool("run", *job("resumed"))
    state = json.loads((tmp_path / "resumed" / "job.json").read_text())
    assert set(state["done"]) == {"data"}  # Stage 1 was under way
    run_tool("run", *job("resumed"))
    for name in ("student_int8.tflite", "student_fp32.tflite"):
        straight = (tmp_path / "straight" / "export" / name).read_bytes()
        resumed = (tmp_path / "resumed" / "export" / name).read_bytes()
        assert hashlib.sha256(resumed).hexdigest() == hashlib.sha256(straight).hexdigest(), name
    # The export's JSON differs only by the work directory's name in its paths.
    summaries = [(tmp_path / run / "export" / "student_int8.json").read_text()
                 for run in ("straight", "resumed")]
    assert summaries[1].replace("resumed", "straight") == summaries[0]
    rows = [{row["model"]: row["psnr_y"] for row in json.loads(
        (tmp_path / run / "metrics.json").read_text())["sets"][0]["rows"]}
        for run in ("straight", "resumed")]
    assert rows[0] == rows[1]
