"""Turns an image source into sharded SR TFRecords (or an EDSR-layout benchmark folder).

Records follow `keras_sr.common.record_schema.SR_FEATURES`: image_id, hr_png (RGB, cropped to a
multiple of scale), lr_png (RGB, HR size / scale), scale. LR images come from the source when it has
them (benchmark, tfds) and are otherwise made with the MATLAB bicubic rule (`matlab_downscale`).
Grayscale images are replicated to RGB for training records.

Output folder:
    sr-00000-of-0000N.tfrecord ...   shards, each written atomically
    sr-00000-of-0000N.json ...       per-shard summary; a rerun with the same settings reuses
                                     finished shards, so an interrupted job resumes
    summary.json                     counts, shard files, and every skipped input with its reason
"""
import concurrent.futures
import glob
import logging
import multiprocessing
import os
import time

import numpy as np

from keras_sr.common import fileio, image_io, record_schema
from keras_sr.data import benchmark
from keras_sr.data.matlab_resize import matlab_downscale, modcrop
from keras_sr.data.sources import Skipped, parse_source

SHARD_PATTERN = "sr-{index:05d}-of-{count:05d}.tfrecord"
SUMMARY_FILE = "summary.json"


def _checked_pair(pair, scale, min_lr_size):
    """Crops, validates and (if needed) downscales one pair.

    Returns:
        (hr, lr) uint8 arrays with hr.shape[:2] == scale * lr.shape[:2], keeping grayscale as HxW,
        or a Skipped entry.
    """
    h, w = pair.hr.shape[:2]
    if min(h, w) // scale < min_lr_size:
        return Skipped(pair.origin, f"too small: HR {w}x{h} gives an LR under {min_lr_size} px "
                                    f"(min_lr_size) at scale {scale}")
    hr = np.ascontiguousarray(modcrop(pair.hr, scale))
    lr = pair.lr if pair.lr is not None else matlab_downscale(hr, scale)
    if lr.shape[:2] != (h // scale, w // scale):
        return Skipped(pair.origin, f"LR shape {lr.shape} is not HR {pair.hr.shape} / {scale} "
                                    "(rounded down)")
    if lr.ndim != hr.ndim:
        hr, lr = image_io.to_rgb(hr), image_io.to_rgb(lr)
    return hr, lr


def _encode_shard(source, index, count, scale, min_lr_size, id_prefix, stats):
    """Yields serialized SR records of one shard, recording counts and skips in `stats`."""
    for item in source.read_shard(index, count, id_prefix):
        checked = item if isinstance(item, Skipped) else _checked_pair(item, scale, min_lr_size)
        if isinstance(checked, Skipped):
            stats["skipped"].append(vars(checked))
            continue
        hr, lr = checked
        if hr.ndim == 2:
            stats["converted_gray"] += 1
            hr, lr = image_io.to_rgb(hr), image_io.to_rgb(lr)
        stats["examples"] += 1
        yield record_schema.encode_example(
            {"image_id": item.image_id, "hr_png": image_io.encode_png(hr),
             "lr_png": image_io.encode_png(lr), "scale": scale}, record_schema.SR_FEATURES)


def _write_shard(source, output_dir, index, count, settings):
    """Writes shard `index` of `count` and its JSON; returns the shard summary."""
    path = os.path.join(output_dir, SHARD_PATTERN.format(index=index, count=count))
    previous = record_schema.finished_shard(path, settings)
    if previous is not None:
        logging.info("reusing finished shard %s", path)
        return previous
    stats = {"file": os.path.basename(path), "examples": 0, "converted_gray": 0, "skipped": [],
             "settings": settings}
    start = time.time()
    records = _encode_shard(source, index, count, settings["scale"], settings["min_lr_size"],
                            settings["id_prefix"], stats)
    record_schema.write_tfrecord(path, records)
    fileio.write_json(record_schema.shard_json_path(path), stats)
    logging.info("wrote %s: %d examples, %d skipped (%.1f s)", path, stats["examples"],
                 len(stats["skipped"]), time.time() - start)
    return stats


def prepare_records(source, output_dir, num_shards=4, scale=3, min_lr_size=16, id_prefix=None,
                    num_workers=1):
    """Writes a source as sharded SR TFRecords plus summary.json.

    Args:
        source: source spec string (see `keras_sr.data.sources`).
        output_dir: folder for the shards (created if needed).
        num_shards: number of shards; capped at the number of listed images.
        scale: integer SR factor.
        min_lr_size: images whose LR would be smaller than this on a side are skipped.
        id_prefix: prefix of the image ids ("<prefix>/<name>"); default: the source folder's name,
            "builtin", or "<dataset>_<split>" for tfds. Ids must be unique across everything trained
            on together, because teacher outputs are joined by id.
        num_workers: shards written in parallel processes (1: in this process).

    Returns:
        The summary dict that is also written to output_dir/summary.json.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    src = parse_source(source, scale)
    if src.num_items is not None:
        if src.num_items == 0:
            raise ValueError(f"source {source!r} holds no usable images "
                             f"({len(src.listing_skipped)} files skipped while listing)")
        num_shards = min(num_shards, src.num_items)
    settings = {"source": src.spec, "scale": scale, "min_lr_size": min_lr_size,
                "id_prefix": src.default_prefix if id_prefix is None else id_prefix,
                "schema": sorted(record_schema.SR_FEATURES)}
    os.makedirs(output_dir, exist_ok=True)
    start = time.time()
    if num_workers > 1 and num_shards > 1:
        # spawn: the workers must not inherit TensorFlow/OpenCV thread pools through fork.
        pool = concurrent.futures.ProcessPoolExecutor(
            min(num_workers, num_shards), mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = concurrent.futures.ThreadPoolExecutor(1)  # in this process, one shard at a time
    with pool:
        futures = {pool.submit(_write_shard, src, output_dir, i, num_shards, settings): i
                   for i in range(num_shards)}
        shards = [None] * num_shards
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            shards[futures[future]] = future.result()
            elapsed = time.time() - start
            logging.info("%d/%d shards done, %.0f s elapsed, ETA %.0f s", done, num_shards,
                         elapsed, elapsed / done * (num_shards - done))

    written = {s["file"] for s in shards}
    for stale in glob.glob(os.path.join(output_dir, "sr-?????-of-?????.*")):
        if os.path.splitext(os.path.basename(stale))[0] + ".tfrecord" not in written:
            logging.info("removing stale shard file %s", stale)
            os.remove(stale)

    skipped = [vars(s) for s in src.listing_skipped] + [s for sh in shards for s in sh["skipped"]]
    summary = {
        **settings,
        "num_examples": sum(s["examples"] for s in shards),
        "num_converted_gray": sum(s["converted_gray"] for s in shards),
        "num_skipped": len(skipped),
        "num_shards": num_shards,
        "shards": [{"file": s["file"], "examples": s["examples"]} for s in shards],
        "skipped": skipped,
        "seconds": round(time.time() - start, 1),
    }
    return _write_summary(output_dir, summary)


def prepare_benchmark(source, output_dir, scale=3, min_lr_size=16):
    """Writes a source in the EDSR benchmark layout (HR/ + LR_bicubic/X<scale>/) for evaluation.

    HR images are written as read (not cropped; grayscale stays grayscale); LR images are the
    source's own or made with the MATLAB rule. File names are the image names without id prefix.

    Returns:
        Summary dict (also written to output_dir/summary.json).
    """
    src = parse_source(source, scale)
    skipped = [vars(s) for s in src.listing_skipped]

    def pairs():
        for item in src.read_shard(0, 1, id_prefix=""):
            checked = item if isinstance(item, Skipped) else _checked_pair(item, scale, min_lr_size)
            if isinstance(checked, Skipped):
                skipped.append(vars(checked))
                continue
            name = item.image_id.replace("/", "_")
            yield name, item.hr, checked[1]

    names = benchmark.write_benchmark_layout(pairs(), output_dir, scale)
    return _write_summary(output_dir, {
        "source": src.spec, "scale": scale, "layout": "benchmark", "num_examples": len(names),
        "names": names, "num_skipped": len(skipped), "skipped": skipped})


def _write_summary(output_dir, summary):
    """Writes summary.json; raises if nothing usable was written."""
    path = os.path.join(output_dir, SUMMARY_FILE)
    fileio.write_json(path, summary)
    if summary["num_examples"] == 0:
        raise ValueError(f"source {summary['source']!r} gave no usable images; see {path}")
    return summary
