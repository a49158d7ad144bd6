"""The units an ablation cell is made of: a training stage, an export, a score, a parity check.

Each returns a JSON-serializable summary (the ledger records it) that names the keras-sr command
doing the same by hand, so every number of the tables can be reproduced one tool at a time.
"""
import math
import os
import shlex

import tf_keras as keras

from keras_sr import configs, evaluate
from keras_sr import workdir as wd
from keras_sr.data import sources
from keras_sr.export import files, parity, tflite_lib, tflite_runner
from keras_sr.train import lib, speed


def train_rates(ablation):
    """Stage-1 steps/s of every backbone of `ablation`, timed in interleaved rounds here.

    Pure training compute (Adam + L1 on a fixed batch of the stage's shape, `speed.
    student_train_rates`): the forms take turns, so a load that changes during the run shifts
    every form alike and their ratios stay those of an idle machine.

    Returns:
        {"<block type>_steps_per_s", "<block type>_ratio_to_deploy", "deploy_form_steps_per_s"}.
    """
    config = configs.get_config(1, ablation.stage_config)
    rates = speed.student_train_rates(ablation.model, ablation.backbones,
                                      batch_size=config.batch_size, lr_patch=config.lr_patch)
    keras.backend.clear_session()
    return rates


def stage_config(ablation, stage, budget, block_type=None, qat_graph="fused", rates=None):
    """The `TrainConfig` of one stage of a cell.

    A Stage-1 time budget with `rates` becomes steps: the budget's minutes times the block
    type's measured rate (at most the budget's step ceiling), so that every row of an equal-time
    column gets the same compute time whatever else the machine did while each row trained.
    Without `rates`, and in Stage 3, the minutes are a wall-clock budget
    (`TrainConfig.time_budget_minutes`).

    Args:
        ablation: the `AblationConfig`.
        stage: 1 or 3.
        budget: the cell's `Budget`.
        block_type: Stage 1: the row's block type (Stage 3 takes the model of its Stage 1).
        qat_graph: Stage 3: `QATConfig.graph`, "fused" (deploy-before-QAT) or "multibranch".
        rates: `train_rates` of the ablation, or None.
    """
    config = configs.get_config(stage, ablation.stage_config)
    fields = {"seed": ablation.seed, "time_budget_minutes": budget.minutes(stage)}
    if budget.steps(stage) is not None:
        fields["steps"] = budget.steps(stage)
    if stage == 1:
        fields["model"] = ablation.model.replace(block_type=block_type)
        if budget.minutes(1) and rates:
            rate = rates[f"{block_type}_steps_per_s"]
            fields["steps"] = min(fields.get("steps", config.steps),
                                  max(1, round(budget.minutes(1) * 60 * rate)))
            fields["time_budget_minutes"] = 0.0
    else:
        fields["qat"] = config.qat.replace(graph=qat_graph)
    return config.replace(**fields)


def _command(tool, *args):
    return " ".join([tool, *(shlex.quote(str(a)) for a in args)])


def train_command(config, variant, workdir, records, init_from=None, teacher_records=None):
    """The `keras-sr-train` command line of a stage config made by `stage_config`.

    Model fields that no flag sets (a smoke model's size) follow as a shell comment; the stage's
    config.json holds the exact config either way.
    """
    base = configs.get_config(config.stage, variant)
    args = [f"--stage={config.stage}", f"--config={variant}"]
    note = ""
    if config.stage == 1:
        model = config.model
        args.append(f"--block_type={model.block_type}")
        if model.anchor != base.model.anchor:
            args.append("--anchor" if model.anchor else "--noanchor")
        other = {k: v for k, v in model.to_dict().items()
                 if k not in ("block_type", "anchor") and v != getattr(base.model, k)}
        if other:
            note = "  # model fields no flag sets: " + ", ".join(
                f"{k}={v}" for k, v in sorted(other.items()))
    if config.qat.graph != base.qat.graph:
        args.append(f"--qat_graph={config.qat.graph}")
    args += [f"--steps={config.steps}", f"--time_budget_minutes={config.time_budget_minutes:g}",
             f"--seed={config.seed}", f"--train_records={records}", f"--workdir={workdir}"]
    if init_from:
        args.append(f"--init_from={init_from}")
    if teacher_records:
        args.append(f"--teacher_records={teacher_records}")
    return _command("keras-sr-train", *args) + note


def train_stage(config, variant, workdir, records, init_from=None, teacher_records=None,
                run_info=None):
    """Trains (or resumes, from its checkpoints) one stage; no validation, so that equal-time
    runs spend their budget on training.

    Returns:
        {"workdir", "steps", "wall_seconds" (of this call: a resumed run's last part),
        "steps_per_second", "config" (the stage's config.json: the exact config), "command"}.
    """
    metrics = lib.train(config, workdir, records, init_from=init_from,
                        teacher_records=teacher_records, run_info=run_info)
    # Dozens of stages run in one process: drop the finished one's graphs.
    keras.backend.clear_session()
    return {"workdir": workdir, "steps": metrics["step"], "wall_seconds": metrics["wall_seconds"],
            "steps_per_second": metrics.get("steps_per_second"),
            "config": wd.read_config(workdir).to_dict(),
            "command": train_command(config, variant, workdir, records, init_from,
                                     teacher_records)}


_EXPORT_FLAGS = {"int8": [], "float": ["--float"], "ptq": ["--ptq"]}


def export(source, output, kind, input_shape, calibration_data=None):
    """Exports a work directory's model (`files.export_workdir`) and checks an integer one.

    Args:
        source: the work directory (Stage 3 for "int8"; Stage 1 for "float" and "ptq").
        output: the .tflite path.
        kind: "int8" (QAT), "float" or "ptq".
        input_shape: the fixed NHWC export shape.
        calibration_data: for "ptq": the representative LR images.

    Returns:
        {"path", "kind", "parameters", "bytes", "check_int8" ("pass", "FAIL: <why>", or n/a for
        the FP32 model), "command"}.
    """
    summary = files.export_workdir(source, output, input_shape, "uint8", kind,
                                   calibration_data=calibration_data)
    with open(output, "rb") as f:
        blob = f.read()
    check = "n/a (FP32 model)"
    if kind != "float":
        try:
            tflite_lib.check_int8(blob)
            check = "pass"
        except ValueError as e:
            check = f"FAIL: {e}"
    args = [f"--workdir={source}", f"--output={output}",
            "--input_shape=" + ",".join(str(v) for v in input_shape), *_EXPORT_FLAGS[kind]]
    if kind == "ptq":
        args.append(f"--calibration_data={calibration_data}")
    return {"path": output, "kind": kind, "parameters": summary["parameters"],
            "bytes": len(blob), "check_int8": check,
            "command": _command("keras-sr-export-tflite", *args)}


def score(model, eval_dir):
    """PSNR/SSIM (Y and RGB) of a .tflite model on an EDSR-layout set, as `keras-sr-evaluate`."""
    result = evaluate.evaluate_benchmark(evaluate.make_predictor(model), eval_dir)
    return {**{k: result[k] for k in evaluate.METRIC_KEYS}, "num_images": result["num_images"],
            "command": _command("keras-sr-evaluate", f"--model={model}", f"--data={eval_dir}")}


def parity_check(stage3_dir, tflite, eval_dir):
    """INT8 TFLite vs its Keras QAT model on the evaluation set's LR images (`parity_report`).

    Returns:
        The overall `parity_stats` plus "ok" (the parity claim) and "command"; an infinite PSNR
        (identical outputs) is left out, the identical share already says so.
    """
    run = wd.WorkDir.open(stage3_dir)
    images = sources.load_lr_images(eval_dir, run.config.model.scale)
    overall = parity.parity_report(run.load("qat"), tflite_runner.TFLitePredictor(tflite),
                                   images)["overall"]
    keras.backend.clear_session()
    return {**{k: v for k, v in overall.items() if not (isinstance(v, float)
                                                        and not math.isfinite(v))},
            "command": _command("keras-sr-parity", f"--workdir={stage3_dir}",
                                f"--tflite={tflite}", f"--data={eval_dir}")}


def model_path(cell_dir, name):
    """Where a cell's exported model `name` (e.g. "int8_multibranch") is written."""
    return os.path.join(cell_dir, "export", f"{name}.tflite")
