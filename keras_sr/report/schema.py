"""Checks of the report's `data` (see `keras_sr.report.write_report`) and its JSON form.

Every check runs before anything is drawn or written, and its message names the offending entry as
a path into `data` ("sets[0].rows[2].psnr_y"), so that a job which collected a bad number learns
which one.
"""
import math
import numbers
import os

import numpy as np

METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
OPTIONAL_ROW_FIELDS = ("parameters", "file_bytes", "latency_ms")


def _is_number(value):
    return isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))


def _require(condition, path, message):
    if not condition:
        raise ValueError(f"report data: {path} {message}")


def validate(data):
    """Checks the entries the report's sections read; raises ValueError naming the first bad one.

    Only the structure is checked here; that every number is finite is checked by `to_json`,
    which sees every entry.
    """
    _require(isinstance(data, dict), "data", "must be a dict")
    _require(isinstance(data.get("title"), str) and data["title"].strip(), "title",
             "must be a non-empty str")
    _require(isinstance(data.get("sets"), (list, tuple)), "sets", "must be a list (may be empty)")
    for i, entry in enumerate(data["sets"]):
        _require(isinstance(entry, dict) and isinstance(entry.get("name"), str), f"sets[{i}]",
                 "must be a dict with a str 'name'")
        _require(isinstance(entry.get("rows"), (list, tuple)), f"sets[{i}].rows", "must be a list")
        for j, row in enumerate(entry["rows"]):
            where = f"sets[{i}].rows[{j}]"
            _require(isinstance(row, dict) and isinstance(row.get("model"), str), where,
                     "must be a dict with a str 'model'")
            for key in METRICS:
                _require(_is_number(row.get(key)), f"{where}.{key}", "must be a number")
            for key in OPTIONAL_ROW_FIELDS:
                _require(row.get(key) is None or _is_number(row[key]), f"{where}.{key}",
                         "must be a number or None")
    for i, stage in enumerate(data.get("stages") or ()):
        _require(isinstance(stage, dict) and isinstance(stage.get("name"), str), f"stages[{i}]",
                 "must be a dict with a str 'name'")
        for key in ("seconds", "steps"):
            _require(stage.get(key) is None or _is_number(stage[key]), f"stages[{i}].{key}",
                     "must be a number or None")
    for i, point in enumerate(data.get("speed") or ()):
        _require(isinstance(point, dict), f"speed[{i}]", "must be a dict")
        for key in ("latency_ms", "psnr_y"):
            _require(_is_number(point.get(key)), f"speed[{i}].{key}", "must be a number")
        _require(point["latency_ms"] > 0, f"speed[{i}].latency_ms", "must be > 0")
    for i, example in enumerate(data.get("examples") or ()):
        _require(isinstance(example, dict), f"examples[{i}]", "must be a dict")
    for key in ("machine", "flags", "parity", "ops", "curves"):
        _require(data.get(key) is None or isinstance(data[key], dict), key, "must be a dict")
    for name, count in (data.get("ops") or {}).items():
        _require(_is_number(count), f"ops[{name!r}]", "must be a number")
    _require(data.get("wall_seconds") is None or _is_number(data["wall_seconds"]), "wall_seconds",
             "must be a number or None")


def _join(path, key):
    return f"{path}.{key}" if path else str(key)


def to_json(value, path=""):
    """`value` with NumPy scalars as Python numbers, tuples as lists and paths as str.

    Raises:
        ValueError: a float that is NaN or infinite (metrics.json holds finite numbers only), or
            a key that is not a str; the message gives the entry's path.
        TypeError: a value JSON cannot hold (an array outside the examples, an object).
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"metrics.json takes finite numbers only: {path} is {value}")
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        for key in value:
            _require(isinstance(key, str), path or "data", f"has a key {key!r} that is not a str")
        return {key: to_json(item, _join(path, key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"metrics.json cannot hold {path or 'data'} of type {type(value).__name__}")


def metrics_json(data, example_summaries):
    """The content of metrics.json: `data` without pixel arrays, checked finite.

    Args:
        data: the report's data.
        example_summaries: one `Example.summary()` per entry of data["examples"]; they replace the
            examples' images (name, scale, crop, how it was chosen, the crop's PSNR-Y of each
            model).
    """
    content = {key: value for key, value in data.items() if key != "examples"}
    if data.get("examples"):
        content["examples"] = example_summaries
    return to_json(content)
