"""Speed benchmarks of keras-sr, with the targets the project holds itself to.

    keras-sr-benchmark --json=bench.json                      # everything
    keras-sr-benchmark --only=train,tflite --stage3_workdir=runs/stage3

Sections (--only):
    train     Adam + L1 steps/s of every training form (BN MobileOne, its online form, RepConv,
              plain) and of the fused deploy form, in one process (batch 16, LR patch 48), and each
              form's ratio to the deploy form. Target: the online form >= 0.8x the deploy form.
    pipeline  examples/s of the tf.data input pipeline alone (LR patch 64, batch 16) on
              --train_records (default: the embedded photographs).
    tflite    median latency of the INT8 and the FP32 TFLite model of the same fused graph at
              --input_shape with --threads threads (XNNPACK). Target: INT8 >= 2.5x faster.
              Uses --stage3_workdir when given, else an untrained QAT model (speed does not
              depend on the weights).
    teacher   MambaIRv2-Light x3 (teacher_bridge, torch) images/s and s per LR megapixel on a
              64x64 LR input. Target: <= 1.1 s, half the 2.2 s of the official code with its
              reference scan. Weights: --teacher_checkpoint, else random ones.

Numbers depend on the machine and on its other load: run it on an idle machine.
"""
import json
import os
import tempfile

from absl import app, flags

import keras_sr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from keras_sr.common import cli, fileio
from keras_sr.export import tflite_lib

SECTIONS = ("train", "pipeline", "tflite", "teacher")
TARGETS = {"train": ("mobileone_online_ratio_to_deploy", ">=", 0.8),
           "tflite": ("int8_speedup", ">=", 2.5),
           "teacher": ("seconds_64x64", "<=", 1.1)}

_ONLY = flags.DEFINE_list("only", list(SECTIONS), f"Sections to run, from {SECTIONS}.")
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")
_RECORDS = flags.DEFINE_string("train_records", None, "SR TFRecords for the pipeline section.")
_STAGE3 = flags.DEFINE_string("stage3_workdir", None, "Stage-3 work directory for the tflite section.")
_SHAPE = cli.define_shape("input_shape", tflite_lib.DEFAULT_INPUT_SHAPE,
                          "NHWC shape of the TFLite models.", __name__)
_THREADS = flags.DEFINE_integer("threads", 2, "Interpreter threads.")
_TEACHER = flags.DEFINE_string("teacher_checkpoint", None, "MambaIRv2-Light x3 checkpoint.")
_STEPS = flags.DEFINE_integer("train_steps", 50, "Timed steps per form in the train section.")


def bench_train():
    from keras_sr import benchmark

    return benchmark.student_train_rates(steps=_STEPS.value)


def bench_pipeline():
    from keras_sr import data

    records = _RECORDS.value
    if records is None:
        records = tempfile.mkdtemp(prefix="keras-sr-bench-")
        data.prepare_records("builtin:train", records, num_shards=2)
    dataset = data.make_train_dataset(records, lr_patch=64, batch_size=16, seed=0)
    return {"examples_per_s": data.pipeline_throughput(dataset, num_batches=200),
            "records": records}


def bench_tflite():
    import numpy as np

    from keras_sr import configs, models, quant, workdir
    from keras_sr.export import tflite_runner

    shape = _SHAPE()
    if _STAGE3.value:
        q_model = workdir.load(_STAGE3.value, "qat")
    else:
        q_model = quant.build_qat_model(models.build_student(reparameterized=True))
        batch = np.random.default_rng(0).random((2, 64, 64, 3), np.float32)
        quant.calibrate(q_model, [batch], configs.QATConfig(calibration_batches=1))
    int8 = tflite_lib.convert_qat(q_model, shape)
    fp32 = tflite_lib.convert_float(quant.float_twin(q_model, models.build_student(
        reparameterized=True)), shape)
    int8_ms = tflite_runner.benchmark_tflite(int8, _THREADS.value)
    fp32_ms = tflite_runner.benchmark_tflite(fp32, _THREADS.value)
    return {"input_shape": list(shape), "threads": _THREADS.value, "int8_ms": int8_ms,
            "fp32_ms": fp32_ms, "int8_speedup": fp32_ms / int8_ms,
            "int8_bytes": len(int8), "fp32_bytes": len(fp32)}


def bench_teacher():
    import torch

    from teacher_bridge import inference, load, model as teacher_model

    if _TEACHER.value:
        teacher = load.load_teacher(_TEACHER.value, routing="gumbel")
    else:
        teacher = teacher_model.MambaIRv2Light("light_x3").eval().requires_grad_(False)
    (result,) = inference.benchmark(teacher, sizes=((64, 64),), repeats=3)
    return {**result, "seconds_64x64": min(result["seconds"]), "torch_threads":
            torch.get_num_threads()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_ONLY.value) - set(SECTIONS))
    if unknown:
        raise app.UsageError(f"--only: unknown sections {unknown}; choose from {SECTIONS}")
    results = {}
    for section in SECTIONS:
        if section not in _ONLY.value:
            continue
        result = globals()[f"bench_{section}"]()
        if section in TARGETS:
            key, op, target = TARGETS[section]
            value = result[key]
            result["target"] = f"{key} {op} {target}"
            result["meets_target"] = value >= target if op == ">=" else value <= target
        results[section] = result
        print(f"[{section}] " + json.dumps(result, default=str))
    if _JSON.value:
        fileio.write_json(_JSON.value, {"results": results, "cpu_count": os.cpu_count(),
                                        "flags": cli.resolved_flags(__name__)})


def run():
    app.run(main)


if __name__ == "__main__":
    run()
