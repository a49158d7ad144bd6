"""What the job measures at its end: scores, sizes, latency, parity, pictures; and the report.

Every score is what `tools/evaluate.py --model=SPEC --data=DIR` computes for the same model spec
(`keras_sr.evaluate.make_predictor` + `evaluate_benchmark`), so the report and the tool agree.
"""
import collections
import math
import os
import time

import numpy as np

from keras_sr import benchmark, evaluate, report
from keras_sr.common import image_io, machine, record_schema
from keras_sr.data.benchmark import load_benchmark, lr_path
from keras_sr.export import parity, tflite_lib, tflite_runner
from keras_sr.workdir import WorkDir

# Interpreter threads of every latency in the report (a phone big-core pair, the CI machine).
LATENCY_THREADS = 2


def _model_facts(spec, input_shape):
    """(parameters, file bytes, latency ms) of a model spec; None where it does not apply."""
    if spec == "bicubic":
        return None, None, benchmark.opencv_bicubic(input_shape, LATENCY_THREADS)["median_ms"]
    if spec.endswith(".tflite"):
        with open(spec, "rb") as f:
            blob = f.read()
        return (tflite_lib.describe(blob)["parameters"], len(blob),
                tflite_runner.benchmark_tflite(blob, num_threads=LATENCY_THREADS))
    return None, None, None  # a Keras model (the QAT model) is a training artifact


def teacher_predictor(teacher_dir, data_dir):
    """The precomputed teacher outputs of a set's LR images, as a predictor.

    Args:
        teacher_dir: teacher records written by the teacher bridge for `data_dir`'s LR folder.
        data_dir: the EDSR-layout set.

    Returns:
        Callable uint8 LR (h, w, 3) -> the teacher's uint8 (3h, 3w, 3) for that LR image (looked
        up by its pixels: `evaluate_benchmark` passes only the image).
    """
    by_id = {}
    for path in record_schema.list_record_files(teacher_dir):
        for serialized in record_schema.read_tfrecord(path):
            example = record_schema.decode_example(serialized, record_schema.TEACHER_FEATURES)
            by_id[example["image_id"].decode().rpartition("/")[2]] = example["teacher_png"]
    table = {}
    for name, lr, _, _ in load_benchmark(data_dir):
        stem = os.path.splitext(os.path.basename(lr_path(data_dir, name, 3)))[0]
        if stem not in by_id:
            raise FileNotFoundError(f"{teacher_dir} has no teacher output for {name} ({stem})")
        table[image_io.to_rgb(lr).tobytes()] = image_io.to_rgb(
            image_io.decode_image(by_id[stem], name=f"{teacher_dir}:{stem}"))
    return lambda lr: table[np.ascontiguousarray(lr).tobytes()]


def collect(workdir, sets, models, input_shape, parts, started, flags=None, curves=None,
            teachers=None):
    """Scores every model on every set, writes report.html / report.md / metrics.json.

    Args:
        workdir: the job's folder (the report goes there).
        sets: {name: EDSR-layout folder}; the first is the validation set, whose images become
            the report's pictures.
        models: {row name: `make_predictor` spec}; must hold "bicubic", "fp32", "qat" and "int8"
            (the INT8 .tflite, checked against the "qat" work directory for parity).
        input_shape: the fixed NHWC export shape (latency is measured there).
        parts: {part name: {"seconds": ...}} of the job (wall time of each part).
        started: time.time() at the job's start.
        flags: the resolved flags of the binary.
        curves: {stage name: training work directory} for the training curves.
        teachers: {set name: teacher records of its LR images} for a "teacher" row, or None.

    Returns:
        The metrics dict (WORKDIR/metrics.json).
    """
    facts = {name: _model_facts(spec, input_shape) for name, spec in models.items()}
    predictors = {name: evaluate.make_predictor(spec) for name, spec in models.items()}
    table = []
    for set_name, data_dir in sets.items():
        rows = []
        for name, predictor in predictors.items():
            scores = evaluate.evaluate_benchmark(predictor, data_dir)
            parameters, size, latency = facts[name]
            rows.append({"model": name, **{k: scores[k] for k in evaluate.METRIC_KEYS},
                         "parameters": parameters, "file_bytes": size, "latency_ms": latency})
        if teachers:
            scores = evaluate.evaluate_benchmark(teacher_predictor(teachers[set_name], data_dir),
                                                 data_dir)
            rows.insert(1, {"model": "teacher", **{k: scores[k] for k in evaluate.METRIC_KEYS},
                            "parameters": None, "file_bytes": None, "latency_ms": None})
        fp32_parameters = facts["fp32"][0]
        for row in rows:  # the QAT model is the INT8 model's graph
            if row["model"] == "qat":
                row["parameters"] = fp32_parameters
        table.append({"name": set_name, "path": data_dir, "rows": rows})

    val_name, val_dir = next(iter(sets.items()))
    examples, lr_images = [], []
    for name, lr, hr, _ in load_benchmark(val_dir):
        lr = image_io.to_rgb(lr)
        lr_images.append((name, lr))
        examples.append({"name": name, "lr": lr, "hr": image_io.to_rgb(hr),
                         **{k: predictors[k](lr) for k in ("bicubic", "fp32", "int8")}})
    q_model = WorkDir.open(models["qat"]).load("qat")
    parity_result = parity.parity_report(q_model, predictors["int8"], lr_images)["overall"]
    # Identical outputs have an infinite PSNR: the identical fraction already says so.
    parity_result = {k: v for k, v in parity_result.items() if math.isfinite(v)}
    with open(models["int8"], "rb") as f:
        ops = collections.Counter(tflite_lib.describe(f.read())["ops"])
    speed = [{"model": row["model"], "latency_ms": row["latency_ms"], "psnr_y": row["psnr_y"],
              "set": val_name} for row in table[0]["rows"] if row["latency_ms"] is not None]
    wall = time.time() - started
    data = {
        "title": f"keras-sr job: {os.path.abspath(workdir)}",
        "machine": {k: v for k, v in machine.machine_info().items() if k != "text"},
        "wall_seconds": wall,
        "stages": [{"name": name, "seconds": part["seconds"]} for name, part in parts.items()],
        "flags": flags or {},
        "sets": table,
        "examples": examples,
        "curves": curves or {},
        "speed": speed,
        "parity": parity_result,
        "ops": dict(ops),
    }
    report.write_report(workdir, data)
    return {k: v for k, v in data.items() if k != "examples"}
