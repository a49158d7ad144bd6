"""Turns images into sharded SR TFRecords for training, or an EDSR-layout folder for evaluation.

    keras-sr-prepare-data --source=benchmark:../shared/data/T91 --output=records/T91
    keras-sr-prepare-data --source=folder:DIV2K_train_HR --output=records/div2k --num_shards=16
    keras-sr-prepare-data --source=builtin:train --output=records/builtin_train
    keras-sr-prepare-data --source=builtin:val --output=data/builtin_val --format=benchmark

Sources: folder:PATH (LR made with the MATLAB bicubic rule), benchmark:PATH (EDSR layout, LR as
    given),
tfds:div2k/bicubic_x3[:SPLIT] (downloads), builtin:train / builtin:val (embedded photographs).
OUTPUT/summary.json lists the counts, the conversions made (16-bit, palette, CMYK, EXIF
orientation, alpha dropped, grayscale, mod-crop) and every skipped file with its reason;
OUTPUT/flags.json the resolved flags. Rerunning resumes. --on_bad_image=fail ends the run at the
first unusable image instead (one line naming it, exit status 1); a source folder without images
is a usage error (exit status 2).
"""
import json
import os

from absl import app, flags, logging

import keras_sr  # noqa: F401  (selects Keras 2 before TensorFlow loads, should a source import it)
from keras_sr.common import bad_images, cli, fileio, lock
from keras_sr.data import prepare, sources

_SOURCE = flags.DEFINE_string(
    "source", None, "folder:PATH, benchmark:PATH, tfds:NAME[:SPLIT], builtin:train or builtin:val.",
    required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output folder.", required=True)
_FORMAT = flags.DEFINE_enum("format", "tfrecord", ["tfrecord", "benchmark"],
                            "tfrecord: training shards; benchmark: HR/ + LR_bicubic/X<scale>/ "
                            "PNGs.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 4, "Number of TFRecord shards.", lower_bound=1)
_SCALE = flags.DEFINE_integer("scale", 3, "Super-resolution factor.", lower_bound=2)
_MIN_LR = flags.DEFINE_integer("min_lr_size", 16,
                               "Skip images whose LR would be smaller than this.", lower_bound=1)
_ID_PREFIX = flags.DEFINE_string("id_prefix", None, "Image id prefix (default: the source's name).")
_WORKERS = flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Shards written in parallel.",
                                lower_bound=1)
_ON_BAD_IMAGE = flags.DEFINE_enum("on_bad_image", bad_images.DEFAULT_POLICY,
                                  list(bad_images.POLICIES), bad_images.FLAG_HELP)

flags.register_validator(
    "source", lambda s: s.partition(":")[0] in ("folder", "benchmark", "tfds", "builtin")
    and bool(s.partition(":")[2]),
    message="--source must be folder:PATH, benchmark:PATH, tfds:NAME[:SPLIT], builtin:train or "
            "builtin:val")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:  # a missing or empty source folder: nothing is written
        sources.parse_source(_SOURCE.value, _SCALE.value)
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(f"--source={_SOURCE.value}: {e}") from None
    # The lock first: a second run refused on this folder must not replace the owner's flags.
    with lock.WorkdirLock(_OUTPUT.value):
        fileio.write_json(os.path.join(_OUTPUT.value, "flags.json"), cli.resolved_flags(__name__))
        try:
            if _FORMAT.value == "benchmark":
                summary = prepare.prepare_benchmark(_SOURCE.value, _OUTPUT.value, _SCALE.value,
                                                    _MIN_LR.value, _ON_BAD_IMAGE.value)
            else:
                summary = prepare.prepare_records(_SOURCE.value, _OUTPUT.value, _NUM_SHARDS.value,
                                                  _SCALE.value, _MIN_LR.value, _ID_PREFIX.value,
                                                  _WORKERS.value, _ON_BAD_IMAGE.value)
        except bad_images.NoImagesError as e:  # no usable image at all; each skip was logged
            raise app.UsageError(f"--source={_SOURCE.value}: {e}") from None
    logging.info("%s: %d images written to %s, %d skipped; summary in %s",
                 summary["source"], summary["num_examples"], _OUTPUT.value, summary["num_skipped"],
                 os.path.join(_OUTPUT.value, prepare.SUMMARY_FILE))
    listed = ("skipped", "names", "small_lr")  # in summary.json; long for a large source
    print(json.dumps({k: v for k, v in summary.items() if k not in listed}, indent=1))


def run():
    cli.run_main(main)


if __name__ == "__main__":
    run()
