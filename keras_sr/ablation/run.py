"""Runs (or resumes) the paper's three ablation tables (`keras-sr-ablate`).

    WORKDIR/ablation.json          the settings and every part done (`keras_sr.common.ledger`)
    WORKDIR/records/               training records made from the config's train_source
                                   (without --train_records)
    WORKDIR/eval/                  the evaluation set in the EDSR benchmark layout
    WORKDIR/cells/BUDGET/BLOCK/    stage1/, stage3/ (and stage3_multibranch/, stage3_teacher/):
                                   training work directories; export/: fp32.tflite, int8.tflite,
                                   int8_multibranch.tflite, int8_teacher.tflite, ptq.tflite
    WORKDIR/{backbone,placement,teacher}.{json,md}   the tables (`tables`), rewritten after
                                   every cell

A cell is a chain of parts (Stage 1, Stage 3, exports, scores), each recorded when done; cells
share parts (the placement and teacher tables start from the backbone table's Stage 1 of their
backbone, and their fused, teacher-less cell is its cell). A rerun skips what is done; an
interrupted stage resumes from its checkpoints. A cell that fails (e.g. a block type QAT cannot
handle yet) says why in its table, and the other cells still run; a rerun tries it again.
"""
import os
import shlex

from absl import logging

from keras_sr import data
from keras_sr.ablation import cells, tables
from keras_sr.common.ledger import Ledger
from keras_sr.common import lock, record_schema
from keras_sr.configs import ablation as ablation_configs
from keras_sr.export import tflite_lib

STATE_FILE = "ablation.json"
NO_TEACHER = ("no --teacher_records given: Stage 3 with the teacher needs the teacher's outputs "
              "for the training records (keras-sr-precompute-teacher, README \"The teacher and "
              "Stage 2\")")


class BadInput(ValueError):
    """An input of the ablation cannot be used (the message names its flag)."""


def check_inputs(train_records=None, eval_data="builtin:val", teacher_records=None,
                 calibration_data="builtin:train"):
    """Lists every input before the ablation writes anything.

    Raises:
        BadInput: an input that cannot be used; the message names its flag.
    """
    try:
        record_schema.check_record_flags([("--train_records", train_records),
                                          ("--teacher_records", teacher_records)])
    except ValueError as e:
        raise BadInput(str(e)) from None
    named = [("--data", eval_data)]
    if calibration_data.startswith("builtin:"):
        named.append(("--calibration_data", calibration_data))
    elif not os.path.isdir(os.path.join(calibration_data, "HR")):
        raise BadInput(f"--calibration_data={calibration_data}: neither builtin:train|val nor "
                         "an EDSR-layout folder (HR/ + LR_bicubic/X3/)")
    try:
        data.check_sources(named)
    except ValueError as e:
        raise BadInput(str(e)) from None


class _Ablation:
    """The parts and cells of one ablation run (see the module docstring)."""

    def __init__(self, workdir, config, ledger, records, eval_dir, teacher_records,
                 calibration_data, input_shape, rates):
        self.workdir, self.config, self.ledger, self.rates = workdir, config, ledger, rates
        self.records, self.eval_dir, self.teacher_records = records, eval_dir, teacher_records
        self.calibration_data, self.input_shape = calibration_data, tuple(input_shape)
        self.results = {}  # cell name -> cell

    def _dir(self, budget, block, *parts):
        return os.path.join(self.workdir, "cells", budget, block, *parts)

    # --- Parts. ---
    def stage1(self, budget, block):
        config = cells.stage_config(self.config, 1, self.config.budget(budget), block,
                                    rates=self.rates)
        return self.ledger.part(f"stage1/{budget}/{block}", lambda: cells.train_stage(
            config, self.config.stage_config, self._dir(budget, block, "stage1"), self.records))

    def stage3(self, budget, block, variant="fused"):
        """Stage 3 from the cell's Stage 1: "fused" (the default), "multibranch" or "teacher"."""
        source = self.stage1(budget, block)["workdir"]
        config = cells.stage_config(self.config, 3, self.config.budget(budget),
                                    qat_graph="multibranch" if variant == "multibranch" else "fused")
        folder = "stage3" if variant == "fused" else f"stage3_{variant}"
        teacher = self.teacher_records if variant == "teacher" else None
        return self.ledger.part(f"{folder}/{budget}/{block}", lambda: cells.train_stage(
            config, self.config.stage_config, self._dir(budget, block, folder), self.records,
            init_from=source, teacher_records=teacher))

    def model(self, budget, block, name):
        """Exports and scores one model of a cell: "fp32" (Stage 1, float), "ptq" (Stage 1),
        "int8" or "int8_<variant>" (its Stage 3). Returns (export, score)."""
        if name in ("fp32", "ptq"):
            source = self.stage1(budget, block)["workdir"]
        else:
            source = self.stage3(budget, block, name.partition("_")[2] or "fused")["workdir"]
        kind = {"fp32": "float", "ptq": "ptq"}.get(name, "int8")
        path = cells.model_path(self._dir(budget, block), name)
        exported = self.ledger.part(f"export/{budget}/{block}/{name}", lambda: cells.export(
            source, path, kind, self.input_shape,
            self.calibration_data if kind == "ptq" else None))
        scored = self.ledger.part(f"score/{budget}/{block}/{name}",
                                  lambda: cells.score(path, self.eval_dir))
        return exported, scored

    # --- Cells. ---
    def cell(self, name, fn):
        """Runs cell `name` unless it is done; a failure becomes a "not run" cell with its error."""
        try:
            self.results[name] = self.ledger.part(f"cell/{name}", fn)
        # Whatever fails in one cell (a block type QAT cannot handle yet, a diverged run) is
        # reported in its table; the other cells still run.
        except Exception as e:  # pylint: disable=broad-except
            logging.exception("Ablation: cell %s failed; the table says why.", name)
            self.results[name] = tables.not_run(f"{type(e).__name__}: {e}")
        return self.results[name]

    def int8_cell(self, budget, block, variant="fused", with_parity=False):
        """FP32 (Stage 1) vs INT8 of one Stage-3 variant, or of PTQ (`variant` "ptq").

        With `with_parity` the cell holds the INT8 model's parity with its Keras QAT model (for
        PTQ, why there is none).
        """
        fp32_export, fp32 = self.model(budget, block, "fp32")
        name = "ptq" if variant == "ptq" else "int8" if variant == "fused" else f"int8_{variant}"
        export, int8 = self.model(budget, block, name)
        stages = {"stage1": self.stage1(budget, block)}
        parity = "n/a: PTQ has no Keras QAT model to compare with" if variant == "ptq" else None
        if variant != "ptq":
            stages["stage3"] = self.stage3(budget, block, variant)
            if with_parity:
                parity = self.ledger.part(
                    f"parity/{budget}/{block}/{name}",
                    lambda: cells.parity_check(stages["stage3"]["workdir"], export["path"],
                                               self.eval_dir))
        return tables.done_cell(fp32, int8, stages, {"fp32": fp32_export, "int8": export},
                                parity if with_parity else None)


def _resolved_budgets(config):
    """The budgets with the stage configs' steps filled in, and a line describing each."""
    resolved = []
    for budget in config.budgets:
        steps = {f"stage{s}_steps": cells.stage_config(config, s, budget, "plain").steps
                 for s in (1, 3)}
        budget = budget.replace(**steps)
        resolved.append({**budget.to_dict(), "description": budget.describe()})
    return resolved


def _command(workdir, name, train_records, eval_data, teacher_records, calibration_data, seed):
    args = [f"--workdir={workdir}", f"--config={name}"]
    for flag, value in (("train_records", train_records), ("data", eval_data),
                        ("teacher_records", teacher_records),
                        ("calibration_data", calibration_data), ("seed", seed)):
        if value is not None:
            args.append(f"--{flag}={value}")
    return " ".join(["keras-sr-ablate", *(shlex.quote(a) for a in args)])


def run_ablation(workdir, config="cpu", train_records=None, eval_data=None, teacher_records=None,
                 calibration_data=None, seed=None, run_info=None):
    """Runs (or resumes) the three ablation tables; see the module docstring.

    Args:
        workdir: output folder; rerun with the same arguments to resume.
        config: the `keras_sr.configs.ablation` variant ("cpu", "paper", "smoke").
        train_records: SR TFRecords; None: made from the config's train_source.
        eval_data: the evaluation set (a source spec, e.g. builtin:val or an EDSR-layout folder
            such as Set5); None: the config's eval_source.
        teacher_records: teacher TFRecords of the training records, for the teacher table.
        calibration_data: PTQ's representative images; None: the config's.
        seed: the seed of every stage; None: the config's.
        run_info: the binary's resolved flags, stored in every table.

    Returns:
        {table name: its JSON form}.

    Raises:
        BadInput: a bad config, seed or input (before anything is written).
        AblationMismatch: WORKDIR holds an ablation with other settings.
        lock.LockHeld: another process runs in WORKDIR.
    """
    try:
        ablation = ablation_configs.get_ablation_config(config)
        if seed is not None:
            ablation = ablation.replace(seed=seed)
    except ValueError as e:
        raise BadInput(str(e)) from None
    spec = eval_data or ablation.eval_source
    calibration = calibration_data or ablation.calibration_source
    check_inputs(train_records, spec, teacher_records, calibration)
    input_shape = ablation.input_shape or tflite_lib.DEFAULT_INPUT_SHAPE
    with lock.WorkdirLock(workdir):  # one ablation per work directory at a time
        return _run_ablation(workdir, config, ablation, train_records, eval_data, spec,
                             teacher_records, calibration_data, calibration, seed, input_shape,
                             run_info)


def _run_ablation(workdir, config, ablation, train_records, eval_data, spec, teacher_records,
                  calibration_data, calibration, seed, input_shape, run_info):
    """`run_ablation` once its inputs are checked and the work directory locked."""
    ledger = Ledger(workdir, {"config": config, "ablation": ablation.to_dict(),
                              "train_records": train_records, "eval_data": spec,
                              "teacher_records": teacher_records, "calibration_data": calibration},
                    STATE_FILE, "an ablation")
    records = train_records or os.path.join(workdir, "records")
    eval_dir = os.path.join(workdir, "eval")

    def prepare():
        if not train_records:
            data.prepare_records(ablation.train_source, records)
        return {"eval_images": data.prepare_benchmark(spec, eval_dir)["num_examples"]}

    prepared = ledger.part("data", prepare)
    # Equal-time Stage-1 budgets become steps at rates timed once, before any cell.
    rates = (ledger.part("train_rates", lambda: cells.train_rates(ablation))
             if any(b.stage1_minutes for b in ablation.budgets) else None)
    run = _Ablation(workdir, ablation, ledger, records, eval_dir, teacher_records, calibration,
                    input_shape, rates)
    header = {"config": config, "seed": ablation.seed, "train_records": records,
              "eval_data": spec, "eval_dir": eval_dir, "eval_images": prepared["eval_images"],
              "teacher_records": teacher_records, "calibration_data": calibration,
              "input_shape": list(input_shape), "ablation_config": ablation.to_dict(),
              "train_rates": rates,
              "flags": run_info or {},
              "command": _command(workdir, config, train_records, eval_data, teacher_records,
                                  calibration_data, seed)}
    budgets = _resolved_budgets(ablation)
    placement = {"backbone": ablation.placement_backbone, "budget": ablation.placement_budget,
                 "budget_description": next(b["description"] for b in budgets
                                            if b["name"] == ablation.placement_budget)}
    block, budget = ablation.placement_backbone, ablation.placement_budget

    grid = {(b["name"], k): f"backbone/{b['name']}/{k}" for b in budgets
            for k in ablation.backbones}

    def found(names):
        """{key: cell} of the cells run so far among {key: cell name}."""
        return {key: run.results[name] for key, name in names.items() if name in run.results}

    def write_tables():
        made = {
            "backbone": tables.backbone_table(header, ablation.backbones, budgets, found(grid)),
            "placement": tables.single_table(
                "placement", header, tables.PLACEMENT_ROWS,
                found({row: f"placement/{row}" for row in tables.PLACEMENT_ROWS}), placement),
            "teacher": tables.single_table(
                "teacher", header, tables.TEACHER_ROWS,
                found({row: f"teacher/{row}" for row in tables.TEACHER_ROWS}), placement),
        }
        for table in made.values():
            tables.write(workdir, table)
        return made

    for (b, k), name in grid.items():
        run.cell(name, lambda b=b, k=k: run.int8_cell(b, k))
        write_tables()
    for row in tables.PLACEMENT_ROWS:
        run.cell(f"placement/{row}",
                 lambda row=row: run.int8_cell(budget, block, row, with_parity=True))
        write_tables()
    run.cell("teacher/without", lambda: run.int8_cell(budget, block))
    if teacher_records:
        run.cell("teacher/with", lambda: run.int8_cell(budget, block, "teacher"))
    else:
        run.results["teacher/with"] = tables.not_run(NO_TEACHER)
    return write_tables()
