"""Reproduces the paper's three ablation tables: backbone, where QAT happens, teacher in Stage 3.

    keras-sr-ablate --workdir=runs/ablation                  # cpu: minutes per cell
    keras-sr-ablate --workdir=runs/ablation_set5 --data=../shared/data/Set5
    keras-sr-ablate --config=paper --workdir=runs/ablation_paper \
        --teacher_records='runs/teacher/*.tfrecord'          # DIV2K, div2k stage configs (GPU)

Writes WORKDIR/backbone.{md,json}, placement.{md,json} and teacher.{md,json} (with the seed, the
budgets and every cell's commands and configs); see `keras_sr.ablation` for the folder layout.
Rerunning with the same flags resumes: finished cells are skipped, an interrupted one resumes from
its stages' checkpoints; other flags in the same work directory are refused.
"""
from absl import app, flags

import keras_sr  # noqa: F401  (selects Keras 2 before TensorFlow loads)
import tensorflow as tf  # isort: skip  (after keras_sr)
from keras_sr import ablation
from keras_sr.common import cli
from keras_sr.configs import ablation as ablation_configs

_WORKDIR = flags.DEFINE_string("workdir", "runs/ablation", "Output folder; rerun to resume.")
_CONFIG = flags.DEFINE_enum("config", "cpu", list(ablation_configs.VARIANTS),
                            "Ablation config: cpu (minutes per cell on a 2-core CPU), paper "
                            "(DIV2K, the paper's schedule, for a GPU), smoke (a few steps).")
_TRAIN = flags.DEFINE_string("train_records", None, "SR TFRecords (folder, file or glob); default: "
                             "made from the config's training source into WORKDIR/records.")
_DATA = flags.DEFINE_string("data", None, "Evaluation set: builtin:val, an EDSR-layout folder "
                            "(e.g. ../shared/data/Set5) or another source; default: the config's.")
_TEACHER = flags.DEFINE_string("teacher_records", None, "Teacher TFRecords of the training records "
                               "(the teacher table is not run without them).")
_CALIBRATION = flags.DEFINE_string("calibration_data", None, "PTQ's representative images: "
                                   "builtin:train or an EDSR-layout folder; default: the config's.")
_SEED = flags.DEFINE_integer("seed", None, "Seed of every stage; default: the config's.",
                             lower_bound=0)
_DETERMINISTIC = cli.define_deterministic(__name__)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _DETERMINISTIC.value:
        tf.config.experimental.enable_op_determinism()  # before the first op
    try:
        made = ablation.run_ablation(
            _WORKDIR.value, _CONFIG.value, train_records=_TRAIN.value, eval_data=_DATA.value,
            teacher_records=_TEACHER.value, calibration_data=_CALIBRATION.value, seed=_SEED.value,
            run_info=cli.resolved_flags(__name__))
    except (ablation.BadInput, ablation.AblationMismatch) as e:  # nothing was run
        raise app.UsageError(str(e)) from None
    for name in made:
        print(f"{name}: {_WORKDIR.value}/{name}.md")



def run():
    cli.run_main(main)


if __name__ == "__main__":
    run()
