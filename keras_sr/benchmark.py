"""Speed measurements reported by `tools/benchmark.py` (targets live there, not in tests).

Training step rates live in `keras_sr.train.speed`. TFLite (`tflite_benchmark`): LiteRT latency of INT8 and FP32
models (XNNPACK; INT8 also with the builtin kernels), their MACs per frame and GMAC/s against the
CPU's int8 ceiling (`ceiling_model` stacks timed the same way), builtin-vs-XNNPACK agreement,
OpenCV bicubic, and the target ratios (`headline_ratios`); `to_markdown` renders a run. Models
are untrained unless a Stage-3 work directory is given: speed does not depend on the weights,
kernel agreement and PSNR do.
"""
import dataclasses
import time

import cv2
import numpy as np
import tf_keras as keras

from keras_sr import evaluate, models, quant, workdir
from keras_sr.configs import ModelConfig, QATConfig
from keras_sr.export import parity, tflite_lib, tflite_runner


# --------------------------------------------------------------------------------------------------
# TFLite latency, MACs, the int8 ceiling and kernel agreement.

# (name, ModelConfig fields) of the models built for timing. The default student is the paper's;
# the anchored one is what `keras-sr-run` ships (same convs, plus the anchor's CONCATENATIONs
# and ADD).
STUDENTS = (("student", {}), ("student_anchor", {"anchor": True}))
# Baseline architectures, timed only where `ModelConfig` has an `arch` field to select them.
BASELINES = (("abpn", {"arch": "abpn"}), ("fsrcnn", {"arch": "fsrcnn"}))
# The int8 ceiling stacks: (channels, number of channels x channels 3x3 convs). Wide enough that
# the convs, not the memory traffic or the thin 3-channel stem and tail, set the speed.
CEILING_STACKS = ((32, 8), (128, 2))


def model_specs():
    """The (name, ModelConfig fields) pairs this checkout can build: students, then baselines."""
    has_arch = "arch" in {field.name for field in dataclasses.fields(ModelConfig)}
    return STUDENTS + (BASELINES if has_arch else ())


def spec_config(fields):
    """The `ModelConfig` of spec fields; a baseline ("arch") at its paper's sizes where
    `ModelConfig.for_arch` knows them, the fields overriding."""
    fields = dict(fields)
    if "arch" in fields and hasattr(ModelConfig, "for_arch"):
        return ModelConfig.for_arch(fields.pop("arch"), **fields)
    return ModelConfig(**fields)


def convert_model(fields, shapes, stage3_workdir=None):
    """(`ModelConfig`, {shape: {"int8": bytes, "fp32": bytes}}) of one model at NHWC `shapes`.

    The model of `fields` (`spec_config`), untrained, its QAT ranges calibrated on a random
    batch; or, with `stage3_workdir`, that run's QAT model and float twin.
    """
    if stage3_workdir:
        run = workdir.WorkDir.open(stage3_workdir)
        config, q_model, fp32_model = run.config.model, run.load("qat"), run.load("float_twin")
    else:
        config = spec_config(fields)
        fp32_model = models.build_student(config, reparameterized=True)
        q_model = quant.build_qat_model(fp32_model)
        batch = np.random.default_rng(0).random((2, 64, 64, 3), np.float32)
        quant.calibrate(q_model, [batch], QATConfig(calibration_batches=1))
    return config, {tuple(shape): {"int8": tflite_lib.convert_qat(q_model, shape),
                                   "fp32": tflite_lib.convert_float(fp32_model, shape)}
                    for shape in shapes}


def ceiling_model(channels, depth):
    """A stem 3->C, `depth` C->C and a tail C->3 3x3 conv, ReLU between: int8 conv throughput."""
    layers = [keras.layers.Conv2D(channels, 3, padding="same", activation="relu")
              for _ in range(depth + 1)]
    return keras.Sequential([keras.Input((None, None, 3)), *layers,
                             keras.layers.Conv2D(3, 3, padding="same")])


def convert_ceiling(channels, depth, shape):
    """`ceiling_model` quantized after training to int8 (uint8 IO) at `shape`: .tflite bytes."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    samples = [rng.random(shape, np.float32) for _ in range(2)]
    return tflite_lib.convert_ptq(ceiling_model(channels, depth), samples, shape)


def opencv_bicubic(shape, threads, runs=10, warmup=2, scale=3):
    """`latency_stats` of cv2.resize INTER_CUBIC x`scale` of a uint8 image of NHWC `shape`."""
    image = np.random.default_rng(0).integers(0, 256, shape[1:], dtype=np.uint8)
    size = (shape[2] * scale, shape[1] * scale)
    previous = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        return tflite_runner.latency_stats(
            lambda: cv2.resize(image, size, interpolation=cv2.INTER_CUBIC), runs, warmup)
    finally:
        cv2.setNumThreads(previous)


def _row(model, precision, kernels, shape, threads, stats, macs=None):
    gmacs = None if macs is None else macs / (stats["median_ms"] * 1e6)
    return {"model": model, "precision": precision, "kernels": kernels, "shape": list(shape),
            "threads": threads, **stats, "macs": macs, "gmacs_per_s": gmacs}


def blob_makers(name, precision, blob, shape, threads, builtin=True):
    """{row key: maker} of one model at every thread count: XNNPACK, and for INT8 with `builtin`
    also LiteRT's builtin kernels. A key is (model, precision, kernels, shape, threads); a maker
    builds an interpreter and returns its invoke (`tflite_runner.invoker`)."""
    kernel_sets = tflite_runner.KERNELS if precision == "int8" and builtin else ("xnnpack",)
    return {(name, precision, kernels, tuple(shape), n):
            lambda kernels=kernels, n=n: tflite_runner.invoker(blob, n, shape, kernels)
            for kernels in kernel_sets for n in threads}


def interleaved_latency(makers, runs=10, warmup=2, rounds=3, timer=time.perf_counter):
    """Latency statistics of several callables, timed in turn, `rounds` times over.

    Each round builds every callable afresh (`makers[key]()`, e.g. a new interpreter: one in
    memory at a time), runs its `warmup` calls and times its share of `runs`; a key's statistics
    are over all its timed calls. A load that changes during the benchmark then slows every key
    alike instead of skewing the ratio of two keys timed minutes apart (a model and the ceiling).
    `timer`: seconds as a float (tests pass a fake one).

    Returns:
        {key: `tflite_runner.summarize_times` of its calls}.
    """
    rounds = max(1, min(rounds, runs))
    shares = [runs // rounds + (i < runs % rounds) for i in range(rounds)]
    times = {key: [] for key in makers}
    for share in shares:
        for key, make in makers.items():
            times[key] += tflite_runner.timed_calls(make(), share, warmup, timer)
    return {key: tflite_runner.summarize_times(t, warmup) for key, t in times.items()}


def add_ceiling_fractions(rows):
    """Adds to every INT8 row its fraction of each ceiling stack's GMAC/s (same shape, threads).

    The ceilings are the XNNPACK rows of the models named "ceiling_c<channels>".
    """
    ceilings = {(r["model"], tuple(r["shape"]), r["threads"]): r["gmacs_per_s"]
                for r in rows if r["model"].startswith("ceiling_") and r["kernels"] == "xnnpack"}
    for row in rows:
        for channels, _ in CEILING_STACKS:
            ceiling = ceilings.get((f"ceiling_c{channels}", tuple(row["shape"]), row["threads"]))
            usable = row["precision"] == "int8" and row["gmacs_per_s"] and ceiling
            row[f"fraction_of_ceiling_c{channels}"] = row["gmacs_per_s"] / ceiling if usable else None
    return rows


def agreement(name, blob, shape, images, threads, data_dir=None):
    """Builtin vs XNNPACK kernels on one INT8 model: `parity.kernel_agreement` plus PSNR-Y.

    Args:
        images: LR uint8 RGB images for the agreement.
        data_dir: an EDSR-layout folder: also the PSNR-Y of each kernel set on it and the change.
    """
    stats = parity.kernel_agreement(blob, images, threads)
    result = {"model": name, "shape": list(shape), "threads": threads, "images": len(images),
              **{k: stats[k] for k in ("identical", "within_1", "max_diff", "mean_abs_diff")}}
    if data_dir:
        psnr = {kernels: evaluate.evaluate_benchmark(
            tflite_runner.TFLitePredictor(blob, threads, kernels=kernels), data_dir)["psnr_y"]
            for kernels in tflite_runner.KERNELS}
        result.update(psnr_y_xnnpack=psnr["xnnpack"], psnr_y_builtin=psnr["builtin"],
                      psnr_y_change=psnr["builtin"] - psnr["xnnpack"])
    return result


def headline_ratios(rows, student="student", baseline="abpn"):
    """The target ratios at every (shape, threads) of the student, from the XNNPACK rows.

    Returns:
        list of dicts: "shape", "threads", "student_int8_ms", "student_int8_over_<baseline>_int8"
        (latency ratio; None without the baseline), "student_fraction_of_ceiling_c<C>" and
        "student_int8_speedup" (FP32 latency over INT8).
    """
    index = {(r["model"], r["precision"], r["kernels"], tuple(r["shape"]), r["threads"]): r
             for r in rows}
    ratios = []
    for (model, precision, kernels, shape, threads), int8 in index.items():
        if (model, precision, kernels) != (student, "int8", "xnnpack"):
            continue
        base = index.get((baseline, "int8", "xnnpack", shape, threads))
        fp32 = index.get((student, "fp32", "xnnpack", shape, threads))
        ms = int8["median_ms"]
        ratios.append({"shape": list(shape), "threads": threads, "student_int8_ms": ms,
                       f"student_int8_over_{baseline}_int8": base and ms / base["median_ms"],
                       **{f"student_fraction_of_ceiling_c{c}": int8[f"fraction_of_ceiling_c{c}"]
                          for c, _ in CEILING_STACKS},
                       "student_int8_speedup": fp32 and fp32["median_ms"] / ms})
    return ratios


def tflite_benchmark(shapes=tflite_lib.DEPLOY_SHAPES, threads=(1, 2), runs=10, warmup=2, model_names=None,
                     tflite_files=None, stage3_workdir=None, images=(), data_dir=None, log=None,
                     rounds=3):
    """Everything a speed ratio needs, in one process (see the module docstring).

    Args:
        shapes: NHWC input shapes of the built models and of the ceiling and bicubic timings.
        threads: interpreter (and OpenCV) thread counts.
        runs, warmup: timed and untimed invocations of each latency (`latency_stats`).
        rounds: every model and ceiling is timed in `rounds` interleaved rounds of its share of
            `runs` (`interleaved_latency`), so that their ratios hold under a changing load.
        model_names: names of `model_specs()` to build (None: all).
        tflite_files: {name: .tflite path} timed as they are: a fixed-shape file at its own shape,
            a dynamic one at each of `shapes`; INT8 if every tensor is integer, else FP32.
        stage3_workdir: a Stage-3 work directory whose model is the "student".
        images: LR uint8 RGB images for the builtin-vs-XNNPACK agreement (none: skipped).
        data_dir: EDSR-layout folder for the PSNR-Y change of the builtin kernels.
        log: callable(str) for progress lines.

    Returns:
        dict: "shapes", "threads", "runs", "warmup"; "models" {name: "source", "config",
        "parameters", "int8_bytes", "fp32_bytes", "macs_per_lr_pixel"}; "latency" (rows: model,
        precision "int8"/"fp32"/"uint8", kernels "xnnpack"/"builtin"/"opencv", shape, threads,
        median_ms, min_ms, max_ms, runs, warmup, macs, gmacs_per_s, fraction_of_ceiling_c<C>);
        "kernel_agreement" (rows of `agreement`); "ratios" (`headline_ratios`); "headline" (the
        ratios at the first shape and the most threads) and "int8_speedup" (its INT8 speed-up);
        "errors" {model name: why it could not be built}.
    """
    log = log or (lambda message: None)
    rows, agreements, described, errors = [], [], {}, {}
    makers, macs = {}, {}  # what is timed once everything is converted

    def add(name, precision, blob, shape, builtin=True):
        macs[(name, tuple(shape))] = tflite_lib.count_macs(blob, shape)
        makers.update(blob_makers(name, precision, blob, shape, threads, builtin))

    for name, fields in model_specs():
        if model_names is not None and name not in model_names:
            continue
        log(f"converting {name} at {len(shapes)} shapes")
        source = stage3_workdir if name == "student" and stage3_workdir else "untrained"
        try:
            config, blobs = convert_model(fields, shapes, None if source == "untrained" else source)
        except Exception as e:  # pylint: disable=broad-except
            if name in dict(STUDENTS):
                raise
            # A baseline whose builder or QAT support is not there (yet): report it, go on.
            errors[name] = f"{type(e).__name__}: {e}"
            log(f"skipping {name}: {errors[name]}")
            continue
        first = blobs[tuple(shapes[0])]
        described[name] = {"source": source, "config": config.to_dict(),
                           "parameters": tflite_lib.describe(first["int8"])["parameters"],
                           "int8_bytes": len(first["int8"]), "fp32_bytes": len(first["fp32"]),
                           "macs_per_lr_pixel": tflite_lib.count_macs(first["int8"])
                           / (shapes[0][1] * shapes[0][2])}
        for shape, pair in blobs.items():
            for precision, blob in pair.items():
                add(name, precision, blob, shape)
            if images:
                agreements.append(agreement(name, pair["int8"], shape, images, max(threads),
                                            data_dir))
    for name, path in (tflite_files or {}).items():
        with open(path, "rb") as f:
            blob = f.read()
        info = tflite_lib.describe(blob)
        precision = ("int8" if all(np.dtype(d) in tflite_lib.INTEGER_TYPES
                                   for d in info["tensor_dtypes"].values()) else "fp32")
        described[name] = {"source": path, "parameters": info["parameters"],
                           f"{precision}_bytes": len(blob)}
        own = tuple(info["inputs"][0]["shape"])
        for shape in (shapes if -1 in own else [own]):
            add(name, precision, blob, shape)
        if images and precision == "int8":  # a dynamic-shape model runs each image whole
            agreements.append(agreement(name, blob, own, images, max(threads), data_dir))
    for shape in shapes:
        for channels, depth in CEILING_STACKS:
            add(f"ceiling_c{channels}", "int8", convert_ceiling(channels, depth, shape), shape,
                builtin=False)
    log(f"timing {len(makers)} latencies in {rounds} interleaved rounds")
    for key, stats in interleaved_latency(makers, runs, warmup, rounds).items():
        rows.append(_row(*key, stats, macs[(key[0], key[3])]))
    for shape in shapes:
        rows += [_row("bicubic", "uint8", "opencv", shape, n, opencv_bicubic(shape, n, runs, warmup))
                 for n in threads]
    add_ceiling_fractions(rows)
    ratios = headline_ratios(rows)
    headline = next((r for r in ratios if r["shape"] == list(shapes[0])
                     and r["threads"] == max(threads)), None)
    return {"shapes": [list(s) for s in shapes], "threads": list(threads), "runs": runs,
            "warmup": warmup, "models": described, "latency": rows,
            "kernel_agreement": agreements, "ratios": ratios, "headline": headline,
            "int8_speedup": headline and headline["student_int8_speedup"], "errors": errors}


# --------------------------------------------------------------------------------------------------
# A run as Markdown.

def _num(value, digits=2):
    return "" if value is None else f"{value:,.{digits}f}"


def _table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(v) for v in row) + " |" for row in rows), ""]


def _form_label(form):
    """'deploy_form' -> 'deploy (fused)', 'deploy_form_10_per_call' -> '... 10 steps per call'."""
    if form.startswith("deploy_form_"):
        return f"deploy (fused), {form.split('_')[2]} steps per call"
    return form.replace("deploy_form", "deploy (fused)")


def _tflite_markdown(result):
    ceilings = [f"c{c}" for c, _ in CEILING_STACKS]
    stacks = ", ".join(f"c{c}: {d} convs of {c}x{c} channels" for c, d in CEILING_STACKS)
    lines = ["## TFLite latency (LiteRT)", "",
             f"Median and min-max of {result['runs']} invocations after {result['warmup']} "
             "warm-up ones. MACs per frame are counted from the graph (conv ops); the int8 "
             f"ceilings are stacks of plain int8 3x3 convs timed the same way ({stacks}).", ""]
    lines += _table(["model", "precision", "kernels", "shape", "threads", "median ms", "min-max ms",
                     "GMAC/frame", "GMAC/s", *(f"of {c} ceiling" for c in ceilings)],
                    [[r["model"], r["precision"], r["kernels"], "x".join(map(str, r["shape"][1:3])),
                      r["threads"], _num(r["median_ms"]), f"{_num(r['min_ms'])}-{_num(r['max_ms'])}",
                      _num(r["macs"] and r["macs"] / 1e9, 3), _num(r["gmacs_per_s"], 1),
                      *(_num(r.get(f"fraction_of_ceiling_{c}"), 3) for c in ceilings)]
                     for r in result["latency"]])
    if result["ratios"]:
        baseline = next(k for k in result["ratios"][0] if k.startswith("student_int8_over_"))
        lines += ["## Target ratios (student, INT8, XNNPACK)", ""]
        lines += _table(["shape", "threads", "student INT8 ms", baseline.replace("_", " "),
                         *(f"of {c} ceiling" for c in ceilings), "INT8 / FP32 speed-up"],
                        [["x".join(map(str, r["shape"][1:3])), r["threads"],
                          _num(r["student_int8_ms"]), _num(r[baseline], 3),
                          *(_num(r[f"student_fraction_of_ceiling_{c}"], 3) for c in ceilings),
                          _num(r["student_int8_speedup"])] for r in result["ratios"]])
    if result["kernel_agreement"]:
        lines += ["## INT8: LiteRT builtin kernels against XNNPACK", ""]
        lines += _table(["model", "shape", "images", "identical %", "within 1 %", "max diff",
                         "PSNR-Y XNNPACK", "PSNR-Y builtin", "change dB"],
                        [[r["model"], "x".join(map(str, r["shape"][1:3])), r["images"],
                          _num(r["identical"], 3), _num(r["within_1"], 3), r["max_diff"],
                          _num(r.get("psnr_y_xnnpack")), _num(r.get("psnr_y_builtin")),
                          _num(r.get("psnr_y_change"), 3)] for r in result["kernel_agreement"]])
    lines += [f"Not built: {name}: {why}" for name, why in result["errors"].items()]
    return lines


def to_markdown(results, machine):
    """Markdown tables of a run's {section: result}, opening with the line naming the CPU
    (`machine`: `keras_sr.common.machine.machine_info()` of the machine it ran on)."""
    lines = ["# keras-sr benchmark", "", f"CPU: {machine['text']}", ""]
    if "tflite" in results:
        lines += _tflite_markdown(results["tflite"])
    train = results.get("train")
    if train:
        forms = [k[:-len("_steps_per_s")] for k in train if k.endswith("_steps_per_s")]
        lines += ["## Training steps/s (Adam + L1, one process)", ""]
        lines += _table(["form", "steps/s", "ratio to deploy form"],
                        [[_form_label(f), _num(train[f + "_steps_per_s"]),
                          _num(train.get(f + "_ratio_to_deploy", 1.0))] for f in forms])
    if "pipeline" in results:
        lines += [f"Input pipeline: {_num(results['pipeline']['examples_per_s'], 0)} examples/s", ""]
    if "teacher" in results:
        lines += [f"Teacher: {_num(results['teacher']['s_per_megapixel'])} s per LR megapixel "
                  f"({_num(results['teacher']['seconds_64x64'])} s for 64x64)", ""]
    return "\n".join(lines)
