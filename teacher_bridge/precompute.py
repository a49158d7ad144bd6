"""Runs the teacher over prepared SR records (or a folder of LR images) and writes teacher records.

Output folder:
    teacher-00000-of-0000N.tfrecord ...   `record_schema.TEACHER_FEATURES` records, keyed by the
                                          input's image_id; each shard written atomically
    teacher-00000-of-0000N.json ...       per-shard summary with the job settings; a rerun with the
                                          same settings skips finished shards, so a job resumes
                                          (shards and their JSON are the same bytes whether or
                                          not a run was interrupted)
    summary.json                          settings, finished/missing shards, and what the latest
                                          run did: "written_now", the PSNR "check" (on the first
                                          images it wrote), "seconds"
    .teacher-0000K-of-0000N.tfrecord.lock while a run writes shard K (`keras_sr.common.lock`; a
                                          lock per shard, as several machines may share a folder)

Input images that cannot be used (unreadable, corrupt PNG inside a record, an LR under
MIN_LR_SIDE px) follow `on_bad_image` (`keras_sr.common.bad_images`): skipped, and listed in their
shard's JSON and in summary.json under "skipped", or the first one ends the run. LR image files
(`images=`) are read as user images (`image_io.read_rgb`: any bit depth, palette, CMYK, EXIF
orientation; alpha dropped, grayscale replicated), the conversions counted under "conversions".

The inputs are listed in a fixed order (sorted files, records in file order) and cut into
`num_shards` contiguous ranges, so machines can split the job with `shard_indices` and write into
the same folder. Before writing, the teacher's Y-PSNR (BT.601, border = scale) against HR is
compared with OpenCV bicubic upscaling on a few images: a wrong checkpoint or routing shows at once.
No TensorFlow here: the job runs where only torch is installed, so from keras_sr it uses only the
dependency-free `keras_sr.common`.
"""
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import time

import cv2
import numpy as np

from keras_sr.common import bad_images, fileio, image_io, lock, metrics, record_schema
from keras_sr.common.progress import format_duration
from teacher_bridge import inference

SHARD_PATTERN = "teacher-{index:05d}-of-{count:05d}.tfrecord"
SUMMARY_FILE = "summary.json"
NO_SEED = -1  # recorded as the seed when routing is deterministic (argmax)
MIN_LR_SIDE = 8  # the teacher's smallest input side


@dataclasses.dataclass(frozen=True)
class Item:
    """One input image: where to find it, not its pixels (the listing stays small)."""
    image_id: str
    path: str  # the TFRecord file or the image file
    record: int  # record number inside the TFRecord file; -1 for image files


def _decode_rgb(data, name):
    """Decodes 8-bit PNG/JPEG/BMP bytes into (H, W, 3) uint8 RGB, grey replicated, alpha dropped.

    Raises:
        image_io.ImageError (a ValueError): naming `name`, for undecodable data or another bit depth.
    """
    return image_io.to_rgb(image_io.decode_image(data, name))


def list_inputs(records=None, images=None, id_prefix=None):
    """Lists the input images in a fixed order.

    Args:
        records: SR TFRecords (`record_schema.SR_FEATURES`): a file, a folder, a glob or a list of
            them (see `record_schema.list_record_files`).
        images: instead of records, a folder of LR images (PNG/JPEG/BMP, not recursive).
        id_prefix: images only: ids are "<id_prefix>/<file stem>" (default: the folder's name),
            as `tools/prepare_data.py` names the records of a folder source.

    Returns:
        [Item, ...].

    Raises:
        ValueError: not exactly one of records/images, or a duplicate image id.
        bad_images.NoImagesError: no input images (the message names the folder or records).
    """
    if (records is None) == (images is None):
        raise ValueError("give exactly one of records= (SR TFRecords) and images= (LR folder)")
    items, seen = [], {}
    if records is not None:
        for path in record_schema.list_record_files(records):
            for number, data in enumerate(record_schema.read_tfrecord(path, verify=False)):
                image_id = _decode_sr(data, path, number)["image_id"].decode("utf-8")
                items.append(Item(image_id, path, number))
    else:
        if not os.path.isdir(images):
            raise FileNotFoundError(f"images={images!r} is not a folder")
        prefix = os.path.basename(os.path.normpath(images)) if id_prefix is None else id_prefix
        for name in sorted(os.listdir(images)):
            stem, ext = os.path.splitext(name)
            # Broken links and symlink loops are kept: reading them names the reason.
            if (ext.lower() in image_io.IMAGE_EXTENSIONS
                    and not os.path.isdir(os.path.join(images, name))):
                items.append(Item(f"{prefix}/{stem}" if prefix else stem,
                                  os.path.join(images, name), -1))
    for item in items:
        where = f"{item.path} record {item.record}" if item.record >= 0 else item.path
        if item.image_id in seen:
            raise ValueError(f"duplicate image_id {item.image_id!r}: {seen[item.image_id]} and "
                             f"{where}; teacher outputs are joined by id, so ids must be unique")
        seen[item.image_id] = where
    if not items:
        raise bad_images.NoImagesError(
            f"no input images in records={records!r}" if images is None else
            f"images={images!r}: no PNG/JPEG/BMP files in the folder")
    return items


def _decode_sr(data, path, number):
    try:
        return record_schema.decode_example(data, record_schema.SR_FEATURES)
    except record_schema.RecordError as e:
        raise ValueError(f"{path} record {number}: not an SR record ({e})") from e


def _read_items(items, scale, bad):
    """Yields (item, lr, hr or None) for the usable items, reading each record file once.

    Args:
        items: `Item`s.
        scale: the teacher's factor.
        bad: a `bad_images.BadImages`; an item that cannot be used is recorded there (or raises
            under its "fail" policy) and left out.

    Raises:
        ValueError: a record's scale is not `scale`.
        record_schema.RecordError: a corrupt or truncated record file (names it and the record).
    """
    by_file = {}
    for item in items:
        by_file.setdefault(item.path, {})[item.record] = item
    for path, wanted in by_file.items():
        if -1 in wanted:  # an image file
            try:
                lr, notes = image_io.training_pixels(image_io.read_rgb(path))
            except image_io.ImageError as e:
                bad.add(path, str(e))
                continue
            if lr.ndim == 2:
                lr, notes = image_io.to_rgb(lr), notes + (image_io.GRAY_NOTE,)
            if _usable(lr, path, bad):
                bad.note(path, notes)
                yield wanted[-1], lr, None
            continue
        last = max(wanted)
        for number, data in enumerate(record_schema.read_tfrecord(path)):
            if number in wanted:
                rec = _decode_sr(data, path, number)
                name = f"{path} record {number} ({wanted[number].image_id})"
                if rec["scale"] != scale:
                    raise ValueError(f"{name} has scale {rec['scale']}, the teacher is x{scale}")
                try:
                    lr = _decode_rgb(rec["lr_png"], name + " lr_png")
                    hr = _decode_rgb(rec["hr_png"], name + " hr_png")
                except image_io.ImageError as e:
                    bad.add(name, str(e))
                    continue
                if _usable(lr, name, bad):
                    yield wanted[number], lr, hr
            if number == last:
                break


def _usable(lr, name, bad):
    """Whether the teacher can run on `lr`; records it in `bad` if not."""
    if min(lr.shape[:2]) >= MIN_LR_SIDE:
        return True
    bad.add(name, f"LR image {lr.shape[1]}x{lr.shape[0]} is under the teacher's minimum of "
                  f"{MIN_LR_SIDE} px per side")
    return False


class Progress:
    """Logs done/total, rate and ETA at most every `every` seconds (and at the end).

    `ready` items are done before the timing starts (e.g. computed earlier); they count towards
    done/total but not towards the rate.
    """

    def __init__(self, total, what="images", every=10.0, ready=0):
        self.total, self.what, self.every, self.ready = total, what, every, ready
        self.done, self.start, self.last = 0, time.time(), 0.0

    def update(self, count=1):
        self.done += count
        now = time.time()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        elapsed = now - self.start
        timed = self.done - min(self.done, self.ready)
        rate = timed / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        filled = int(30 * self.done / max(self.total, 1))
        logging.info("[%s%s] %d/%d %s, %.3f/s, elapsed %s, ETA %s", "#" * filled,
                     "." * (30 - filled), self.done, self.total, self.what, rate,
                     format_duration(elapsed), format_duration(eta))


class _Teacher:
    """The model plus the inference settings; runs one LR image."""

    def __init__(self, model, tile, overlap, batch_size):
        self.model, self.tile, self.overlap, self.batch_size = model, tile, overlap, batch_size

    def __call__(self, lr, name):
        if min(lr.shape[:2]) < MIN_LR_SIDE:
            raise ValueError(f"{name}: LR image {lr.shape[1]}x{lr.shape[0]} is under the "
                             f"teacher's minimum of {MIN_LR_SIDE} px per side")
        return inference.upscale_image(self.model, lr, self.tile, self.overlap, self.batch_size)


def check_against_bicubic(teacher, items, count, on_bad_image=bad_images.DEFAULT_POLICY):
    """Y-PSNR of teacher and OpenCV-bicubic outputs against HR on the first `count` items.

    Items that cannot be used are left out (they are recorded when their shard is written), or
    raise `bad_images.BadImageError` under on_bad_image="fail".

    Returns:
        (report dict, {image_id: teacher output}) so that those outputs need not be recomputed.
    """
    rows, outputs = [], {}
    s = teacher.model.upscale
    check_bad = bad_images.BadImages(on_bad_image)
    for item, lr, hr in _read_items(items[:count], s, check_bad):
        out = teacher(lr, item.image_id)
        outputs[item.image_id] = out
        if hr is None:
            continue
        hr = hr[:s * lr.shape[0], :s * lr.shape[1]]
        bicubic = cv2.resize(lr, (hr.shape[1], hr.shape[0]), interpolation=cv2.INTER_CUBIC)
        rows.append({"image_id": item.image_id,
                     "teacher_psnr_y": metrics.psnr(out, hr, crop_border=s, y_channel=True),
                     "bicubic_psnr_y": metrics.psnr(bicubic, hr, crop_border=s, y_channel=True)})
        logging.info("check %s: teacher %.2f dB, bicubic %.2f dB (Y, border %d)", item.image_id,
                     rows[-1]["teacher_psnr_y"], rows[-1]["bicubic_psnr_y"], s)
    report = {"images": rows}
    if rows:
        report["mean_teacher_psnr_y"] = float(np.mean([r["teacher_psnr_y"] for r in rows]))
        report["mean_bicubic_psnr_y"] = float(np.mean([r["bicubic_psnr_y"] for r in rows]))
        logging.info("check on %d images: teacher %.2f dB vs bicubic %.2f dB", len(rows),
                     report["mean_teacher_psnr_y"], report["mean_bicubic_psnr_y"])
        if report["mean_teacher_psnr_y"] <= report["mean_bicubic_psnr_y"]:
            logging.warning("the teacher does not beat bicubic: check the checkpoint and routing")
    else:
        logging.warning("no HR images among the inputs: teacher-vs-bicubic check skipped")
    return report, outputs


def _shard_ranges(num_items, num_shards):
    return [(k * num_items // num_shards, (k + 1) * num_items // num_shards)
            for k in range(num_shards)]


def precompute(model, output_dir, records=None, images=None, id_prefix=None, num_shards=8,
               shard_indices=None, tile=inference.OFFICIAL_TILE, overlap=inference.OFFICIAL_OVERLAP,
               batch_size=4, check_images=4, on_bad_image=bad_images.DEFAULT_POLICY):
    """Writes teacher records for every input image (see the module docstring for the layout).

    Args:
        model: teacher from `teacher_bridge.load_teacher` (its checkpoint_sha256, routing, seed
            and upscale are recorded).
        output_dir: folder for shards and summary (created if needed).
        records, images, id_prefix: the inputs, see `list_inputs`.
        num_shards: number of output shards of the whole job (capped at the number of images).
        shard_indices: shards this process writes (default: all); others are left to other runs.
        tile, overlap, batch_size: tiling, see `teacher_bridge.inference.upscale_tensor`.
        check_images: first images of the pending shards for the teacher-vs-bicubic check.
        on_bad_image: "skip" or "fail" (see `keras_sr.common.bad_images`).

    Returns:
        The summary dict also written to output_dir/summary.json.

    Raises:
        bad_images.NoImagesError: no input images.
        bad_images.BadImageError: under on_bad_image="fail", the first unusable image.
    """
    start = time.time()
    items = list_inputs(records, images, id_prefix)
    num_shards = max(1, min(num_shards, len(items)))
    shard_indices = range(num_shards) if shard_indices is None else sorted(set(shard_indices))
    bad = [k for k in shard_indices if not 0 <= k < num_shards]
    if bad:
        raise ValueError(f"shard indices {bad} are outside [0, {num_shards})")
    gumbel = model.routing == "gumbel"
    # Identify the inputs by their ids, not paths, so that machines mounting the data elsewhere
    # agree on which shards are finished.
    ids = hashlib.sha256("\n".join(item.image_id for item in items).encode()).hexdigest()
    settings = {
        "num_images": len(items), "image_ids_sha256": ids,
        "num_shards": num_shards, "checkpoint_sha256": model.checkpoint_sha256,
        "routing": model.routing, "seed": model.seed if gumbel else NO_SEED,
        "stable_sort": model.stable_sort, "scale": model.upscale,
        "tiling": inference.tiling_rule(tile, overlap),
        "schema": sorted(record_schema.TEACHER_FEATURES),
    }
    ranges = _shard_ranges(len(items), num_shards)
    paths = [os.path.join(output_dir, SHARD_PATTERN.format(index=k, count=num_shards))
             for k in range(num_shards)]
    with contextlib.ExitStack() as held:
        # A lock per shard, not per folder: runs on other machines may write the other shards.
        for k in shard_indices:
            held.enter_context(lock.WorkdirLock(output_dir, f".{os.path.basename(paths[k])}.lock"))
        pending = [k for k in shard_indices
                   if record_schema.finished_shard(paths[k], settings) is None]
        for k in sorted(set(shard_indices) - set(pending)):
            logging.info("shard %d of %d is finished; skipping it", k, num_shards)
        teacher = _Teacher(model, tile, overlap, batch_size)
        check, cached = {}, {}
        if pending and check_images > 0:
            todo = [item for k in pending for item in items[slice(*ranges[k])]]
            check, cached = check_against_bicubic(teacher, todo, check_images, on_bad_image)
        progress = Progress(sum(ranges[k][1] - ranges[k][0] for k in pending), ready=len(cached))
        fixed = {"checkpoint_sha256": settings["checkpoint_sha256"], "routing": model.routing,
                 "seed": settings["seed"], "tiling": settings["tiling"], "scale": model.upscale}

        def encode_shard(shard_items, stats, shard_bad):
            for item, lr, _ in _read_items(shard_items, model.upscale, shard_bad):
                out = cached.pop(item.image_id, None)
                if out is None:
                    out = teacher(lr, item.image_id)
                stats["images"] += 1
                progress.update()
                yield record_schema.encode_example(
                    {"image_id": item.image_id, "teacher_png": image_io.encode_png(out),
                     "height": out.shape[0], "width": out.shape[1], **fixed},
                    record_schema.TEACHER_FEATURES)

        for k in pending:
            path = paths[k]
            stats = {"file": os.path.basename(path), "images": 0, "settings": settings}
            shard_bad = bad_images.BadImages(on_bad_image)
            shard_start = time.time()
            record_schema.write_tfrecord(path, encode_shard(items[slice(*ranges[k])], stats,
                                                            shard_bad))
            stats.update(skipped=shard_bad.skipped, conversions=dict(shard_bad.conversions))
            # No timing in the shard's JSON: a resumed run writes the bytes of an uninterrupted one.
            fileio.write_json(record_schema.shard_json_path(path), stats)
            logging.info("wrote %s: %d images in %.0f s", path, stats["images"],
                         time.time() - shard_start)

        shards = {k: record_schema.finished_shard(path, settings) for k, path in enumerate(paths)}
        finished = [k for k, shard in shards.items() if shard]
        skipped = bad_images.BadImages()  # gathers what each shard's writer logged
        for k in finished:
            skipped.extend(shards[k].get("skipped", []), log=False)
        summary = {
            **settings,
            "inputs": sorted({item.path for item in items}),
            "finished_shards": finished,
            "missing_shards": sorted(set(range(num_shards)) - set(finished)),
            **skipped.to_json(),
            "conversions": bad_images.count_conversions(
                shards[k].get("conversions", {}) for k in finished),
            "written_now": pending,
            "check": check,
            "seconds": round(time.time() - start, 1),
        }
        fileio.write_json(os.path.join(output_dir, SUMMARY_FILE), summary)
        return summary
