"""tf.data training input: aligned random LR/HR(/teacher) crops from SR TFRecords.

Each image is decoded once and kept in memory (T91 + BSD200 is about 60 MB decoded), then every
visit of an image cuts `crops_per_image` random aligned crops, each with one of the 8 flip/rot90
transforms, so two CPU cores only slice and copy memory. Randomness is stateless and seeded per
element, so a given `seed` gives the same stream on every run.

Teacher outputs (`keras_sr.common.record_schema.TEACHER_FEATURES`) are joined to the SR records by
`image_id` through an in-memory hash table built at load time, after checking that every training
image has a teacher image of exactly its HR size.

That load-time pass reads every record of every shard through TensorFlow's reader, which checks
each record's CRCs, so a corrupt or truncated shard is reported before training starts, naming the
shard and the record (`_read_records`), rather than as a DataLossError in the middle of a run.
"""
import collections
import logging
import re
import struct
import time

import tensorflow as tf

from keras_sr.common import record_schema
from keras_sr.data import records as records_lib

AUTOTUNE = tf.data.AUTOTUNE


def _png_size(header):
    """(height, width) from the first 24 bytes of a PNG; None if it is not a PNG."""
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    width, height = struct.unpack(">II", header[16:24])
    return height, width


def _read_records(path, parse):
    """Yields `parse` of each record of the TFRecord file `path`, in order, as NumPy values.

    Raises:
        ValueError: "PATH: record N (0-based): bad CRC|truncated ..." for a corrupt shard, or
            "PATH: not a readable record file of this schema (record N, ...)" when `parse` fails.
    """
    index = 0
    try:
        for element in tf.data.TFRecordDataset(path).map(parse).as_numpy_iterator():
            yield element
            index += 1
    except tf.errors.DataLossError as e:
        # TensorFlow's words: "corrupted record at OFFSET" (a CRC mismatch), "truncated record at".
        found = re.search(r"(corrupted|truncated) record at (\d+)", e.message)
        what = ("bad CRC" if found.group(1) == "corrupted" else "truncated") if found else "corrupt"
        where = f" at byte {found.group(2)}" if found else ""
        raise ValueError(f"{path}: record {index} (0-based): {what}{where}; the shard is damaged, "
                         "write it again") from None
    except tf.errors.OpError as e:
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", e.message.splitlines()[0])
        raise ValueError(f"{path}: not a readable record file of this schema (record {index}, "
                         f"0-based: {message})") from None


def _scan(files, schema, png_key, extra_keys=()):
    """Reads ids, PNG sizes and `extra_keys` of every record without decoding images.

    Returns:
        List of dicts with "file", "image_id" (str), "size" ((h, w) of the `png_key` image) and
        extras.
    """
    spec = {k: v for k, v in records_lib.feature_spec(schema).items()
            if k in ("image_id", "scale", png_key) + tuple(extra_keys)}

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        ex["header"] = tf.strings.substr(ex.pop(png_key), 0, 24)
        return ex

    entries = []
    for path in files:
        for ex in _read_records(path, parse):
            size = _png_size(ex.pop("header"))
            image_id = ex.pop("image_id").decode("utf-8")
            if size is None:
                raise ValueError(f"{path}: record {image_id!r} holds no PNG in {png_key!r}")
            entries.append({"file": path, "image_id": image_id, "size": size, **ex})
    return entries


def _teacher_table(teacher_files, sr_entries, scale):
    """Loads teacher PNGs into an id -> PNG bytes hash table after checking the join."""
    teachers = {}
    spec = records_lib.feature_spec(record_schema.TEACHER_FEATURES)
    spec = {k: spec[k] for k in ("image_id", "teacher_png", "height", "width")}
    for path in teacher_files:
        for ex in _read_records(path, lambda s: tf.io.parse_single_example(s, spec)):
            image_id = ex["image_id"].decode("utf-8")
            if image_id in teachers:
                raise ValueError(f"{path}: teacher output for {image_id!r} appears twice "
                                 f"(also in {teachers[image_id][0]})")
            size = _png_size(ex["teacher_png"][:24])
            if size != (ex["height"], ex["width"]):
                raise ValueError(f"{path}: teacher image of {image_id!r} is {size}, but the record "
                                 f"says height={ex['height']}, width={ex['width']}")
            teachers[image_id] = (path, ex["teacher_png"], size)
    for entry in sr_entries:
        teacher = teachers.get(entry["image_id"])
        if teacher is None:
            raise ValueError(f"{entry['file']}: image {entry['image_id']!r} has no teacher output "
                             "in "
                             f"the teacher records {teacher_files}")
        if teacher[2] != entry["size"]:
            raise ValueError(f"{teacher[0]}: teacher image of {entry['image_id']!r} is "
                             f"{teacher[2]}, but its HR in {entry['file']} is {entry['size']} "
                             f"(x{scale} of the LR)")
    ids = [e["image_id"] for e in sr_entries]
    pngs = tf.constant([teachers[i][1] for i in ids])
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids), pngs), default_value=b"")


def _crop_and_augment(example, seed, lr_patch, scale):
    """Cuts one aligned random crop of an image and applies a random flip/rot90 to all its parts.

    Args:
        example: dict of uint8 images "lr" [h, w, 3], "hr" (and "teacher") [scale*h, scale*w, 3].
        seed: int64 scalar, this crop's seed.

    Returns:
        dict of uint8 crops "lr" [p, p, 3], "hr" (and "teacher") [scale*p, scale*p, 3].
    """
    shape = tf.shape(example["lr"])
    seeds = tf.random.experimental.stateless_split(tf.stack([seed, tf.constant(0, tf.int64)]), 3)
    y = tf.random.stateless_uniform([], seeds[0], 0, shape[0] - lr_patch + 1, tf.int32)
    x = tf.random.stateless_uniform([], seeds[1], 0, shape[1] - lr_patch + 1, tf.int32)
    # One of the 8 dihedral transforms: rot90 by t % 4, then a horizontal flip for t >= 4.
    t = tf.random.stateless_uniform([], seeds[2], 0, 8, tf.int32)
    out = {}
    for key, image in example.items():
        f = 1 if key == "lr" else scale
        crop = tf.slice(image, [f * y, f * x, 0], [f * lr_patch, f * lr_patch, 3])
        crop = tf.image.rot90(crop, t % 4)
        crop = tf.cond(t >= 4, lambda c=crop: tf.reverse(c, [1]), lambda c=crop: c)
        out[key] = tf.ensure_shape(crop, [f * lr_patch, f * lr_patch, 3])
    return out


def make_train_dataset(records, lr_patch=64, batch_size=16, scale=3, teacher_records=None,
                       shuffle_buffer=256, seed=None, repeat=True, crops_per_image=8, cache=True):
    """Builds the training input pipeline.

    Args:
        records: SR TFRecords (file, folder, glob, or a list of them), see
            `keras_sr.common.record_schema.list_record_files`.
        lr_patch: side p of the LR crops; HR/teacher crops are scale * p. Images whose LR is smaller
            than p on a side are left out (logged).
        batch_size: examples per batch; the last partial batch is dropped so shapes are static.
        scale: SR factor; must match the records.
        teacher_records: optional teacher TFRecords joined by image_id; then "teacher" is yielded
            too.
        shuffle_buffer: number of crops shuffled over (on top of shuffling the image order each
            pass).
        seed: int seed for a reproducible stream; None for a random one.
        repeat: cycle forever (True) or make one pass of crops_per_image crops per image.
        crops_per_image: random crops cut from an image per visit.
        cache: keep decoded images in memory (turn off only for data sets larger than RAM).

    Returns:
        tf.data.Dataset of dicts: "lr" float32 [B, p, p, 3], "hr" float32 [B, scale*p, scale*p, 3]
        (and "teacher", like "hr"), values in [0, 1].

    Raises:
        ValueError: records of another scale, no image large enough for the patch, duplicate ids
            with teacher records, a teacher output missing or of the wrong size, or a corrupt or
            truncated shard (messages name the file, and the record where it is one).
    """
    files = record_schema.list_record_files(records)
    entries = _scan(files, record_schema.SR_FEATURES, "hr_png", ("scale",))
    for e in entries:
        if e["scale"] != scale:
            raise ValueError(f"{e['file']}: record {e['image_id']!r} has scale {e['scale']}, "
                             f"expected {scale}")
    small = [e for e in entries if min(e["size"]) < scale * lr_patch]
    entries = [e for e in entries if min(e["size"]) >= scale * lr_patch]
    if small:  # every one named: a data set that shrinks at a larger patch should not go unseen
        logging.warning("%d of %d images are smaller than the %dx%d LR patch and are left out: %s",
                        len(small), len(small) + len(entries), lr_patch, lr_patch,
                        ", ".join(f"{e['image_id']} (HR {e['size'][1]}x{e['size'][0]})"
                                  for e in small))
    if not entries:
        raise ValueError(f"no image in {files} is large enough for an LR patch of {lr_patch}")
    counts = collections.Counter(e["image_id"] for e in entries)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates and teacher_records is not None:
        raise ValueError(f"image ids {duplicates[:5]} occur more than once in {files}; the teacher "
                         "join needs unique ids")
    if duplicates:
        logging.warning("image ids %s occur more than once in %s", duplicates[:5], files)
    table = (_teacher_table(record_schema.list_record_files(teacher_records), entries, scale)
             if teacher_records is not None else None)

    spec = records_lib.feature_spec(record_schema.SR_FEATURES)
    min_hr = scale * lr_patch

    def decode(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        return {"image_id": ex["image_id"], "lr": tf.io.decode_png(ex["lr_png"], channels=3),
                "hr": tf.io.decode_png(ex["hr_png"], channels=3)}

    def large_enough(ex):
        return tf.reduce_all(tf.shape(ex["hr"])[:2] >= min_hr)

    def join_teacher(ex):
        # Only images kept by the size filter are guaranteed a teacher entry.
        image_id = ex.pop("image_id")
        if table is not None:
            ex["teacher"] = tf.io.decode_png(table.lookup(image_id), channels=3)
        return ex

    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=AUTOTUNE)
    ds = (ds.map(decode, num_parallel_calls=AUTOTUNE).filter(large_enough)
          .map(join_teacher, num_parallel_calls=AUTOTUNE))
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(len(entries) if cache else min(len(entries), 32), seed=seed)
    if repeat:
        ds = ds.repeat()
    # Repeating an element only copies tensor handles; the pixels are sliced once per crop below.
    ds = ds.flat_map(lambda ex: tf.data.Dataset.from_tensors(ex).repeat(crops_per_image))
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed)))
    ds = ds.map(lambda ex, s: _crop_and_augment(ex, s, lr_patch, scale),
                num_parallel_calls=AUTOTUNE)
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda b: {k: tf.cast(v, tf.float32) / 255.0 for k, v in b.items()},
                num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def pipeline_throughput(dataset, num_batches=100, warmup_batches=5):
    """Measures how fast a dataset yields examples, after a warm-up that fills caches.

    Args:
        dataset: a batched dataset of dicts (as from `make_train_dataset`).
        num_batches: batches timed.
        warmup_batches: batches consumed before timing starts (the first decodes every image).

    Returns:
        Examples per second (float).
    """
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    examples = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        batch = next(iterator)
        examples += int(tf.shape(next(iter(batch.values())))[0])
    return examples / (time.perf_counter() - start)
