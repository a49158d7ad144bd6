"""The report of a whole job (`keras-sr-run`): one HTML page, the same in Markdown, and metrics.json.

    from keras_sr import report
    paths = report.write_report("runs/demo/report", data)

`write_report(out_dir, data)` writes

    OUT_DIR/report.html    one self-contained page: images inlined as base64 data URIs, inline CSS,
                           no script, no link outside the file
    OUT_DIR/report.md      the same content; tables in Markdown, images linked relatively
    OUT_DIR/report_files/  the PNG images report.md links to
    OUT_DIR/metrics.json   `data` without pixel arrays (see below), finite numbers only

`data` is a dict; only "title" and "sets" are required, and every other section that is absent (a
missing key, None or empty) is replaced by a one-line note. Everything but the example images is
JSON-friendly (NumPy scalars are accepted):

    "title":        str
    "sets":         list of {"name": str ("builtin:val", "Set5", ...),
                             "rows": list of {"model": str ("bicubic", "fp32", "qat", "int8",
                                                            "teacher", ...),
                                              "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb": float
                                                  (dB; SSIM in [0, 1]),
                                              "parameters": int | None,
                                              "file_bytes": int | None,
                                              "latency_ms": float | None (one inference at the
                                                  export shape, 2 threads)}}
                    one table per set, rows in the order given; a "bicubic" row adds the column
                    "Δ bicubic" (PSNR-Y minus bicubic's); an optional column nobody filled is left out
    "machine":      {"cpu": str (CPU model name), "cores": int, "isa": str (ISA flags), ...}; further
                    str/number entries are shown too
    "wall_seconds": float, the job's wall time
    "stages":       list of {"name": str, "seconds": float | None, "steps": int | None,
                             "workdir": str | None}
    "flags":        {flag name: JSON value}, the resolved flags
    "examples":     list of {"name": str, "lr": uint8 h x w x 3, "bicubic", "fp32" (optional),
                             "int8", "hr": uint8 (s h) x (s w) x 3}, RGB in [0, 255], s an integer
                    scale; each shows a crop where INT8 gains most over bicubic
                    (`keras_sr.report.examples`) and the whole image's INT8 |Y error| map
    "curves":       {stage name: training work directory}, in job order; loss and validation
                    PSNR-Y read from each WORKDIR/tb (`keras_sr.report.curves`), plotted on one
                    global step axis; stages without logs are named in the figure
    "speed":        list of {"model": str, "latency_ms": float > 0, "psnr_y": float, "set": str},
                    a PSNR-Y against latency scatter
    "parity":       {measure: number}, INT8 against QAT ("identical_fraction", "within_1_fraction",
                    "max_abs_diff", "psnr_vs_reference", ...); a key ending in "fraction" is shown
                    as a percentage, one holding "psnr" in dB
    "ops":          {operator name: count} of the INT8 model

metrics.json holds every entry of `data` as given, except that each example's images are replaced
by {"name", "scale", "crop": {"top", "left", "height", "width"} (HR pixels), "crop_selection",
"crop_psnr_y": {model: dB, or null where the crop equals HR}}.
"""
import os

from keras_sr.common import fileio
from keras_sr.report import curves, examples, render, schema, sections

HTML = "report.html"
MARKDOWN = "report.md"
METRICS = "metrics.json"


def write_report(out_dir, data):
    """Writes the report of `data` (module docstring) into `out_dir`.

    Everything is checked and rendered in memory first, so bad data leaves `out_dir` as it was;
    each file (and the image folder as a whole) then replaces its previous version atomically.

    Args:
        out_dir: the report's folder (created if needed).
        data: the report's data, see the module docstring.

    Returns:
        {"html": path, "markdown": path, "metrics": path, "files": the image folder,
         "images": [path of each PNG]}, all str.

    Raises:
        ValueError: a missing or malformed entry, or a NaN or infinite number (the message names
            the entry, e.g. "sets[0].rows[1].psnr_y").
        TypeError: an entry metrics.json cannot hold.
    """
    schema.validate(data)
    prepared = [examples.prepare(e) for e in data.get("examples") or []]
    metrics = schema.metrics_json(data, [e.summary() for e in prepared])
    stage_curves = curves.read_stages(data["curves"]) if data.get("curves") else []
    blocks = sections.build(data, prepared, stage_curves)
    page = render.to_html(blocks, data["title"])
    markdown = render.to_markdown(blocks)

    out_dir = os.fspath(out_dir)
    files_dir = os.path.join(out_dir, render.FILES_DIR)
    images = [b for b in blocks if isinstance(b, render.Image)]
    with fileio.atomic_directory(files_dir) as tmp:
        for image in images:
            fileio.write_bytes_atomic(os.path.join(tmp, image.name), image.png)
    with fileio.atomic_open(os.path.join(out_dir, MARKDOWN), "w") as f:
        f.write(markdown)
    with fileio.atomic_open(os.path.join(out_dir, HTML), "w") as f:
        f.write(page)
    fileio.write_json(os.path.join(out_dir, METRICS), metrics)
    return {"html": os.path.join(out_dir, HTML), "markdown": os.path.join(out_dir, MARKDOWN),
            "metrics": os.path.join(out_dir, METRICS), "files": files_dir,
            "images": [os.path.join(files_dir, image.name) for image in images]}
