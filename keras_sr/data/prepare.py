"""Turns an image source into sharded SR TFRecords (or an EDSR-layout benchmark folder).

Records follow `keras_sr.common.record_schema.SR_FEATURES`: image_id, hr_png (RGB, cropped to a
multiple of scale), lr_png (RGB, HR size / scale), scale. LR images come from the source when it has
them (benchmark, tfds) and are otherwise made with the MATLAB bicubic rule (`matlab_downscale`).
Grayscale images are replicated to RGB for training records.

Bad inputs follow `--on_bad_image` (`keras_sr.common.bad_images`): skipped with the reason in
summary.json (default), or the first one ends the job. Conversions that keep an image usable
(16-bit, palette, CMYK, EXIF orientation, alpha dropped, grayscale replicated, the mod-crop) are
logged and counted by kind under "conversions"; images whose LR side is under SMALL_LR px, which
training at that patch size leaves out, are listed under "small_lr".

Output folder:
    sr-00000-of-0000N.tfrecord ...   shards, each written atomically
    sr-00000-of-0000N.json ...       per-shard summary; a rerun with the same settings reuses
                                     finished shards, so an interrupted job resumes
    summary.json                     counts, shard files, and every skipped input with its reason
                                     (no timings: a resumed run writes the same bytes)
    .lock                            while a run writes the folder (`keras_sr.common.lock`)
"""
import concurrent.futures
import glob
import logging
import multiprocessing
import os
import time

import numpy as np

from keras_sr.common import bad_images, fileio, image_io, lock, record_schema
from keras_sr.data import benchmark
from keras_sr.data.matlab_resize import matlab_downscale, modcrop
from keras_sr.data.sources import Skipped, parse_source

SHARD_PATTERN = "sr-{index:05d}-of-{count:05d}.tfrecord"
SUMMARY_FILE = "summary.json"
# Images with an LR side under this are listed in the summary: the largest training patch of the
# stage configs (DIV2K presets), so training leaves them out at that patch (`make_train_dataset`).
SMALL_LR = 64


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


def _encode_shard(source, index, count, scale, min_lr_size, id_prefix, stats, bad):
    """Yields serialized SR records of one shard, recording counts and skips in `stats`/`bad`."""
    for item in source.read_shard(index, count, id_prefix):
        checked = item if isinstance(item, Skipped) else _checked_pair(item, scale, min_lr_size)
        if isinstance(checked, Skipped):
            bad.add(checked.item, checked.reason)
            continue
        hr, lr = checked
        notes = list(item.notes)
        if hr.shape[:2] != item.hr.shape[:2]:
            notes.append(f"cropped to a multiple of {scale}")
        if hr.ndim == 2:
            stats["converted_gray"] += 1
            notes.append(image_io.GRAY_NOTE)
            hr, lr = image_io.to_rgb(hr), image_io.to_rgb(lr)
        bad.note(item.origin, notes)
        if min(lr.shape[:2]) < SMALL_LR:
            stats["small_lr"].append({"image_id": item.image_id, "lr_size": list(lr.shape[:2])})
        stats["examples"] += 1
        yield record_schema.encode_example(
            {"image_id": item.image_id, "hr_png": image_io.encode_png(hr),
             "lr_png": image_io.encode_png(lr), "scale": scale}, record_schema.SR_FEATURES)


def _write_shard(source, output_dir, index, count, settings, on_bad_image):
    """Writes shard `index` of `count` and its JSON; returns the shard summary.

    Raises:
        bad_images.BadImageError: under on_bad_image="fail", the first bad image of the shard
            (the shard is then not written).
    """
    path = os.path.join(output_dir, SHARD_PATTERN.format(index=index, count=count))
    previous = record_schema.finished_shard(path, settings)
    if previous is not None:
        logging.info("reusing finished shard %s", path)
        return previous
    stats = {"file": os.path.basename(path), "examples": 0, "converted_gray": 0, "small_lr": [],
             "settings": settings}
    bad = bad_images.BadImages(on_bad_image)
    start = time.time()
    records = _encode_shard(source, index, count, settings["scale"], settings["min_lr_size"],
                            settings["id_prefix"], stats, bad)
    record_schema.write_tfrecord(path, records)
    stats.update(skipped=bad.skipped, conversions=dict(bad.conversions))
    fileio.write_json(record_schema.shard_json_path(path), stats)
    logging.info("wrote %s: %d examples, %d skipped (%.1f s)", path, stats["examples"],
                 len(stats["skipped"]), time.time() - start)
    return stats


def prepare_records(source, output_dir, num_shards=4, scale=3, min_lr_size=16, id_prefix=None,
                    num_workers=1, on_bad_image=bad_images.DEFAULT_POLICY):
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
        on_bad_image: "skip" or "fail", see `keras_sr.common.bad_images`.

    Returns:
        The summary dict that is also written to output_dir/summary.json.

    Raises:
        bad_images.NoImagesError: a source folder without images, or no usable image at all.
        bad_images.BadImageError: under on_bad_image="fail", the first bad image (finished
            shards stay; a rerun resumes).
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    src = parse_source(source, scale)
    bad = bad_images.BadImages(on_bad_image)
    for entry in src.listing_skipped:  # before any shard is written
        bad.add(entry.item, entry.reason, entry.fatal)
    if src.num_items is not None:
        num_shards = min(num_shards, src.num_items)
    settings = {"source": src.spec, "scale": scale, "min_lr_size": min_lr_size,
                "id_prefix": src.default_prefix if id_prefix is None else id_prefix,
                "schema": sorted(record_schema.SR_FEATURES)}
    with lock.WorkdirLock(output_dir):  # one writer; creates the folder
        start = time.time()
        if num_workers > 1 and num_shards > 1:
            # spawn: the workers must not inherit TensorFlow/OpenCV thread pools through fork.
            pool = concurrent.futures.ProcessPoolExecutor(
                min(num_workers, num_shards), mp_context=multiprocessing.get_context("spawn"))
        else:
            pool = concurrent.futures.ThreadPoolExecutor(1)  # in this process, one shard at a time
        with pool:
            futures = {pool.submit(_write_shard, src, output_dir, i, num_shards, settings,
                                   on_bad_image): i
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

        for shard in shards:  # each was logged by the process that wrote the shard
            bad.extend(shard.get("skipped", []), log=False)
        small = [image for s in shards for image in s.get("small_lr", [])]
        if small:
            logging.warning("%d images have an LR side under %d px; training at that patch size "
                            "leaves them out: %s", len(small), SMALL_LR,
                            ", ".join(i["image_id"] for i in small[:10]))
        summary = {
            **settings,
            "num_examples": sum(s["examples"] for s in shards),
            "num_converted_gray": sum(s["converted_gray"] for s in shards),
            **bad.to_json(),
            "conversions": bad_images.count_conversions(s.get("conversions", {}) for s in shards),
            "small_lr": {"lr_side_under": SMALL_LR, "images": small},
            "num_shards": num_shards,
            "shards": [{"file": s["file"], "examples": s["examples"]} for s in shards],
        }
        return _write_summary(output_dir, summary)


def prepare_benchmark(source, output_dir, scale=3, min_lr_size=16,
                      on_bad_image=bad_images.DEFAULT_POLICY):
    """Writes a source in the EDSR benchmark layout (HR/ + LR_bicubic/X<scale>/) for evaluation.

    HR images are written as read (not cropped; grayscale stays grayscale); LR images are the
    source's own or made with the MATLAB rule. File names are the image names without id prefix.
    Bad inputs follow `on_bad_image`, as in `prepare_records`.

    Returns:
        Summary dict (also written to output_dir/summary.json).
    """
    src = parse_source(source, scale)
    bad = bad_images.BadImages(on_bad_image)
    for entry in src.listing_skipped:
        bad.add(entry.item, entry.reason, entry.fatal)

    def pairs():
        for item in src.read_shard(0, 1, id_prefix=""):
            checked = item if isinstance(item, Skipped) else _checked_pair(item, scale, min_lr_size)
            if isinstance(checked, Skipped):
                bad.add(checked.item, checked.reason)
                continue
            bad.note(item.origin, item.notes)
            name = item.image_id.replace("/", "_")
            yield name, item.hr, checked[1]

    with lock.WorkdirLock(output_dir):
        names = benchmark.write_benchmark_layout(pairs(), output_dir, scale)
        return _write_summary(output_dir, {
            "source": src.spec, "scale": scale, "layout": "benchmark", "num_examples": len(names),
            "names": names, **bad.to_json(), "conversions": dict(sorted(bad.conversions.items()))})


def _write_summary(output_dir, summary):
    """Writes summary.json; raises NoImagesError if nothing usable was written."""
    path = os.path.join(output_dir, SUMMARY_FILE)
    fileio.write_json(path, summary)
    if summary["num_examples"] == 0:
        raise bad_images.NoImagesError(f"source {summary['source']!r} gave no usable images "
                                       f"({summary['num_skipped']} skipped); see {path}")
    return summary
