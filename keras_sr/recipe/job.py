"""The whole method in one resumable, time-budgeted job: data, training, QAT, export, report.

    keras-sr-run --workdir=runs/demo                       # embedded photographs, 10 minutes
    keras-sr-run --workdir=runs/t91 --train_source=../shared/data/T91/HR \\
        --val_source=../shared/data/Set5 --eval_data=../shared/data/Set14

Every part writes into WORKDIR and is skipped (done) or resumed (interrupted) when the job is run
again with the same settings; other settings in the same WORKDIR are refused:

    WORKDIR/job.json        the job's settings and the parts done, with their wall times
    WORKDIR/records/        SR TFRecords of the training source (teacher/: teacher outputs)
    WORKDIR/val/, eval/     the validation and evaluation sets in the EDSR benchmark layout
    WORKDIR/stage{1,2,3}/   training work directories (checkpoints, TensorBoard logs, metrics)
    WORKDIR/export/         student_int8.tflite and student_fp32.tflite at the fixed deploy shape
    WORKDIR/report.html     the report (also report.md, metrics.json)
    WORKDIR/.lock           while the job runs: a second job in WORKDIR is refused, naming it
"""
import hashlib
import os
import subprocess
import sys
import time

from absl import logging

from keras_sr import configs, data, models
from keras_sr.common import ledger, lock
from keras_sr.configs import job as job_configs
from keras_sr.export import files, tflite_lib
from keras_sr.recipe import results
from keras_sr.recipe.progress import JobProgress
from keras_sr.train import lib, speed

JOB_FILE = "job.json"
INT8_MODEL, FP32_MODEL = job_configs.INT8_MODEL, job_configs.FP32_MODEL


# A rerun with other settings in the same work directory is refused with this error.
JobMismatch = ledger.SettingsMismatch


def check_sources(train_source, val_source, eval_data=()):
    """Lists every source of the job before it writes anything (`keras_sr.data.check_sources`)."""
    data.check_sources([("--train_source", train_source), ("--val_source", val_source),
                        *(("--eval_data", spec) for spec in eval_data)])


def _set_name(spec):
    """How the report names a set: its folder's name, or the spec of a builtin or TFDS set."""
    kind, _, arg = spec.partition(":")
    if kind in ("builtin", "tfds"):
        return spec
    return os.path.basename(os.path.normpath(arg if kind in ("folder", "benchmark") else spec))


def _key(name):
    """A set's name as a folder name."""
    return name.replace(":", "_").replace("/", "_")


def _eval_dir(workdir, spec):
    """Where an evaluation source is written in the benchmark layout."""
    return os.path.join(workdir, "eval", _key(_set_name(spec)))


def check_teacher(teacher_records=None, teacher_checkpoint=None, teacher_checkpoint_sha256=None):
    """Checks the teacher flags before the job writes anything.

    Raises:
        ValueError: both teacher inputs, a sha256 without a checkpoint, a missing checkpoint, or
            one whose sha256 is not `teacher_checkpoint_sha256`; the message names the flag.
    """
    if teacher_records and teacher_checkpoint:
        raise ValueError("give --teacher_records or --teacher_checkpoint, not both")
    if teacher_checkpoint_sha256 and not teacher_checkpoint:
        raise ValueError("--teacher_checkpoint_sha256 needs --teacher_checkpoint")
    if teacher_checkpoint and not os.path.isfile(teacher_checkpoint):
        raise ValueError(f"--teacher_checkpoint={teacher_checkpoint}: no such file")
    if teacher_checkpoint_sha256:
        with open(teacher_checkpoint, "rb") as f:
            found = hashlib.sha256(f.read()).hexdigest()
        expected = teacher_checkpoint_sha256.strip().lower()
        if found != expected:
            raise ValueError(f"--teacher_checkpoint={teacher_checkpoint} has sha256 {found}, not "
                             f"--teacher_checkpoint_sha256={expected}: another or a damaged file")


def run_recipe(workdir, train_source="builtin:train", val_source="builtin:val", config="default",
               teacher_records=None, teacher_checkpoint=None, eval_data=(),
               input_shape=tflite_lib.DEFAULT_INPUT_SHAPE, strategy="default",
               time_budget_minutes=None, run_info=None, started=None,
               teacher_checkpoint_sha256=None):
    """Runs (or resumes) the whole job; see the module docstring.

    Args:
        workdir: output folder of the whole job.
        train_source, val_source: source specs of `keras_sr.data.parse_source` (a bare folder
            is taken as an EDSR layout when it has HR/, else as a folder of HR images).
        config: the `keras_sr.configs.job` variant ("default", "smoke", "paper").
        teacher_records: teacher TFRecords for Stages 2 and 3 (precomputed elsewhere).
        teacher_checkpoint: an official MambaIRv2-Light x3 checkpoint: the job precomputes the
            teacher outputs itself (in a subprocess: keras_sr never imports torch).
        eval_data: further source specs to evaluate the final models on.
        input_shape: fixed NHWC shape of the exported models.
        strategy: tf.distribute strategy name of the training stages.
        time_budget_minutes: wall time of the whole job; None: the config's.
        run_info: resolved flags, stored in metrics.json.
        started: time.time() at which the job started (default: now); the budget counts from it.
        teacher_checkpoint_sha256: the hex sha256 `teacher_checkpoint` must have (checked before
            anything is written, and again by the bridge that loads it), or None.

    Returns:
        The report's metrics dict (also WORKDIR/metrics.json).

    Raises:
        ValueError: bad teacher flags (`check_teacher`).
        JobMismatch: WORKDIR holds a job with other settings.
        lock.LockHeld: another process runs a job in WORKDIR (`keras_sr.common.lock`).
    """
    started = started or time.time()
    job = job_configs.get_job_config(config)
    if time_budget_minutes is not None:
        job = job.replace(time_budget_minutes=time_budget_minutes)
    check_teacher(teacher_records, teacher_checkpoint, teacher_checkpoint_sha256)
    settings = {"train_source": train_source, "val_source": val_source, "config": config,
                "teacher_records": teacher_records, "teacher_checkpoint": teacher_checkpoint,
                "eval_data": list(eval_data), "input_shape": list(input_shape),
                "strategy": strategy, "time_budget_minutes": job.time_budget_minutes}
    check_sources(train_source, val_source, eval_data)
    # One job per work directory at a time (its parts lock their own folders too).
    with lock.WorkdirLock(workdir):
        state = ledger.Ledger(workdir, settings, JOB_FILE, "a job")
        budget = 60.0 * job.time_budget_minutes
        deadline = started + budget if budget else None
        with_teacher = bool(teacher_records or teacher_checkpoint)
        train_stages = job.stages(with_teacher)
        parts = ["data", *(["teacher"] if teacher_checkpoint else []),
                 *(["speed"] if budget else []), *train_stages, "export", "evaluate"]
        view = JobProgress(parts, deadline)

        def part(name, fn, total=None):
            if state.done(name):
                return state.part(name, fn)  # the recorded result
            view.start(name, total)
            start = time.time()
            result = state.part(name, fn)
            view.done(name, time.time() - start)
            return result

        records = os.path.join(workdir, "records")
        val_dir = os.path.join(workdir, "val")
        eval_dirs = [_eval_dir(workdir, spec) for spec in eval_data]

        def prepare():
            data.prepare_records(train_source, records)
            data.prepare_benchmark(val_source, val_dir)
            for spec, out in zip(eval_data, eval_dirs):
                data.prepare_benchmark(spec, out)

        part("data", prepare)
        teacher_eval = os.path.join(workdir, "teacher_eval")
        set_dirs = {_set_name(val_source): val_dir,
                    **{_set_name(spec): out for spec, out in zip(eval_data, eval_dirs)}}
        if teacher_checkpoint:
            teacher_records = os.path.join(workdir, "teacher")

            def teacher():
                # The training records for Stages 2-3, and every evaluation set's LR images for the
                # report's teacher row.
                _precompute_teacher(teacher_checkpoint, teacher_checkpoint_sha256, teacher_records,
                                    records=records)
                for name, folder in set_dirs.items():
                    _precompute_teacher(teacher_checkpoint, teacher_checkpoint_sha256,
                                        os.path.join(teacher_eval, _key(name)),
                                        images=os.path.join(folder, "LR_bicubic", "X3"))

            part("teacher", teacher)

        # The machine's speed, measured in its first seconds, sizes what follows training.
        probe_rate = part("speed", lambda: _speed_probe(job)) if budget else None
        previous = None
        for i, stage in enumerate(train_stages):
            number = int(stage[-1])
            stage_config = configs.get_config(number, job.stage_config)
            if number == 1 and job.model is not None:
                stage_config = stage_config.replace(model=job.model)
            if budget:
                remaining = deadline - time.time() - job.tail_seconds(probe_rate)
                seconds = job.stage_seconds(stage, remaining, train_stages[i:])
                stage_config = stage_config.replace(time_budget_minutes=max(seconds, 1.0) / 60.0)
            stage_dir = os.path.join(workdir, stage)
            part(stage, lambda c=stage_config, d=stage_dir, p=previous: lib.train(
                c, d, records, val_data=val_dir, init_from=p,
                teacher_records=teacher_records if c.stage > 1 else None, strategy=strategy,
                run_info={"job": settings}, on_step=view.update), total=stage_config.steps)
            previous = stage_dir

        fp32_stage = os.path.join(workdir, train_stages[-2])
        part("export", lambda: {
            "int8": files.export_workdir(previous, os.path.join(workdir, INT8_MODEL),
                                         tuple(input_shape), "uint8", "int8"),
            "fp32": files.export_workdir(fp32_stage, os.path.join(workdir, FP32_MODEL),
                                         tuple(input_shape), kind="float")})
        # Evaluation and the report always run (they are cheap and read only finished files).
        view.start("evaluate")
        teachers = {name: os.path.join(teacher_eval, _key(name)) for name in set_dirs} \
            if teacher_checkpoint else None
        report = results.collect(
            workdir, set_dirs, {"bicubic": "bicubic", "fp32": os.path.join(workdir, FP32_MODEL),
                                "qat": previous, "int8": os.path.join(workdir, INT8_MODEL)},
            input_shape=tuple(input_shape), parts=state.state["done"], started=started,
            flags=run_info,
            curves={s: os.path.join(workdir, s) for s in train_stages}, teachers=teachers)
        view.close()
        return report


def _speed_probe(job, steps=10):
    """Train steps/s of the job's Stage-1 student on this machine (a few seconds)."""
    stage_config = configs.get_config(1, job.stage_config)
    model = models.build_student(job.model or stage_config.model)
    return speed.train_steps_per_second(model, stage_config.batch_size, stage_config.lr_patch,
                                            steps=steps, warmup=2)


def _precompute_teacher(checkpoint, sha256, output, records=None, images=None):
    """Runs the teacher bridge on SR records or an LR folder, in its own process (keras_sr never
    imports torch); `sha256`: the checkpoint's expected hash, or None."""
    source = f"--records={records}" if records else f"--images={images}"
    command = [sys.executable, "-m", "keras_sr_tools.precompute_teacher",
               f"--checkpoint={checkpoint}", source, f"--output={output}"]
    if sha256:
        command.append(f"--checkpoint_sha256={sha256}")
    logging.info("Teacher: %s", " ".join(command))
    subprocess.run(command, check=True)
