"""The report's figures, each rendered to PNG bytes.

Figures are made as `matplotlib.figure.Figure` on an Agg canvas, never through pyplot: pyplot
keeps global state (the current figure, a GUI backend chosen from the environment) that a library
called inside a training job must not touch. Images are shown pixel for pixel (nearest
interpolation) so that the crops show what the models output, not a resampling of it.
"""
import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from keras_sr.report import examples as ex
from keras_sr.report.curves import LOSS_TAG, VAL_PSNR_TAG

DPI = 100
_STAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def to_png(figure):
    """PNG bytes of a figure (white background, tight margins)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white", bbox_inches="tight",
                   pad_inches=0.08, metadata={"Software": None})
    return buffer.getvalue()


def _message(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#57606a",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------------
# Training curves.

def training_curves(stages):
    """Loss and validation PSNR-Y against one global step axis (stages laid end to end).

    Args:
        stages: list of (stage name, work directory, {tag: (steps, values)}) as returned by
            `keras_sr.report.curves.read_stages`.

    Returns:
        PNG bytes of a figure with two panels side by side. A stage without logs keeps no room on
        the axis and is named under the panels; with no logs at all both panels say so.
    """
    figure = Figure(figsize=(11.5, 4.0))
    loss_ax, psnr_ax = figure.subplots(1, 2)
    offset, missing, plotted = 0, [], False
    for i, (name, path, scalars) in enumerate(stages):
        if not scalars:
            missing.append(f"{name} ({path})")
            continue
        color = _STAGE_COLORS[i % len(_STAGE_COLORS)]
        last = max(int(steps[-1]) for steps, _ in scalars.values())
        for ax, tag, style in ((loss_ax, LOSS_TAG, "-"), (psnr_ax, VAL_PSNR_TAG, "o-")):
            if tag in scalars:
                steps, values = scalars[tag]
                ax.plot(steps + offset, values, style, color=color, label=name, lw=1.4, ms=3.5)
        if offset:
            for ax in (loss_ax, psnr_ax):
                ax.axvline(offset, color="#8c959f", ls=":", lw=1)
        offset += last
        plotted = True
    if not plotted:
        text = "no TensorBoard logs found" + (":\n" + "\n".join(missing) if missing else "")
        _message(loss_ax, text)
        _message(psnr_ax, text)
        return to_png(figure)
    loss_ax.set_yscale("log")  # each stage's loss has its own terms and scale
    loss_ax.set_title("training loss (mean per logging interval)")
    psnr_ax.set_title("validation PSNR-Y")
    loss_ax.set_ylabel("loss")
    psnr_ax.set_ylabel("PSNR-Y (dB)")
    for ax in (loss_ax, psnr_ax):
        ax.set_xlabel("global step (stages end to end)")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=9)
        else:
            _message(ax, "not logged")
    if missing:
        figure.text(0.5, -0.02, "no logs: " + "; ".join(missing), ha="center", va="top",
                    color="#cf222e", fontsize=9)
    figure.tight_layout()
    return to_png(figure)


# --------------------------------------------------------------------------------------------------
# Quality against speed.

def speed_scatter(points):
    """PSNR-Y against latency, one labelled point per model, one colour per evaluation set.

    Args:
        points: list of {"model": str, "latency_ms": float > 0, "psnr_y": float, "set": str}.

    Returns:
        PNG bytes. The latency axis is logarithmic when the latencies span more than 20x (a
        bicubic point beside network points).
    """
    figure = Figure(figsize=(7.5, 4.5))
    ax = figure.subplots()
    sets = list(dict.fromkeys(str(p.get("set", "")) for p in points))
    for i, name in enumerate(sets):
        chosen = [p for p in points if str(p.get("set", "")) == name]
        ax.scatter([p["latency_ms"] for p in chosen], [p["psnr_y"] for p in chosen], s=40,
                   color=_STAGE_COLORS[i % len(_STAGE_COLORS)], label=name or None, zorder=3)
        for p in chosen:
            ax.annotate(str(p["model"]), (p["latency_ms"], p["psnr_y"]), textcoords="offset points",
                        xytext=(6, 4), fontsize=9)
    latencies = [p["latency_ms"] for p in points]
    if min(latencies) > 0 and max(latencies) / min(latencies) > 20:
        ax.set_xscale("log")
        # Plain numbers at 1-2-5 steps read better than powers of ten for a few decades.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("PSNR-Y (dB)")
    ax.set_title("quality against speed")
    ax.grid(True, alpha=0.3)
    if any(sets):
        ax.legend(fontsize=9)
    figure.tight_layout()
    return to_png(figure)


# --------------------------------------------------------------------------------------------------
# Example images.

def _fmt_psnr(value):
    return "identical to HR" if value is None else f"{value:.2f} dB"


def _pixel_axes(figure, size, left, bottom, width, height):
    """Axes at a rectangle given in pixels of a figure `size` = (width, height) pixels wide."""
    return figure.add_axes((left / size[0], bottom / size[1], width / size[0], height / size[1]))


def _integer_zoom(length, at_least):
    # Whole screen pixels per image pixel: a fractional zoom would draw some pixels wider than
    # others under nearest-neighbour display.
    return max(1, math.ceil(at_least / length))


def crop_comparison(example, zoom=2, min_panel=120, gap=8, title_band=36):
    """The example's crop side by side: LR (nearest neighbour), bicubic, FP32, INT8, HR.

    Args:
        example: a `keras_sr.report.examples.Example`.
        zoom: screen pixels per HR pixel (raised to an integer that makes a panel at least
            `min_panel` pixels wide).
        min_panel, gap, title_band: panel width, space between panels and space for the two-line
            titles, in screen pixels.

    Returns:
        PNG bytes; each panel titled with its model and its PSNR-Y over the crop.
    """
    panels = [(key, title) for key, title in ex.PANELS if key in example.images]
    zoom = max(int(zoom), _integer_zoom(example.width, min_panel))
    panel_w, panel_h = example.width * zoom, example.height * zoom
    size = (len(panels) * panel_w + (len(panels) - 1) * gap, panel_h + title_band)
    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI))
    for i, (key, title) in enumerate(panels):
        ax = _pixel_axes(figure, size, i * (panel_w + gap), 0, panel_w, panel_h)
        ax.imshow(example.crop(key), interpolation="nearest")
        if key in example.crop_psnr_y:
            title = f"{title}\n{_fmt_psnr(example.crop_psnr_y[key])}"
        elif key == "lr":
            title = f"{title}\nx{example.scale} input"
        else:
            title = f"{title}\nground truth"
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return to_png(figure)


def error_map(example, max_width=900, min_width=450, bar_band=110, title_band=24):
    """|Y_int8 - Y_hr| over the whole example image, with a colour bar and the crop outlined.

    Args:
        example: a `keras_sr.report.examples.Example`.
        max_width, min_width: the map's width on screen in pixels. Below `min_width` the image is
            enlarged by an integer factor; above `max_width` it is reduced (antialiased).
        bar_band, title_band: screen pixels for the colour bar with its labels, and for the title.

    Returns:
        PNG bytes. The colour scale ends at the error's 99.5th percentile (at least 1 level) so
        that a few outliers do not wash out the map; larger errors show in the top colour.
    """
    error = example.error_y()
    height, width = error.shape
    shown_w = width * _integer_zoom(width, min_width)
    interpolation = "nearest"
    if shown_w > max_width:
        shown_w, interpolation = max_width, "antialiased"
    shown_h = round(shown_w * height / width)
    size = (shown_w + bar_band, shown_h + title_band)
    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI))
    ax = _pixel_axes(figure, size, 0, 0, shown_w, shown_h)
    bar_ax = _pixel_axes(figure, size, shown_w + 10, 0, 16, shown_h)
    top = max(1.0, float(np.percentile(error, 99.5)))
    image = ax.imshow(error, cmap="inferno", vmin=0.0, vmax=top, interpolation=interpolation)
    colorbar = figure.colorbar(image, cax=bar_ax, extend="max" if error.max() > top else "neither")
    colorbar.set_label("|Y error| (levels of 255)")
    ax.add_patch(Rectangle((example.left - 0.5, example.top - 0.5), example.width, example.height,
                           fill=False, edgecolor="#00e5ff", lw=1.5))
    ax.set_title(f"INT8 vs HR, abs error on Y (mean {error.mean():.2f}, "
                 f"max {error.max():.0f}); cyan: the crop", fontsize=9, loc="left")
    ax.set_xticks([])
    ax.set_yticks([])
    return to_png(figure)
