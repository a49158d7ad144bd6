"""Writes MambaIRv2-Light x3 teacher outputs for prepared SR records into sharded TFRecords.

    keras-sr-precompute-teacher --checkpoint=mambairv2_lightSR_x3.pth --records=records/div2k \
        --output=records/div2k_teacher
    # split over two machines writing into the same folder:
    keras-sr-precompute-teacher ... --num_shards=16 --shard_index=0,2,4,6,8,10,12,14 --device=cuda
    # LR images without records (ids "<folder name>/<stem>"):
    keras-sr-precompute-teacher --checkpoint=... --images=LR_folder --output=teacher_out

Reruns skip finished shards. OUTPUT/flags.json holds the resolved flags, OUTPUT/summary.json the
settings, the finished shards, the skipped images with their reasons and the teacher-vs-bicubic
PSNR check. --on_bad_image=fail ends the run at the first unusable image (one line naming it, exit
status 1). Needs torch, not TensorFlow.
"""
import json
import os

from absl import app, flags, logging

from keras_sr.common import bad_images, cli, fileio
from teacher_bridge import inference, load, precompute
from teacher_bridge.model import CONFIGS, DEFAULT_CONFIG, DEFAULT_SEED

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Official MambaIRv2-Light .pth file.",
                                  required=True)
_SHA256 = flags.DEFINE_string("checkpoint_sha256", None, "Expected hex sha256 of --checkpoint "
                              "(e.g. from the release page); the run stops if it differs. The "
                              "sha256 of what was loaded is recorded either way.")
_RECORDS = flags.DEFINE_string("records", None, "SR TFRecords: a file, folder or glob.")
_IMAGES = flags.DEFINE_string("images", None, "Instead of --records: a folder of LR images.")
_ID_PREFIX = flags.DEFINE_string("id_prefix", None,
                                 "--images only: id prefix (default: the folder's name).")
_OUTPUT = flags.DEFINE_string("output", None, "Output folder.", required=True)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 8, "Output shards of the whole job.",
                                   lower_bound=1)
_SHARD_INDEX = flags.DEFINE_list("shard_index", None,
                                 "Shards this run writes, e.g. 0,2 (default: all).")
_DEVICE = flags.DEFINE_string("device", "cpu", "torch device: cpu, cuda, cuda:1, ...")
_ROUTING = flags.DEFINE_enum("routing", "gumbel", ["gumbel", "argmax"],
                             "gumbel: official (noise at inference, seeded per image); argmax: "
                             "deterministic.")
_SEED = flags.DEFINE_integer("seed", DEFAULT_SEED, "Per-image Gumbel seed.")
_CONFIG = flags.DEFINE_enum("config", DEFAULT_CONFIG, sorted(CONFIGS),
                            "Teacher configuration (smoke: a tiny one for tests).")
_TILE = flags.DEFINE_integer("tile", inference.OFFICIAL_TILE,
                             "Tiles per side = LR side // tile + 1 (official 200); 0: no tiling.",
                             lower_bound=0)
_OVERLAP = flags.DEFINE_float("overlap", inference.OFFICIAL_OVERLAP,
                              "Tile overlap as a fraction of the tile core.", lower_bound=0,
                              upper_bound=0.5)
_BATCH = flags.DEFINE_integer("batch_size", 4, "Tiles per forward pass.", lower_bound=1)
_CHECK = flags.DEFINE_integer("check_images", 4,
                              "Images for the teacher-vs-bicubic PSNR check (0: none).",
                              lower_bound=0)
_ON_BAD_IMAGE = flags.DEFINE_enum("on_bad_image", bad_images.DEFAULT_POLICY,
                                  list(bad_images.POLICIES), bad_images.FLAG_HELP)

flags.register_validator("checkpoint", os.path.isfile, message="--checkpoint must be a file")
flags.register_validator("checkpoint_sha256", lambda v: v is None or (
    len(v.strip()) == 64 and all(c in "0123456789abcdef" for c in v.strip().lower())),
    message="--checkpoint_sha256 must be 64 hex digits")
flags.register_validator("shard_index", lambda v: v is None or all(s.isdigit() for s in v),
                         message="--shard_index must be comma-separated non-negative integers")
flags.mark_flags_as_mutual_exclusive(["records", "images"], required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        model = load.load_teacher(_CHECKPOINT.value, routing=_ROUTING.value, device=_DEVICE.value,
                                  seed=_SEED.value, config=_CONFIG.value,
                                  expected_sha256=_SHA256.value)
    except load.CheckpointError as e:
        raise app.UsageError(f"--checkpoint: {e}") from None
    # Written once the checkpoint is known to be good: a refused run leaves nothing behind.
    os.makedirs(_OUTPUT.value, exist_ok=True)
    fileio.write_json(os.path.join(_OUTPUT.value, "flags.json"), cli.resolved_flags(__name__))
    logging.info("teacher %s (sha256 %s), routing %s%s, device %s", _CHECKPOINT.value,
                 model.checkpoint_sha256, model.routing,
                 f" (seed {model.seed})" if model.routing == "gumbel" else "", _DEVICE.value)
    try:
        summary = precompute.precompute(
            model, _OUTPUT.value, records=_RECORDS.value, images=_IMAGES.value,
            id_prefix=_ID_PREFIX.value, num_shards=_NUM_SHARDS.value,
            shard_indices=(None if _SHARD_INDEX.value is None
                           else [int(s) for s in _SHARD_INDEX.value]),
            tile=_TILE.value or None, overlap=_OVERLAP.value, batch_size=_BATCH.value,
            check_images=_CHECK.value, on_bad_image=_ON_BAD_IMAGE.value)
    except (bad_images.NoImagesError, FileNotFoundError) as e:  # an empty or missing input
        raise app.UsageError(f"--{'images' if _IMAGES.value else 'records'}: {e}") from None
    print(json.dumps({k: v for k, v in summary.items() if k != "inputs"}, indent=1))


def run():
    cli.run_main(main)


if __name__ == "__main__":
    run()
