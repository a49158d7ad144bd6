"""Shared pytest fixtures.

`../shared` (data, fixtures, references) sits beside the checkout on CI and on the developers' machines but
not in a user's clone; tests that need it skip with a reason that says so.
"""
import dataclasses
import importlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types

import keras_sr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any test imports TensorFlow)
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl import flags

from keras_sr import configs, data, models, quant
from keras_sr.common import image_io

# Runs that are compared with each other (a killed-and-resumed training run against an
# uninterrupted one) must not differ by thread scheduling: with several threads some CPU kernels
# reduce in varying order, and fake-quant rounding turns 1e-7 differences into whole grid steps.
tf.config.experimental.enable_op_determinism()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = pathlib.Path(os.environ.get("KERAS_SR_SHARED", REPO_ROOT.parent / "shared"))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow test: pass --run-slow to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def require_shared(*parts):
    """Returns SHARED_DIR/parts, skipping the calling test when it is absent."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the ../shared folder beside the checkout "
                    "(present on CI, not in a plain clone)")
    return path


def run_tool(name, *args):
    """Runs the binary tools/NAME.py in this process, as `keras-sr-...` would, and returns main's value.

    The module is imported as installed (`keras_sr_tools.NAME`), its flags are parsed from `args`,
    then its `main` is called. Afterwards its flags are removed again, so that binaries which define
    flags of the same name (--json, --workdir, ...) can run one after another in one process. Flag
    errors (`flags.Error`) and `app.UsageError` propagate to the caller.
    """
    module_name = f"keras_sr_tools.{name}"
    module = importlib.import_module(module_name)
    try:
        flags.FLAGS([name, *args])
        return module.main([name])
    finally:
        flags.FLAGS.unparse_flags()
        for flag in flags.FLAGS.get_flags_for_module(module_name):
            delattr(flags.FLAGS, flag.name)
        del sys.modules[module_name]


# --------------------------------------------------------------------------------------------------
# A training process that dies between two steps.

class Killed(Exception):
    """Stands in for the process dying between two steps."""


def kill_before_step(monkeypatch, doomed_step):
    """Makes the next training run die just before step `doomed_step` runs.

    Every `stages.Stage` made while the patch holds (also the fused one of a `fuse_at` run) raises
    `Killed` from its `on_step` hook at that step.
    """
    from keras_sr.train import stages

    @dataclasses.dataclass
    class Dying(stages.Stage):
        def __post_init__(self):
            on_step = self.on_step

            def dying(step, total):
                if step == doomed_step:
                    raise Killed(f"killed before step {step}")
                on_step(step, total)

            self.on_step = dying

    monkeypatch.setattr(stages, "Stage", Dying)


# --------------------------------------------------------------------------------------------------
# Tiny training data: SR records of four 72x90 images and a validation set of two.

def smooth_image(rng, height, width):
    """A random photograph-like image: low-frequency colour fields plus mild texture."""
    coarse = rng.random((height // 8 + 2, width // 8 + 2, 3))
    image = tf.image.resize(coarse[None], (height, width), "bicubic")[0].numpy()
    image += 0.05 * rng.standard_normal(image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """SR records of four 72x90 images and an EDSR-layout validation folder of two."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        os.makedirs(root / split)
        for i in range(count):
            image_io.write_png(str(root / split / f"{split}{i}.png"), smooth_image(rng, 72, 90))
    data.prepare_records(f"folder:{root / 'train'}", str(root / "records"), num_shards=2)
    data.prepare_benchmark(f"folder:{root / 'val'}", str(root / "val_set"))
    return str(root / "records"), str(root / "val_set")


# --------------------------------------------------------------------------------------------------
# A trained QAT model, shared by test_qat.py and test_export.py.

TOTAL_STEPS = 30
QAT_CONFIG = configs.QATConfig(phase_a=0.4, phase_b=0.3, calibration_batches=4)


def fused_student(channels=32, num_blocks=8):
    """The deploy-form student (82,683 parameters at the defaults)."""
    return models.build_student(reparameterized=True, channels=channels, num_blocks=num_blocks)


def synthetic_pair(rng, batch=4, size=16, scale=3):
    """Smooth random RGB images: (LR on the 1/255 grid, HR) float32 in [0, 1]."""
    noise = rng.uniform(0.0, 1.0, (batch, size // 4 + 2, size // 4 + 2, 3)).astype(np.float32)
    hr = tf.clip_by_value(tf.image.resize(noise, (size * scale, size * scale), "bicubic"), 0, 1)
    lr = tf.nn.avg_pool2d(hr, scale, scale, "VALID").numpy()
    return np.round(lr * 255.0) / 255.0, hr.numpy()


def ranges(q_model, group):
    return [np.concatenate([np.ravel(v["min_var"].numpy()), np.ravel(v["max_var"].numpy())])
            for v in quant.quantizer_variables(q_model, group)]


def kernels(q_model):
    return [quant.latent_conv_weights(w)[0].numpy()
            for w in quant.conv_wrappers(q_model)]


def make_train_step(q_model, optimizer, post_update=True):
    @tf.function
    def train_step(lr, hr):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.abs(q_model(lr, training=True) - hr))
        grads = tape.gradient(loss, q_model.trainable_variables)
        optimizer.apply_gradients(zip(grads, q_model.trainable_variables))
        if post_update:
            quant.post_update(q_model)
        return loss

    return train_step


@pytest.fixture(scope="session")
def qat_run():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    fused = fused_student()
    q_model = quant.build_qat_model(fused, QAT_CONFIG)
    pairs = [synthetic_pair(rng) for _ in range(6)]
    quant.calibrate(q_model, (lr for lr, _ in pairs), QAT_CONFIG)
    optimizer = keras.optimizers.Adam(2e-3)
    train_step = make_train_step(q_model, optimizer)
    snapshots, traces_after_first = {}, None
    for step in range(1, TOTAL_STEPS + 1):
        phase = quant.phase_for_step(QAT_CONFIG, step, TOTAL_STEPS)
        if phase not in snapshots:
            snapshots[phase] = (ranges(q_model, "activation"), ranges(q_model, "weight"),
                                kernels(q_model))
        quant.set_phase(q_model, phase)
        train_step(*pairs[step % len(pairs)])
        if traces_after_first is None:
            traces_after_first = train_step.experimental_get_tracing_count()
    snapshots["end"] = (ranges(q_model, "activation"), ranges(q_model, "weight"),
                        kernels(q_model))
    return types.SimpleNamespace(q_model=q_model, fused=fused, optimizer=optimizer,
                                 train_step=train_step, pairs=pairs, snapshots=snapshots,
                                 traces_after_first=traces_after_first)


def small_qat_run(model_config, seed, steps=10, learning_rate=2e-3, float_steps=0):
    """The QAT model of `model_config`'s deploy graph, calibrated and trained through A, B, C.

    `float_steps` train the float graph first (L1, Adam 3e-3), a tiny Stage 1, so that the QAT
    model starts from a network whose output spans the pixel range.
    """
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    fused = models.build_student(model_config, reparameterized=True)
    pairs = [synthetic_pair(rng) for _ in range(4)]
    if float_steps:
        float_step = make_train_step(fused, keras.optimizers.Adam(3e-3), post_update=False)
        for step in range(float_steps):
            float_step(*pairs[step % len(pairs)])
    q_model = quant.build_qat_model(fused, QAT_CONFIG)
    quant.calibrate(q_model, (lr for lr, _ in pairs), QAT_CONFIG)
    optimizer = keras.optimizers.Adam(learning_rate)
    train_step = make_train_step(q_model, optimizer)
    for step in range(1, steps + 1):
        quant.set_phase(q_model, quant.phase_for_step(QAT_CONFIG, step, steps))
        train_step(*pairs[step % len(pairs)])
    return types.SimpleNamespace(q_model=q_model, fused=fused, model_config=model_config,
                                 optimizer=optimizer, pairs=pairs)


@pytest.fixture(scope="session")
def anchored_qat_run():
    """The QAT model of a small anchored student (`ModelConfig.anchor`), trained through A, B, C."""
    return small_qat_run(configs.ModelConfig(block_type="plain", channels=8, num_blocks=2,
                                             anchor=True), seed=1)


# The baselines at their papers' sizes and the depthwise-separable student, each through QAT.
ARCH_CONFIGS = {
    "abpn": configs.ModelConfig.for_arch("abpn"),
    "fsrcnn": configs.ModelConfig.for_arch("fsrcnn"),
    "repdw": configs.ModelConfig(block_type="repdw", channels=16, num_blocks=2, num_branches=2),
}


# FSRCNN's parity tests are slow-marked (about 25 s); ABPN and repdw run by default.
@pytest.fixture(scope="session", params=[pytest.param(name, marks=pytest.mark.slow) if name == "fsrcnn"
                                        else name for name in sorted(ARCH_CONFIGS)])
def arch_qat_run(request):
    """`small_qat_run` of each of `ARCH_CONFIGS` (the attribute `arch` names it)."""
    run = small_qat_run(ARCH_CONFIGS[request.param], seed=2, learning_rate=3e-4, float_steps=60)
    run.arch = request.param
    return run


# --------------------------------------------------------------------------------------------------
# A page in a real browser (headless Chromium, installed by .ci/run; the check skips without it).

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Appended to a copy of the page only: the report itself carries no script. After the load event
# (every image decoded or failed), it records what the browser made of the page.
CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (i) { return i.naturalWidth; });
  var tables = Array.prototype.map.call(document.querySelectorAll("table"), function (t) {
    return [t.rows.length, t.rows[0].cells.length]; });
  var pre = document.createElement("pre");
  pre.id = "report-check";
  pre.textContent = JSON.stringify({widths: images, tables: tables});
  document.body.appendChild(pre);
});
</script>
"""


def chromium():
    """The path of a Chromium/Chrome binary, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if found:
            return found
    return None


def run_chromium(binary, url, tmp_path, *args, timeout=120):
    proc = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}",
                           "--virtual-time-budget=5000", *args, url],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def browser_check(html_path, tmp_path):
    """Opens a page in headless Chromium; returns ({"widths", "tables"}, the DOM after load).

    `widths` is the natural width of every <img> (0: not decoded), `tables` the [rows, columns]
    of every table. Skips the calling test when no Chromium binary exists.
    """
    binary = chromium()
    if binary is None:
        pytest.skip(f"no Chromium binary ({', '.join(CHROMIUM_NAMES)}): install it with "
                    "`apt-get install -y chromium` to run the browser check")
    page = open(html_path, encoding="utf-8").read()
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    dom = run_chromium(binary, checked.as_uri(), tmp_path, "--dump-dom")
    match = re.search(r'<pre id="report-check">(.*?)</pre>', dom, re.S)
    assert match, f"the check script did not run; DOM tail: {dom[-500:]}"
    return json.loads(match.group(1).replace("&quot;", '"')), dom
