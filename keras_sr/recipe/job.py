"""The whole method in one resumable job: data, Stages 1-3, INT8 export and evaluation.

    keras-sr-run --workdir=runs/demo                       # embedded photographs, default configs
    keras-sr-run --workdir=runs/t91 --train_source=folder:../shared/data/T91/HR \
        --val_source=benchmark:../shared/data/Set5 --eval_data=../shared/data/Set14

Every step writes into WORKDIR and is skipped or resumed when the job is run again:

    WORKDIR/records/      SR TFRecords of the training source
    WORKDIR/val/          the validation set in the EDSR benchmark layout
    WORKDIR/stage{1,2,3}/ training work directories
    WORKDIR/export/       student_int8.tflite (+ .json, .savedmodel/) at the fixed deploy shape
    WORKDIR/summary.json  FP32 / QAT INT8 PSNR and SSIM of every evaluation set, and the resolved flags
"""
import os

from absl import logging

from keras_sr import configs, data, evaluate
from keras_sr.common import fileio
from keras_sr.export import files, tflite_lib
from keras_sr.train import lib


def _prepared(folder):
    return os.path.isfile(os.path.join(folder, "summary.json"))


def run_recipe(workdir, train_source="builtin:train", val_source="builtin:val", config="default",
               teacher_records=None, eval_data=(), input_shape=tflite_lib.DEFAULT_INPUT_SHAPE,
               strategy="default", run_info=None):
    """Runs data preparation, the three stages, export and evaluation; see the module docstring.

    Args:
        workdir: output folder of the whole job.
        train_source, val_source: source specs of `keras_sr.data.prepare_records`.
        config: config variant of every stage ("default", "smoke", ...).
        teacher_records: optional teacher TFRecords for Stages 2 and 3.
        eval_data: further EDSR-layout folders to evaluate the final models on.
        input_shape: fixed NHWC shape of the exported INT8 model.
        strategy: tf.distribute strategy name of the training stages.
        run_info: resolved flags, stored in the summary.

    Returns:
        The summary dict (also WORKDIR/summary.json).
    """
    records, val_dir = os.path.join(workdir, "records"), os.path.join(workdir, "val")
    if not _prepared(records):
        data.prepare_records(train_source, records)
    if not _prepared(val_dir):
        data.prepare_benchmark(val_source, val_dir)

    previous = None
    stage_metrics = {}
    for stage in (1, 2, 3):
        stage_dir = os.path.join(workdir, f"stage{stage}")
        logging.info("=== Stage %d -> %s", stage, stage_dir)
        stage_metrics[f"stage{stage}"] = lib.train(
            configs.get_config(stage, config), stage_dir, records, val_data=val_dir,
            init_from=previous, teacher_records=teacher_records if stage > 1 else None,
            strategy=strategy, run_info={"recipe": run_info or {}})
        previous = stage_dir

    tflite_path = os.path.join(workdir, "export", "student_int8.tflite")
    export = files.export_workdir(previous, tflite_path, tuple(input_shape), "uint8", "int8")
    models = {"bicubic": "bicubic", "fp32_stage2": os.path.join(workdir, "stage2"),
              "int8_tflite": tflite_path}
    scores = {}
    for data_dir in (val_dir, *eval_data):
        for name, spec in models.items():
            result = evaluate.evaluate_benchmark(evaluate.make_predictor(spec), data_dir)
            scores.setdefault(data_dir, {})[name] = {k: result[k] for k in evaluate.METRIC_KEYS}
            logging.info("%s on %s: PSNR-Y %.3f dB", name, data_dir, result["psnr_y"])
    summary = {"flags": run_info or {}, "stages": stage_metrics, "export": export, "scores": scores}
    fileio.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary
