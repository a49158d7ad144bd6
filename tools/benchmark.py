"""Speed benchmarks of keras-sr: everything a speed ratio needs, measured in one run.

    keras-sr-benchmark --json=bench.json --markdown=bench.md        # everything
    keras-sr-benchmark --only=tflite --runs=5 --data=builtin:val
    keras-sr-benchmark --only=train,tflite --stage3_workdir=runs/stage3

Sections (--only):
    train     Adam + L1 steps/s of every training form (BN MobileOne, its online forms, RepConv,
              plain) and of the fused deploy form, in one process (batch 16, LR patch 48), and each
              form's ratio to the deploy form. Target: the online form >= 0.8x the deploy form.
    pipeline  examples/s of the tf.data input pipeline alone (LR patch 64, batch 16) on
              --train_records (default: the embedded photographs).
    tflite    LiteRT latency (median, min-max over --runs after --warmup) of the INT8 and FP32
              model of every architecture the builders offer (the student, the anchored student,
              and ABPN / FSRCNN where `ModelConfig` has `arch`; --models picks) and of --tflite
              files, at each of --shapes with each of --threads, XNNPACK; INT8 also with
              LiteRT's builtin kernels. Multiply-accumulates per frame counted from each graph,
              achieved GMAC/s, and its fraction of the CPU's int8 ceiling (stacks of 32- and
              128-channel int8 3x3 convs timed the same way); OpenCV bicubic x3 at the same
              sizes; builtin-vs-XNNPACK agreement on photographs (--data, else the embedded
              validation photographs) and, with --data, the PSNR-Y change. Models are untrained
              unless --stage3_workdir gives the student (speed does not depend on the weights;
              agreement and PSNR do). Targets are ratios, at the first shape with the most
              threads: INT8 >= 2.5x faster than FP32; reported without a threshold: the
              student's INT8 latency over ABPN's, its fraction of the 32-channel ceiling.
    teacher   MambaIRv2-Light x3 (teacher_bridge, torch) images/s and s per LR megapixel on a
              64x64 LR input. Target: <= 1.1 s, half the 2.2 s of the official code with its
              reference scan. Weights: --teacher_checkpoint, else random ones.

Writes --json (results, the machine, the flags) and --markdown (tables naming the CPU; also
printed). Numbers depend on the machine and on its other load: run it on an idle machine.
"""
import json
import os
import tempfile

from absl import app, flags

import keras_sr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from keras_sr import benchmark
from keras_sr.common import cli, fileio, machine
from keras_sr.export import tflite_lib

SECTIONS = ("train", "pipeline", "tflite", "teacher")
TARGETS = {"train": ("mobileone_online_ratio_to_deploy", ">=", 0.8),
           "tflite": ("int8_speedup", ">=", 2.5),
           "teacher": ("seconds_64x64", "<=", 1.1)}

_ONLY = flags.DEFINE_list("only", list(SECTIONS), f"Sections to run, from {SECTIONS}.")
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")
_MARKDOWN = flags.DEFINE_string("markdown", None, "Write the results here as Markdown tables.")
_RECORDS = flags.DEFINE_string("train_records", None, "SR TFRecords for the pipeline section.")
_STAGE3 = flags.DEFINE_string("stage3_workdir", None, "Stage-3 work directory: the tflite "
                              "section's student (default: untrained).")
_SHAPES = flags.DEFINE_list("shapes", [f"{h}x{w}" for _, h, w, _ in tflite_lib.DEPLOY_SHAPES],
                            "LR input sizes HxW of the tflite section (batch 1, RGB).")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "Interpreter thread counts.")
_RUNS = flags.DEFINE_integer("runs", 10, "Timed invocations per latency.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed invocations before them.", lower_bound=0)
_MODELS = flags.DEFINE_list("models", None, "Architectures to build and time (default: all the "
                            "builders offer).")
_TFLITE = flags.DEFINE_list("tflite", [], "Also time these files: name=path.tflite,...")
_DATA = flags.DEFINE_string("data", None, "EDSR-layout folder or builtin:val: the photographs of "
                            "the kernel agreement and the PSNR-Y change of the builtin kernels.")
_TEACHER = flags.DEFINE_string("teacher_checkpoint", None, "MambaIRv2-Light x3 checkpoint.")
_STEPS = flags.DEFINE_integer("train_steps", 50, "Timed steps per form in the train section.")

flags.register_validator("shapes", lambda v: all(len(s.split("x")) == 2 and all(
    p.isdigit() and int(p) > 0 for p in s.split("x")) for s in v),
    message="--shapes must be sizes HxW, e.g. 360x640,720x1280")
flags.register_validator("threads", lambda v: v and all(t.isdigit() and int(t) > 0 for t in v),
                         message="--threads must be positive integers")
flags.register_validator("tflite", lambda v: all("=" in t and t.split("=", 1)[1].endswith(".tflite")
                                                 for t in v),
                         message="--tflite must be name=path.tflite,...")


def bench_train():
    from keras_sr.train import speed

    return speed.student_train_rates(steps=_STEPS.value)


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
    from keras_sr.data import builtin, sources

    known = [name for name, _ in benchmark.model_specs()]
    unknown = sorted(set(_MODELS.value or ()) - set(known))
    if unknown:
        raise app.UsageError(f"--models: {unknown} cannot be built here; choose from {known}")
    data_dir = _DATA.value
    if data_dir == "builtin:val":
        data_dir = tempfile.mkdtemp(prefix="keras-sr-bench-val-")
        builtin.write_benchmark_layout(data_dir)
    images = [lr for _, lr in sources.load_lr_images(data_dir or "builtin:val")]
    shapes = [(1, *map(int, s.split("x")), 3) for s in _SHAPES.value]
    return benchmark.tflite_benchmark(
        shapes, [int(t) for t in _THREADS.value], _RUNS.value, _WARMUP.value, _MODELS.value,
        dict(t.split("=", 1) for t in _TFLITE.value), _STAGE3.value, images, data_dir,
        log=lambda message: print(f"[tflite] {message}", flush=True))


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
            result["meets_target"] = (None if value is None else
                                      value >= target if op == ">=" else value <= target)
        results[section] = result
        if section != "tflite":  # its tables are the Markdown below
            print(f"[{section}] " + json.dumps(result, default=str))
    info = machine.machine_info()
    markdown = benchmark.to_markdown(results, info)
    print(markdown)
    if _MARKDOWN.value:
        with fileio.atomic_open(_MARKDOWN.value, "w") as f:
            f.write(markdown)
    if _JSON.value:
        fileio.write_json(_JSON.value, {"results": results, "machine": info,
                                        "cpu_count": os.cpu_count(),
                                        "flags": cli.resolved_flags(__name__)})


def run():
    cli.run_main(main)


if __name__ == "__main__":
    run()
