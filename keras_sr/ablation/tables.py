"""The three ablation tables: cells, their JSON form, and the Markdown rendered from it.

A cell is either done, with its scores and how they were made:

    {"status": "done", "fp32": {psnr_y, ssim_y, psnr_rgb, ssim_rgb}, "int8": {...},
     "drop": {"psnr_y", "psnr_rgb"} (FP32 - INT8, dB), "check_int8": "pass" | "FAIL: ...",
     "parity": {...} | "n/a: ..." (placement table), "steps": {stage: n},
     "wall_seconds": {stage: s}, "models": {name: path}, "commands": [...], "configs": {stage: {...}}}

or not run, with the reason (a cell that failed gives its error text): {"status": "not run",
"reason": "..."}. A cell the run has not reached yet is {"status": "pending", ...}. The Markdown
file is `to_markdown` of the JSON file, so the two always agree.
"""
import json
import os

from keras_sr.common import fileio, progress
from keras_sr.configs.ablation import PAPER_DROPS

TABLES = ("backbone", "placement", "teacher")
METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
# Labels of the rows of the placement and teacher tables, in their order.
PLACEMENT_ROWS = {
    "fused": "QAT of the fused graph (deploy-before-QAT; the default)",
    "multibranch": "QAT of the multi-branch graph, fused after QAT (`--qat_graph=multibranch`)",
    "ptq": "PTQ of the fused FP32 model (`--ptq`, no QAT)",
}
TEACHER_ROWS = {
    "without": "Stage 3 without the teacher (Charbonnier + DCT)",
    "with": "Stage 3 with the teacher (+ confidence-weighted distillation)",
}
_TITLES = {
    "backbone": "Backbone: FP32 -> INT8 of each block type (Stage 1, then QAT of the fused graph)",
    "placement": "Where QAT happens",
    "teacher": "Teacher in Stage 3",
}
_REASON_CHARS = 300  # a Markdown cell keeps the start of a long error; the JSON keeps all of it


def not_run(reason):
    """A cell that was not run, and why."""
    return {"status": "not run", "reason": str(reason)}


PENDING = {"status": "pending", "reason": "the run has not reached this cell yet"}


def done_cell(fp32, int8, stages, exports, parity=None):
    """A finished cell.

    Args:
        fp32, int8: `cells.score` results of the FP32 reference and the INT8 model.
        stages: {stage name: `cells.train_stage` result} the INT8 model comes from.
        exports: {model name: `cells.export` result}; the one named "int8" is the cell's INT8
            model, whose `check_int8` the cell carries.
        parity: a `cells.parity_check` result, or a "n/a: ..." string (placement table only).
    """
    cell = {"status": "done",
            "fp32": {k: fp32[k] for k in METRICS}, "int8": {k: int8[k] for k in METRICS},
            "drop": {k: fp32[k] - int8[k] for k in ("psnr_y", "psnr_rgb")},
            "check_int8": exports["int8"]["check_int8"],
            "steps": {name: s["steps"] for name, s in stages.items()},
            "wall_seconds": {name: s["wall_seconds"] for name, s in stages.items()},
            "models": {name: e["path"] for name, e in exports.items()},
            "commands": [s["command"] for s in stages.values()]
            + [e["command"] for e in exports.values()] + [fp32["command"], int8["command"]],
            "configs": {name: s["config"] for name, s in stages.items()}}
    if parity is not None:
        cell["parity"] = parity
    return cell


def backbone_table(header, backbones, budgets, cells):
    """The backbone table's JSON form.

    Args:
        header: what every table states (`run_ablation`: config, seed, data, command).
        backbones: the block types, in row order.
        budgets: [{"name", "description", ...}] of the column sets.
        cells: {(budget name, block type): cell}; missing ones are pending.
    """
    rows = [{"row": block, "label": block, "paper_drop": PAPER_DROPS.get(block),
             "cells": {b["name"]: cells.get((b["name"], block), PENDING) for b in budgets}}
            for block in backbones]
    return {"table": "backbone", "title": _TITLES["backbone"], **header, "budgets": budgets,
            "rows": rows}


def single_table(name, header, labels, cells, extra=None):
    """The placement or teacher table's JSON form: one cell per row.

    Args:
        name: "placement" or "teacher".
        header: see `backbone_table`.
        labels: {row: label} (`PLACEMENT_ROWS`, `TEACHER_ROWS`).
        cells: {row: cell}; missing ones are pending.
        extra: further entries (e.g. the backbone and budget the rows share).
    """
    rows = [{"row": row, "label": label, "cell": cells.get(row, PENDING)}
            for row, label in labels.items()]
    return {"table": name, "title": _TITLES[name], **header, **(extra or {}), "rows": rows}


def _one_line(text):
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + "..."


def _pair(scores, channel):
    return f"{scores['psnr_' + channel]:.2f} / {scores['ssim_' + channel]:.4f}"


def _drop(drop):
    return f"{drop['psnr_y']:.3f} / {drop['psnr_rgb']:.3f}"


def _parity(parity):
    if isinstance(parity, str):
        return _one_line(parity)
    return (f"{parity['identical']:.2f} % / {parity['within_1']:.2f} % / {parity['max_diff']}"
            + ("" if parity["ok"] else " (fails the claim)"))


def _row(label, cell, columns):
    """A Markdown row. `columns`: functions of a done cell, or fixed strings (row facts, shown
    whatever the cell's status); a cell not done gives its status and reason in its first
    column."""
    values = []
    for column in columns:
        if isinstance(column, str):
            values.append(column)
        elif cell["status"] == "done":
            values.append(column(cell))
        else:
            reason = not any(callable(c) for c in columns[:len(values)])
            values.append(f"{cell['status']}: {_one_line(cell['reason'])}" if reason else "")
    return "| " + " | ".join([label, *values]) + " |"


def _steps(cell):
    steps = " / ".join(f"{n:,}" for n in cell["steps"].values())
    wall = " / ".join(progress.format_duration(s) for s in cell["wall_seconds"].values())
    return f"{steps} ({wall})"


_SCORES = [lambda c: _pair(c["fp32"], "y"), lambda c: _pair(c["int8"], "y"),
           lambda c: _pair(c["fp32"], "rgb"), lambda c: _pair(c["int8"], "rgb"),
           lambda c: _drop(c["drop"])]
_SCORE_HEADS = ["FP32 Y PSNR / SSIM", "INT8 Y PSNR / SSIM", "FP32 RGB PSNR / SSIM",
                "INT8 RGB PSNR / SSIM", "drop Y / RGB (dB)"]


def _table(heads, rows):
    return ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads), *rows]


def _header_lines(table):
    shape = "x".join(str(v) for v in table["input_shape"])
    lines = [f"# Ablation: {table['title']}", "",
             f"Config `{table['config']}`, seed {table['seed']}. Evaluation set: "
             f"`{table['eval_data']}` ({table['eval_images']} images; PSNR/SSIM with a 3-pixel "
             f"border, Y = BT.601 luma). Training records: `{table['train_records']}`. INT8 "
             f"models: fixed {shape} uint8 TFLite, run by tiles.", "",
             f"Command: `{table['command']}`", ""]
    rates = table.get("train_rates")
    if rates:
        measured = ", ".join(f"{b} {rates[b + '_steps_per_s']:.2f}"
                             for b in table["ablation_config"]["backbones"])
        lines += ["Equal wall time is Stage-1 compute time: each row trains its budget's minutes "
                  "times its block type's steps/s, timed in interleaved rounds before the first "
                  f"cell (pure training compute, steps/s: {measured}); Stage 3 has a wall-clock "
                  "budget.", ""]
    return lines


def _commands(named_cells):
    lines = ["## Commands", "",
             "Each cell, one keras-sr tool at a time (the exact config of each stage is its work "
             "directory's config.json, and the cell's \"configs\" in the JSON file):", ""]
    for name, cell in named_cells:
        if cell["status"] == "done":
            lines += [f"### {name}", "", "```", *cell["commands"], "```", ""]
    return lines


def to_markdown(table):
    """The Markdown form of a table's JSON form."""
    lines = _header_lines(table)
    if table["table"] == "backbone":
        named = []
        for budget in table["budgets"]:
            title = {"steps": "Equal steps", "time": "Equal wall time"}.get(
                budget["name"], budget["name"])
            rows = [_row(r["label"], r["cells"][budget["name"]], [
                _steps, *_SCORES, "" if r["paper_drop"] is None else f"{r['paper_drop']:.2f}",
                lambda c: c["check_int8"]]) for r in table["rows"]]
            lines += [f"## {title} ({budget['description']})", "",
                      *_table(["backbone", "Stage 1 / 3 steps (wall)", *_SCORE_HEADS,
                               "paper's drop (dB)", "check_int8"], rows), ""]
            named += [(f"{budget['name']} / {r['label']}", r["cells"][budget["name"]])
                      for r in table["rows"]]
        lines += ["The drop is FP32 (the fused Stage-1 model, FP32 TFLite) minus INT8 (after "
                  "Stage 3). The paper's drops are its own, on its data and schedule.", ""]
    else:
        lines += [f"Backbone `{table['backbone']}`, budget `{table['budget']}` "
                  f"({table['budget_description']}).", ""]
        columns = [_steps, *_SCORES, lambda c: c["check_int8"]]
        heads = ["Stage 1 / 3 steps (wall)", *_SCORE_HEADS, "check_int8"]
        if table["table"] == "placement":
            columns.append(lambda c: _parity(c["parity"]))
            heads.append("parity vs Keras QAT: identical / within 1 level / max diff")
        rows = [_row(r["label"], r["cell"], columns) for r in table["rows"]]
        lines += [*_table([table["table"], *heads], rows), ""]
        named = [(r["label"], r["cell"]) for r in table["rows"]]
    return "\n".join(lines + _commands(named)).rstrip() + "\n"


def write(workdir, table):
    """Writes WORKDIR/NAME.json and WORKDIR/NAME.md (the same table), each atomically."""
    # Both files from the JSON form, as a reader of the JSON file gets it.
    table = json.loads(json.dumps(table, sort_keys=True, default=str))
    fileio.write_json(os.path.join(workdir, table["table"] + ".json"), table)
    with fileio.atomic_open(os.path.join(workdir, table["table"] + ".md"), "w") as f:
        f.write(to_markdown(table))
