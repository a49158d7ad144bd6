"""The report's content as blocks (`keras_sr.report.render`), section by section.

Each section is a function of the report's data that returns its blocks; a section whose data is
absent returns its heading and a one-line note instead, so that a reader sees what is missing.
Number formats are fixed here, once: PSNR in dB with 2 decimals, SSIM with 4, latency in ms with 2,
parameters with thousands separators, file sizes in KiB with 1 decimal.
"""
import json

import numpy as np

import keras_sr
from keras_sr.common import progress
from keras_sr.report import examples as ex
from keras_sr.report import plots
from keras_sr.report.render import Heading, Image, Navigation, Paragraph, Table, anchor

BASELINE = "bicubic"  # the row every PSNR delta is measured against
_MACHINE_ORDER = ("cpu", "cores", "isa")


def fmt_db(value):
    return f"{value:.2f}"


def fmt_ssim(value):
    return f"{value:.4f}"


def fmt_count(value):
    return "-" if value is None else f"{int(value):,}"


def fmt_kib(value):
    return "-" if value is None else f"{value / 1024:.1f} KiB"


def fmt_ms(value):
    return "-" if value is None else f"{value:.2f}"


def fmt_value(key, value):
    """A parity, machine or flag value: fractions as percentages, other floats to 4 digits."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if key.endswith("fraction"):
            return f"{100 * value:.2f} %"
        if "psnr" in key:
            return f"{value:.2f} dB"
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _section(title, *blocks):
    return [Heading(2, title, anchor(title)), *blocks]


def _note(text):
    return Paragraph(text, note=True)


# --------------------------------------------------------------------------------------------------

def header(data, section_titles):
    """Title, one line on the job, and links to the sections."""
    facts = [f"keras-sr {keras_sr.__version__}"]
    if data.get("wall_seconds") is not None:
        facts.append(f"job wall time {progress.format_duration(float(data['wall_seconds']))}")
    machine = data.get("machine") or {}
    if machine.get("cpu"):
        facts.append(f"on {machine['cpu']}" + (f", {machine['cores']} cores" if machine.get("cores")
                                                 else ""))
    return [Heading(1, data["title"]), Paragraph(" · ".join(facts)), Navigation(section_titles)]


def _set_table(rows):
    baseline = next((r for r in rows if r["model"] == BASELINE), None)
    columns = [("model", False, lambda r: r["model"]),
               ("PSNR-Y (dB)", True, lambda r: fmt_db(r["psnr_y"]))]
    if baseline is not None:
        columns.append((f"Δ {BASELINE} (dB)", True, lambda r: "" if r is baseline else
                        f"{r['psnr_y'] - baseline['psnr_y']:+.2f}"))
    columns += [("SSIM-Y", True, lambda r: fmt_ssim(r["ssim_y"])),
                ("PSNR-RGB (dB)", True, lambda r: fmt_db(r["psnr_rgb"])),
                ("SSIM-RGB", True, lambda r: fmt_ssim(r["ssim_rgb"]))]
    optional = [("parameters", "parameters", fmt_count), ("file_bytes", "file size", fmt_kib),
                ("latency_ms", "latency (ms)", fmt_ms)]
    for key, title, fmt in optional:
        # A column nobody filled in (the bicubic-only set of a quick run) is left out.
        if any(r.get(key) is not None for r in rows):
            columns.append((title, True, lambda r, key=key, fmt=fmt: fmt(r.get(key))))
    return Table([c[0] for c in columns], [[c[2](r) for c in columns] for r in rows],
                 [c[1] for c in columns]), baseline is not None


def results(data):
    """One table per evaluation set, with each model's PSNR-Y gain over bicubic."""
    blocks = []
    for entry in data["sets"]:
        blocks.append(Heading(3, entry["name"]))
        if not entry["rows"]:
            blocks.append(_note("no models were scored on this set"))
            continue
        table, has_baseline = _set_table(entry["rows"])
        blocks.append(table)
        if not has_baseline:
            blocks.append(_note(f"no {BASELINE} row: PSNR deltas are not shown"))
    if not blocks:
        blocks = [_note("no evaluation sets were given")]
    return _section("Results", Paragraph(
        f"Y = BT.601 luma. Δ {BASELINE}: PSNR-Y minus the {BASELINE} row's. Latency: one inference "
        "at the export shape, 2 threads."), *blocks)


def speed(data):
    points = data.get("speed") or []
    if not points:
        return _section("Quality and speed", _note("no speed measurements were given"))
    return _section("Quality and speed", Image("speed.png", plots.speed_scatter(points),
                                               "PSNR-Y against latency"))


def example_images(prepared):
    """The crop comparison and the error map of every example.

    Args:
        prepared: list of `keras_sr.report.examples.Example`.
    """
    if not prepared:
        return _section("Examples", _note("no example images were given"))
    blocks = [Paragraph(f"Crops: {ex.SELECTION.format(size=ex.CROP_SIZE)}. PSNR-Y over the crop, "
                        "no border removed.")]
    for i, example in enumerate(prepared):
        stem = f"example{i}"
        blocks += [Heading(3, example.name),
                   Image(f"{stem}_crop.png", plots.crop_comparison(example),
                         f"{example.name}: crop comparison",
                         f"HR crop {example.height}x{example.width} at row {example.top}, column "
                         f"{example.left} of {example.images['hr'].shape[0]}x"
                         f"{example.images['hr'].shape[1]}"),
                   Image(f"{stem}_error.png", plots.error_map(example),
                         f"{example.name}: INT8 error map")]
    return _section("Examples", *blocks)


def training_curves(stage_curves):
    """The loss and validation curves of every stage; `stage_curves` from `curves.read_stages`."""
    if not stage_curves:
        return _section("Training curves", _note("no training work directories were given"))
    return _section("Training curves", Image("curves.png", plots.training_curves(stage_curves),
                                             "training loss and validation PSNR-Y"))


def _key_value_table(mapping, header, order=(), numeric=False):
    keys = [k for k in order if k in mapping] + [k for k in mapping if k not in order]
    return Table(list(header), [[str(k), fmt_value(str(k), mapping[k])] for k in keys],
                 [False, numeric])


def int8_model(data):
    """Agreement of the INT8 model with its QAT model, and the INT8 graph's operators."""
    parity, ops = data.get("parity"), data.get("ops")
    blocks = [Heading(3, "Parity with the QAT model")]
    blocks.append(_key_value_table(parity, ("measure", "value"), numeric=True) if parity
                  else _note("no parity measurements were given"))
    blocks.append(Heading(3, "Operators"))
    if ops:
        ordered = sorted(ops.items(), key=lambda item: (-item[1], item[0]))
        blocks.append(Table(["operator", "count"], [[name, fmt_count(n)] for name, n in ordered],
                            [False, True]))
    else:
        blocks.append(_note("no operator counts were given"))
    return _section("INT8 model", *blocks)


def job(data):
    """The machine, the job's stages and its resolved flags."""
    blocks = [Heading(3, "Machine")]
    machine = data.get("machine")
    blocks.append(_key_value_table(machine, ("field", "value"), _MACHINE_ORDER) if machine
                  else _note("no machine description was given"))
    blocks.append(Heading(3, "Stages"))
    stages = data.get("stages") or []
    if stages:
        rows = []
        for s in stages:
            seconds, steps = s.get("seconds"), s.get("steps")
            rate = f"{steps / seconds:.2f}" if steps and seconds else "-"
            rows.append([s["name"], "-" if seconds is None else progress.format_duration(seconds),
                         "-" if seconds is None else f"{seconds:.1f}", fmt_count(steps), rate,
                         str(s.get("workdir") or "-")])
        blocks.append(Table(["stage", "time", "seconds", "steps", "steps/s", "work directory"],
                            rows, [False, True, True, True, True, False]))
    else:
        blocks.append(_note("no stage timings were given"))
    blocks.append(Heading(3, "Flags"))
    flags = data.get("flags")
    blocks.append(_key_value_table(flags, ("flag", "value")) if flags
                  else _note("no flags were given"))
    return _section("Job", *blocks)


def build(data, prepared, stage_curves):
    """Every block of the report, in reading order.

    Args:
        data: the checked report data.
        prepared: list of `keras_sr.report.examples.Example`, one per data["examples"] entry.
        stage_curves: `keras_sr.report.curves.read_stages(data["curves"])`, or [] without curves.
    """
    sections = [results(data), speed(data), example_images(prepared),
                training_curves(stage_curves), int8_model(data), job(data)]
    titles = [s[0].text for s in sections]
    return header(data, titles) + [block for s in sections for block in s]
