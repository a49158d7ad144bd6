"""The training loop: smoke runs of every stage, resume, the NaN guard and tf.distribute parity."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import Killed, kill_before_step

from keras_sr import configs, evaluate, losses, models, workdir
from keras_sr.train import lib


def _smoke(stage, **changes):
    return configs.get_config(stage, "smoke").replace(**changes)


def test_stage1_smoke_writes_workdir_and_resumes(tiny_data, tmp_path):
    records, val = tiny_data
    run_dir = str(tmp_path / "stage1")
    first = lib.train(_smoke(1, steps=4), run_dir, records, val_data=val, run_info={"flag": 1})
    for name in ("flags.json", "config.json", "metrics.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert json.load(open(os.path.join(run_dir, "flags.json"))) == {"flag": 1}
    assert first["step"] == 4 and np.isfinite(first["train_loss"])
    assert tf.io.gfile.glob(os.path.join(run_dir, "tb", "events.out.tfevents.*"))

    # The validation PSNR logged by the loop is what the restored checkpoint scores.
    run = workdir.WorkDir.open(run_dir)
    model = run.load("training")
    assert run.stage == 1
    rescored = evaluate.evaluate_benchmark(evaluate.keras_model_predictor(model), val)
    assert abs(rescored["psnr_y"] - first["val_psnr_y"]) < 1e-6

    # Rerunning with more steps resumes at step 4 from the same weights instead of starting over.
    before = [w.copy() for w in model.get_weights()]
    second = lib.train(_smoke(1, steps=6), run_dir, records, val_data=val)
    assert second["step"] == 6
    assert tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")).endswith("ckpt-6")
    resumed = workdir.load(os.path.join(run_dir, "checkpoints", "ckpt-4"), "training")
    for a, b in zip(before, resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_stage1_reduces_the_loss(tiny_data, tmp_path):
    records, _ = tiny_data
    config = _smoke(1, steps=60, log_every=20, checkpoint_every=60, learning_rate=2e-3)
    metrics = lib.train(config, str(tmp_path / "w"), records)
    history = metrics["loss_history"]
    assert history[-1] < 0.8 * history[0], history


def test_non_finite_loss_stops_with_the_step_range(tiny_data, tmp_path, monkeypatch):
    records, _ = tiny_data

    def nan_loss(config, with_teacher=True):
        def fn(output, batch):
            value = tf.reduce_mean(output) * np.nan
            return value, {"l1": value}
        return fn

    monkeypatch.setattr(losses, "make_loss", nan_loss)
    with pytest.raises(FloatingPointError, match="between steps 1 and 2"):
        lib.train(_smoke(1, steps=4), str(tmp_path / "w"), records)


def test_stage2_starts_from_stage1_and_stage2_needs_init(tiny_data, tmp_path):
    records, val = tiny_data
    stage1 = str(tmp_path / "s1")
    lib.train(_smoke(1, steps=2), stage1, records)
    with pytest.raises(ValueError, match="--init_from is required"):
        lib.train(_smoke(2), str(tmp_path / "bad"), records)
    metrics = lib.train(_smoke(2, steps=2, learning_rate=0.0, final_learning_rate=0.0,
                                warmup_steps=0), str(tmp_path / "s2"),
                        records, val_data=val, init_from=stage1)
    # With a zero learning rate Stage 2 must still hold exactly the Stage-1 weights.
    a = workdir.load(stage1, "training")
    b = workdir.load(str(tmp_path / "s2"), "training")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        if wa.ndim > 1:  # BN moving statistics do move in training mode
            np.testing.assert_array_equal(wa, wb)
    assert {"train_charbonnier", "train_dct"} <= set(metrics)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import keras_sr
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from keras_sr import configs
    from keras_sr.train import lib
    records, workdir = sys.argv[1:3]
    # BatchNorm normalises each replica's half batch with its own statistics, so the branchy student
    # legitimately differs; the plain student checks the distribution mechanics exactly.
    config = configs.get_config(1, "smoke").replace(steps=4, log_every=1, checkpoint_every=4)
    config = config.replace(model=config.model.replace(block_type="plain"))
    out = {}
    for name, strategy in (("default", tf.distribute.OneDeviceStrategy("/cpu:0")),
                           ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        out[name] = lib.train(config, f"{workdir}/{name}", records, strategy=strategy)
        out[name + "_replicas"] = strategy.num_replicas_in_sync
    print("RESULT" + json.dumps(out))
""")


def test_mirrored_strategy_matches_single_device(tiny_data, tmp_path):
    records, _ = tiny_data
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT, records, str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT")[-1])
    assert result["mirrored_replicas"] == 2
    default, mirrored = result["default"]["loss_history"], result["mirrored"]["loss_history"]
    assert len(default) == len(mirrored) == 4
    np.testing.assert_allclose(mirrored, default, rtol=1e-4)


def test_stage2_with_teacher_records_from_the_bridge(tiny_data, tmp_path):
    """Teacher outputs written by teacher_bridge (fixture weights) drive the Stage-2 KD term."""
    torch = pytest.importorskip("torch", reason="the teacher bridge needs torch (extra 'teacher')")
    from conftest import require_shared

    from teacher_bridge import load_teacher, precompute

    weights = require_shared("fixtures", "mambairv2_light_x3", "weights.pth")
    records, val = tiny_data
    torch.set_num_threads(1)
    teacher = load_teacher(weights, routing="argmax")
    summary = precompute.precompute(teacher, str(tmp_path / "teacher"), records=records,
                                    num_shards=2, check_images=1)
    assert summary["num_images"] == 4

    stage1 = str(tmp_path / "s1")
    # The plain student: its randomly initialised output stays near [0, 1] (the linear online
    # form's un-normalized branches do not), which the bound below needs.
    lib.train(_smoke(1, steps=2, model=configs.ModelConfig(block_type="plain")), stage1, records)
    config = _smoke(2, steps=4, log_every=4, checkpoint_every=4)
    metrics = lib.train(config, str(tmp_path / "s2"), records, val_data=val, init_from=stage1,
                        teacher_records=str(tmp_path / "teacher"))
    # Random fixture weights are far from any image, so every pixel gets the floor weight w_min:
    # then L_KD = w_min * mean|y_hat - t| must lie in [0, w_min].
    assert 0.0 < metrics["train_kd"] <= config.loss.w_min
    assert {"train_charbonnier", "train_dct"} <= set(metrics)


# mobileone_online and mobileone_expand restart Adam at the switch; mobileone_linear carries its
# moments over. The restarting ones are slow-marked: the default run keeps the one that carries
# Adam over.
@pytest.mark.parametrize("block_type", [pytest.param("mobileone_online", marks=pytest.mark.slow),
                                        pytest.param("mobileone_expand", marks=pytest.mark.slow),
                                        "mobileone_linear"])
def test_fuse_at_switches_to_the_deploy_form_and_resumes_past_the_switch(tiny_data, tmp_path,
                                                                         monkeypatch, block_type):
    records, val = tiny_data
    config = _smoke(1, model=configs.ModelConfig(block_type=block_type, channels=8,
                                                 num_blocks=2, num_branches=2), fuse_at=0.5)
    assert config.fuse_step(config.steps) == 3
    straight = lib.train(config, str(tmp_path / "straight"), records, val_data=val)
    assert straight["fused"] and straight["step"] == 6
    run = workdir.WorkDir.open(str(tmp_path / "straight"))
    assert run.holds_fused_student and run.model_config.block_type == "plain"
    # After the switch the checkpoint holds the deploy graph, the plain student's.
    deploy = models.build_student(config.model, reparameterized=True)
    assert run.load("training").get_config() == deploy.get_config()
    before = workdir.WorkDir.open(str(tmp_path / "straight" / "checkpoints" / "ckpt-3"))
    assert before.holds_fused_student  # saved after the switch at step 3
    # The validation score of the run is its fused model's.
    rescored = evaluate.evaluate_benchmark(evaluate.make_predictor(str(tmp_path / "straight")), val)
    assert abs(rescored["psnr_y"] - straight["val_psnr_y"]) < 1e-6

    # Killed past the switch and resumed: the same final weights as the run straight through.
    with monkeypatch.context() as patch:
        kill_before_step(patch, 5)
        with pytest.raises(Killed, match="before step 5"):
            lib.train(config, str(tmp_path / "resumed"), records)
    lib.train(config, str(tmp_path / "resumed"), records)
    a, b = (workdir.load(str(tmp_path / name), "training") for name in ("straight", "resumed"))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wb, wa, rtol=1e-6, atol=1e-7)
    # A later stage starts from the fused student.
    stage3 = lib.train(_smoke(3), str(tmp_path / "s3"), records, init_from=str(tmp_path / "straight"))
    assert stage3["step"] == 6
    assert workdir.WorkDir.open(str(tmp_path / "s3")).config.model.block_type == "plain"
    with pytest.raises(ValueError, match="fuse_at needs Stage 1 or 2 and a block type of"):
        config.replace(model=config.model.replace(block_type="plain"))


def test_time_budget_shortens_the_run_and_its_schedule(tiny_data, tmp_path, monkeypatch):
    records, _ = tiny_data
    monkeypatch.setattr(lib, "_BUDGET_PROBE_STEPS", 3)
    # A budget already spent by the time the rate is known leaves one more step.
    config = _smoke(1, steps=10**6, time_budget_minutes=0.01, log_every=1, checkpoint_every=10**6)
    run_dir = str(tmp_path / "w")
    assert lib.train(config, run_dir, records)["step"] == 4
    # The shortened length is part of the checkpoint: rerunning does not start a longer run.
    assert lib.train(config, run_dir, records)["step"] == 4
    schedule = lib.WarmupCosine(1.0, 4, warmup_steps=0, final=0.0)
    assert float(schedule(4)) == pytest.approx(0.0, abs=1e-7)
