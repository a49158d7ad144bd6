"""The ablation tables (`keras-sr-ablate`): configs, cells, Markdown = JSON, failures, resume.

The unit tests run `run_ablation` with the training, export, scoring and parity units replaced by
fakes, so the table and resume logic is checked in seconds; the smoke test runs the real thing
on the tiny data (a few minutes on 2 cores: marked slow).
"""
import json
import math
import pathlib

import pytest
from absl import app
from conftest import run_tool

from keras_sr import ablation
from keras_sr.ablation import cells, tables
from keras_sr.common import image_io
from keras_sr.common import record_schema as rs
from keras_sr.configs import BLOCK_TYPES
from keras_sr.configs import ablation as ablation_configs
from keras_sr.export import tflite_lib

# ---------------------------------------------------------------------------------------------
# Reading the tables back.


def _load(workdir):
    """{table name: its JSON form}, after checking that its Markdown is rendered from it."""
    made = {}
    for name in tables.TABLES:
        table = json.loads((workdir / f"{name}.json").read_text())
        assert (workdir / f"{name}.md").read_text() == tables.to_markdown(table), name
        made[name] = table
    return made


def _cells(table):
    """(row label, cell) of every cell of a table."""
    if table["table"] == "backbone":
        return [(f"{b} / {r['row']}", c) for r in table["rows"] for b, c in r["cells"].items()]
    return [(r["row"], r["cell"]) for r in table["rows"]]


def _check_cell(label, cell, markdown):
    """A done cell holds finite scores, a drop that is FP32 - INT8 and a passing check_int8, and
    its Markdown row shows them; any other cell says why it was not run."""
    if cell["status"] != "done":
        assert cell["status"] == "not run" and cell["reason"].strip(), (label, cell)
        return False
    for model in ("fp32", "int8"):
        assert all(math.isfinite(cell[model][k]) for k in tables.METRICS), (label, cell[model])
    for key in ("psnr_y", "psnr_rgb"):
        assert cell["drop"][key] == pytest.approx(cell["fp32"][key] - cell["int8"][key])
    assert cell["check_int8"] == "pass", (label, cell["check_int8"])
    assert f"{cell['int8']['psnr_y']:.2f} / {cell['int8']['ssim_y']:.4f}" in markdown
    assert f"{cell['drop']['psnr_y']:.3f} / {cell['drop']['psnr_rgb']:.3f}" in markdown
    return True


# ---------------------------------------------------------------------------------------------
# Configs.


def test_configs_list_every_backbone_and_validate():
    assert set(ablation_configs.CPU.backbones) == set(BLOCK_TYPES)
    assert [b.name for b in ablation_configs.CPU.budgets] == ["steps", "time"]
    assert ablation_configs.CPU.budget("time").minutes(1) > 0
    assert ablation_configs.PAPER.stage_config == "div2k"
    assert len(ablation_configs.SMOKE.backbones) == 2
    # The JSON form reads back into the same typed config.
    for config in ablation_configs.VARIANTS.values():
        assert ablation_configs.AblationConfig.from_dict(
            json.loads(json.dumps(config.to_dict()))) == config
    base = ablation_configs.SMOKE
    with pytest.raises(ValueError, match="block types"):
        base.replace(backbones=("repconv", "nope"))
    with pytest.raises(ValueError, match="distinct names"):
        base.replace(budgets=(base.budgets[0], base.budgets[0]))
    with pytest.raises(ValueError, match="placement_budget 'wall'"):
        base.replace(placement_budget="wall")
    with pytest.raises(ValueError, match="stage1_minutes must be a number >= 0"):
        ablation_configs.Budget("time", stage1_minutes=-1.0)
    with pytest.raises(ValueError, match="not an ablation config"):
        ablation_configs.get_ablation_config("huge")


def test_stage_configs_and_commands_of_a_cell():
    config = ablation_configs.SMOKE.replace(seed=3)
    time = config.budget("time")
    stage1 = cells.stage_config(config, 1, time, "repconv")
    assert (stage1.model.block_type, stage1.model.channels, stage1.steps, stage1.seed,
            stage1.time_budget_minutes) == ("repconv", 8, 12, 3, 0.05)
    stage3 = cells.stage_config(config, 3, time, qat_graph="multibranch")
    assert (stage3.qat.graph, stage3.steps, stage3.time_budget_minutes) == ("multibranch", 6, 0.05)
    command = cells.train_command(stage1, "smoke", "w 1", "recs")
    assert command.startswith("keras-sr-train --stage=1 --config=smoke --block_type=repconv ")
    assert "--steps=12 --time_budget_minutes=0.05 --seed=3" in command
    assert "'--workdir=w 1'" in command and command.endswith("channels=8, num_blocks=2, "
                                                             "num_branches=2")
    assert "--qat_graph=multibranch" in cells.train_command(stage3, "smoke", "w", "r", "s1")


# ---------------------------------------------------------------------------------------------
# The tables and resume, with fake units.


class _Died(BaseException):
    """Stands in for the process dying (not an Exception: no cell catches it)."""


class _FakeUnits:
    """Fakes of `cells.train_rates`, `train_stage`, `export`, `score` and `parity_check` that
    count their calls.

    `fail` maps a block type to an error its Stage 1 raises; `die_at` names a Stage-3 work
    directory whose training "kills the process".
    """

    def __init__(self, fail=None, die_at=None):
        self.calls, self.fail, self.die_at = [], fail or {}, die_at

    def train_stage(self, config, variant, workdir, records, init_from=None,
                    teacher_records=None, run_info=None):
        self.calls.append(("train", workdir))
        block = config.model.block_type
        if config.stage == 1 and block in self.fail:
            raise ValueError(self.fail[block])
        if self.die_at and workdir.endswith(self.die_at):
            raise _Died(workdir)
        return {"workdir": workdir, "steps": config.steps, "wall_seconds": 1.5,
                "steps_per_second": 2.0, "config": config.to_dict(),
                "command": cells.train_command(config, variant, workdir, records, init_from,
                                               teacher_records)}

    def train_rates(self, config):
        self.calls.append(("rates", None))
        return {f"{b}_steps_per_s": 1.0 + i for i, b in enumerate(config.backbones)}

    def export(self, source, output, kind, input_shape, calibration_data=None):
        self.calls.append(("export", output))
        return {"path": output, "kind": kind, "parameters": 1, "bytes": 1,
                "check_int8": "n/a (FP32 model)" if kind == "float" else "pass",
                "command": f"export {output}"}

    def score(self, model, eval_dir):
        self.calls.append(("score", model))
        offset = 0.0 if model.endswith("fp32.tflite") else 0.125  # the INT8 models' drop
        return {"psnr_y": 30.0 - offset, "ssim_y": 0.9, "psnr_rgb": 28.0 - offset / 2,
                "ssim_rgb": 0.85, "num_images": 2, "command": f"score {model}"}

    def parity_check(self, stage3_dir, tflite, eval_dir):
        self.calls.append(("parity", tflite))
        return {"identical": 100.0, "within_1": 100.0, "max_diff": 0, "mean_abs_diff": 0.0,
                "ok": True, "command": f"parity {tflite}"}

    def install(self, monkeypatch):
        for name in ("train_rates", "train_stage", "export", "score", "parity_check"):
            monkeypatch.setattr(cells, name, getattr(self, name))


def _fake_run(tiny_data, workdir, monkeypatch, units, **kwargs):
    records, val = tiny_data
    units.install(monkeypatch)
    units.calls.clear()
    return ablation.run_ablation(str(workdir), "cpu", train_records=records, eval_data=val,
                                 **kwargs)


def test_failed_cells_say_why_and_the_others_still_run(tiny_data, tmp_path, monkeypatch):
    units = _FakeUnits(fail={"repdw": "repdw cannot go | through QAT\nyet"})
    _fake_run(tiny_data, tmp_path, monkeypatch, units)
    made = _load(tmp_path)
    backbone = made["backbone"]
    assert [r["row"] for r in backbone["rows"]] == list(ablation_configs.CPU.backbones)
    markdown = (tmp_path / "backbone.md").read_text()
    done = [label for label, cell in _cells(backbone) if _check_cell(label, cell, markdown)]
    assert len(done) == 2 * len(BLOCK_TYPES) - 2  # both repdw cells failed, the rest ran
    repdw = next(r for r in backbone["rows"] if r["row"] == "repdw")
    for cell in repdw["cells"].values():
        assert cell == tables.not_run("ValueError: repdw cannot go | through QAT\nyet")
    # The reason stays on its row (pipe escaped, one line), beside the paper's drop.
    assert ("| repdw | not run: ValueError: repdw cannot go \\| through QAT yet |  |  |  |  |  "
            "| 0.66 |  |") in markdown
    # The paper's drops sit beside the measured ones, and the budgets are stated.
    assert [r["paper_drop"] for r in backbone["rows"]] == [
        ablation_configs.PAPER_DROPS.get(b) for b in ablation_configs.CPU.backbones]
    assert [r["paper_drop"] for r in backbone["rows"]][:3] == [0.24, 0.66, 0.13]
    assert "## Equal steps (Stage 1: 1,000 steps; Stage 3: 200 steps)" in markdown
    assert ("## Equal wall time (Stage 1: 4 min (at most 20,000 steps); Stage 3: 1 min (at most "
            "1,500 steps))") in markdown
    assert backbone["seed"] == 0 and backbone["command"].startswith("keras-sr-ablate ")
    # Equal time: each row's Stage 1 trains 4 minutes at its measured rate (1 + its index).
    for i, row in enumerate(backbone["rows"]):
        time_cell = row["cells"]["time"]
        if time_cell["status"] == "done":
            assert time_cell["steps"]["stage1"] == 240 * (1 + i)
            assert time_cell["configs"]["stage1"]["time_budget_minutes"] == 0
            assert time_cell["configs"]["stage3"]["time_budget_minutes"] == 1
    assert "(pure training compute, steps/s: repconv 1.00, repdw 2.00, mobileone 3.00," in markdown
    # Placement: parity of the QAT models, n/a for PTQ; every cell from the steps Stage 1.
    placement = dict(_cells(made["placement"]))
    assert placement["fused"]["parity"]["ok"] and placement["multibranch"]["parity"]["ok"]
    assert placement["ptq"]["parity"].startswith("n/a")
    assert placement["fused"]["int8"] == backbone["rows"][2]["cells"]["steps"]["int8"]
    # No teacher records: the teacher row says it was not run and why.
    teacher = dict(_cells(made["teacher"]))
    assert teacher["without"]["status"] == "done"
    assert teacher["with"] == tables.not_run(ablation.run.NO_TEACHER)
    assert "| not run: no --teacher_records given" in (tmp_path / "teacher.md").read_text()

    # A rerun trains, exports and scores nothing that is done; only the failed cells run again.
    before = (tmp_path / "backbone.json").read_text()
    _fake_run(tiny_data, tmp_path, monkeypatch, units)
    assert [c for c in units.calls if c[0] == "train"] == [
        ("train", str(tmp_path / "cells" / budget / "repdw" / "stage1"))
        for budget in ("steps", "time")]
    assert [c for c in units.calls if c[0] != "train"] == []  # the rates too were kept
    assert (tmp_path / "backbone.json").read_text() == before
    # Other settings in the same folder are refused, naming what differs.
    with pytest.raises(ablation.AblationMismatch, match="other settings.*'seed': 0"):
        _fake_run(tiny_data, tmp_path, monkeypatch, units, seed=1)


def test_an_interrupted_cell_resumes_from_its_finished_stages(tiny_data, tmp_path, monkeypatch):
    doomed = str(pathlib.Path("cells", "time", "plain", "stage3"))
    with pytest.raises(_Died):
        _fake_run(tiny_data, tmp_path, monkeypatch, _FakeUnits(die_at=doomed))
    # The tables written so far show the cells not reached yet as pending.
    partial = json.loads((tmp_path / "backbone.json").read_text())
    statuses = {(b, r["row"]): c["status"] for r in partial["rows"] for b, c in r["cells"].items()}
    assert statuses[("steps", "plain")] == "done" and statuses[("time", "plain")] == "pending"
    units = _FakeUnits()
    _fake_run(tiny_data, tmp_path, monkeypatch, units)
    trained = [c[1] for c in units.calls if c[0] == "train"]
    # The interrupted cell retrains only its Stage 3; the cells after it run in full.
    assert trained[0] == str(tmp_path / doomed)
    assert str(tmp_path / "cells" / "time" / "plain" / "stage1") not in trained
    assert str(tmp_path / "cells" / "steps" / "repconv" / "stage1") not in trained
    markdown = (tmp_path / "backbone.md").read_text()
    assert all(_check_cell(label, cell, markdown)
               for label, cell in _cells(_load(tmp_path)["backbone"]))


def test_bad_inputs_are_refused_before_anything_is_written(tiny_data, tmp_path):
    with pytest.raises(app.UsageError, match="--train_records: no TFRecord files"):
        run_tool("ablate", f"--workdir={tmp_path / 'a'}", "--config=smoke",
                 f"--train_records={tmp_path / 'none'}")
    with pytest.raises(app.UsageError, match="--calibration_data=nowhere: neither"):
        run_tool("ablate", f"--workdir={tmp_path / 'a'}", "--config=smoke",
                 f"--train_records={tiny_data[0]}", "--calibration_data=nowhere")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------------------------
# The real thing, on the tiny data.


def _teacher_records(records, output):
    """Teacher records whose "teacher" is each image's own HR (a perfect teacher)."""
    teachers = []
    for path in rs.list_record_files(records):
        for serialized in rs.read_tfrecord(path):
            example = rs.decode_example(serialized, rs.SR_FEATURES)
            height, width = image_io.decode_image(example["hr_png"]).shape[:2]
            teachers.append(rs.encode_example(
                {"image_id": example["image_id"], "teacher_png": example["hr_png"],
                 "height": height, "width": width, "scale": 3, "checkpoint_sha256": "0" * 64,
                 "routing": "argmax", "seed": 0, "tiling": "none"}, rs.TEACHER_FEATURES))
    rs.write_tfrecord(output, teachers)
    return str(output)


# 10 training stages and 11 exports: 1.5 minutes on a quiet 2-core CPU, 2-3 under load.
@pytest.mark.slow
def test_smoke_ablation_writes_three_checked_tables_and_resumes(tiny_data, tmp_path):
    records, val = tiny_data
    teacher = _teacher_records(records, tmp_path / "teacher.tfrecord")
    workdir = tmp_path / "ablation"
    flags = [f"--workdir={workdir}", "--config=smoke", f"--train_records={records}",
             f"--data={val}", f"--teacher_records={teacher}"]
    run_tool("ablate", *flags)
    made = _load(workdir)
    for name, table in made.items():
        markdown = (workdir / f"{name}.md").read_text()
        assert table["seed"] == 0 and "keras-sr-ablate" in markdown
        for label, cell in _cells(table):
            # The smoke backbones all go through QAT: every cell ran.
            assert _check_cell(label, cell, markdown), (name, label, cell)
            for model in cell["models"].values():
                blob = pathlib.Path(model).read_bytes()
                if not model.endswith("fp32.tflite"):
                    tflite_lib.check_int8(blob)
            assert all("--workdir=" in c or c.startswith("keras-sr-evaluate")
                       for c in cell["commands"])
    placement = dict(_cells(made["placement"]))
    assert placement["fused"]["parity"]["ok"] and placement["multibranch"]["parity"]["ok"]
    assert placement["multibranch"]["configs"]["stage3"]["qat"]["graph"] == "multibranch"
    teacher_cell = dict(_cells(made["teacher"]))["with"]
    assert any(f"--teacher_records={teacher}" in c for c in teacher_cell["commands"])
    # The time column's Stage 1 trains 3 s at the measured rate (at most 12 steps).
    time_cell = made["backbone"]["rows"][0]["cells"]["time"]
    rate = made["backbone"]["train_rates"]["repconv_steps_per_s"]
    assert time_cell["steps"]["stage1"] == min(12, max(1, round(3 * rate)))

    # A rerun resumes without retraining: no stage's metrics change, the tables stay the same.
    stage_metrics = {p: p.read_bytes() for p in (workdir / "cells").rglob("metrics.json")}
    assert len(stage_metrics) == 10  # 4 Stage-1 runs, 6 Stage-3 runs
    tables_before = {n: (workdir / f"{n}.json").read_text() for n in tables.TABLES}
    run_tool("ablate", *flags)
    assert {p: p.read_bytes() for p in stage_metrics} == stage_metrics
    assert {n: (workdir / f"{n}.json").read_text() for n in tables.TABLES} == tables_before
    with pytest.raises(app.UsageError, match="other settings"):
        run_tool("ablate", *flags, "--seed=1")
