"""Confinement: the binaries write only where they are told to, and nothing loads unsafely.

The binaries run as a user runs them (`python -m keras_sr_tools.NAME`, one process each) from an
empty working directory, with HOME and TMPDIR pointed at empty folders of their own, every output
flag inside OUT. Afterwards OUT holds exactly the outputs asked for, the working directory and
TMPDIR are empty (temporary files were removed), and the checkout and the input folders are
unchanged (same files, sizes and modification times; `__pycache__`, `.pytest_cache`, `.git` and
`.venv` left out).

HOME: importing the dependencies writes a few files there that keras-sr cannot prevent (the
variables that move them, KERAS_HOME and MPLCONFIGDIR, are the user's to set, not ours):
`~/.keras/keras.json`, the default config that tf_keras (and Keras 3) write on import, and
matplotlib's font cache and config folder. matplotlib comes in through Keras 3, which
tensorflow_model_optimization imports (it probes `keras.src`) when keras_sr.quant loads it.
`THIRD_PARTY_HOME` lists exactly these; anything else appearing in HOME fails the test.

Tests: prepare-data, evaluate (bicubic) and a Stage-1 smoke training run by default (3 processes);
the rest of the chain (a Stage-3 smoke run, export-tflite, upscale, parity and evaluate on the
.tflite) is slow-marked: Stage 3 alone takes about 45 s on 2 cores.
"""
import ast
import fnmatch
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, smooth_image

from keras_sr.common import image_io

TOOL_TIMEOUT_S = 300
# Left out of the snapshots: caches that Python and pytest keep up to date, version control, and
# the virtual environment (large; the checks below are about the project's own files).
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".git", ".venv"}
THIRD_PARTY_HOME = (".keras", ".keras/keras.json",
                    ".cache", ".cache/matplotlib", ".cache/matplotlib/fontlist-v*.json",
                    ".config", ".config/matplotlib")
# Variables that would move those writes out of HOME, where the check would not see them.
_HOME_OVERRIDES = ("KERAS_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME",
                   "TEST_TMPDIR", "TMP", "TEMP")


def _snapshot(root):
    """{relative path: (size, mtime_ns)} of every file and folder under `root`."""
    found = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        for name in dirs + names:
            path = os.path.join(folder, name)
            stat = os.lstat(path)
            found[os.path.relpath(path, root)] = (0 if name in dirs else stat.st_size,
                                                  stat.st_mtime_ns)
    return found


def _tree(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, dirs, names in os.walk(root) for name in dirs + names)


class Confined:
    """Runs binaries with a fresh working directory, HOME and TMPDIR; checks what they touched.

    Args:
        root: an empty folder; cwd/, home/, tmp/, out/ and logs/ are made in it.
        watched: folders that must not change (the checkout, the inputs).
    """

    def __init__(self, root, watched):
        self.root = pathlib.Path(root)
        for name in ("cwd", "home", "tmp", "out", "logs"):
            (self.root / name).mkdir()
        self.cwd, self.home, self.tmp, self.out = (self.root / n for n in ("cwd", "home", "tmp",
                                                                             "out"))
        self.env = {k: v for k, v in os.environ.items() if k not in _HOME_OVERRIDES}
        self.env.update(HOME=str(self.home), TMPDIR=str(self.tmp), CUDA_VISIBLE_DEVICES="",
                        TF_CPP_MIN_LOG_LEVEL="2")
        self.watched = {str(w): _snapshot(w) for w in watched}
        self.runs = 0

    def run(self, *commands):
        """Runs the (tool, *args) commands at the same time; fails on a non-zero exit status."""
        procs = []
        try:
            for tool, *args in commands:
                self.runs += 1
                log = self.root / "logs" / f"{self.runs}-{tool}.log"
                with open(log, "w") as out:
                    procs.append((tool, log, subprocess.Popen(
                        [sys.executable, "-m", f"keras_sr_tools.{tool}", *args], cwd=self.cwd,
                        env=self.env, stdout=out, stderr=subprocess.STDOUT)))
            for tool, log, proc in procs:
                proc.wait(timeout=TOOL_TIMEOUT_S)
                assert proc.returncode == 0, f"{tool} failed:\n{log.read_text()[-3000:]}"
        finally:
            for _, _, proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def check(self, outputs):
        """Asserts that OUT holds exactly `outputs` (top-level names) and nothing else changed."""
        assert sorted(os.listdir(self.out)) == sorted(outputs)
        assert _tree(self.cwd) == [], "files written into the working directory"
        assert _tree(self.tmp) == [], "temporary files left behind in TMPDIR"
        unexpected = [p for p in _tree(self.home)
                      if not any(fnmatch.fnmatch(p, pattern) for pattern in THIRD_PARTY_HOME)]
        assert unexpected == [], "files written into HOME"
        for root, before in self.watched.items():
            after = _snapshot(root)
            changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
            assert changed == [], f"changed under {root}"


@pytest.fixture(scope="module")
def confined_stage1(tiny_data, tmp_path_factory):
    """prepare-data and evaluate (bicubic), then a 2-step Stage-1 smoke run on the new records."""
    _, val = tiny_data
    images = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(2):
        image_io.write_png(str(images / f"image{i}.png"), smooth_image(rng, 72, 90))
    box = Confined(tmp_path_factory.mktemp("confined"),
                   [REPO_ROOT, images, pathlib.Path(val).parent])
    out = box.out
    box.run(("prepare_data", f"--source=folder:{images}", f"--output={out / 'records'}",
             "--num_shards=2"),
            ("evaluate", "--model=bicubic", f"--data={val}", f"--json={out / 'bicubic.json'}"))
    box.run(("train", "--stage=1", "--config=smoke", "--block_type=plain", "--steps=2",
             f"--workdir={out / 's1'}", f"--train_records={out / 'records'}", f"--val_data={val}"))
    return box, images, val


def test_prepare_evaluate_and_train_write_only_their_outputs(confined_stage1):
    box, _, _ = confined_stage1
    box.check(["bicubic.json", "records", "s1"])
    assert os.path.isfile(box.out / "s1" / "checkpoints" / "ckpt-2.index")
    assert not os.path.exists(box.out / "s1" / ".lock")  # the work directory lock is removed


@pytest.mark.slow
def test_stage3_export_upscale_parity_and_evaluate_write_only_their_outputs(confined_stage1):
    box, images, val = confined_stage1
    out = box.out
    box.run(("train", "--stage=3", "--config=smoke", "--steps=2", f"--workdir={out / 's3'}",
             f"--train_records={out / 'records'}", f"--init_from={out / 's1'}"))
    box.run(("export_tflite", f"--workdir={out / 's3'}", f"--output={out / 'student.tflite'}",
             "--input_shape=1,32,40,3"))
    box.run(("upscale", f"--model={out / 'student.tflite'}", f"--input={images / 'image0.png'}",
             f"--output={out / 'up.png'}", f"--json={out / 'upscale.json'}"),
            ("parity", f"--workdir={out / 's3'}", f"--tflite={out / 'student.tflite'}",
             f"--data={val}", f"--json={out / 'parity.json'}"),
            ("evaluate", f"--model={out / 'student.tflite'}", f"--data={val}",
             f"--json={out / 'tflite.json'}"))
    # export-tflite documents its companions of OUTPUT.tflite: OUTPUT.json and OUTPUT.savedmodel/.
    box.check(["bicubic.json", "parity.json", "records", "s1", "s3", "student.json",
               "student.savedmodel", "student.tflite", "tflite.json", "up.png", "upscale.json"])


# --------------------------------------------------------------------------------------------------
# No unsafe deserialization in the project's sources.

SCANNED = ("keras_sr", "teacher_bridge", "tools")
# Calls that run code named by the data they load, whatever their arguments.
UNSAFE_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
    "cPickle.load", "cPickle.loads", "dill.load", "dill.loads", "cloudpickle.load",
    "cloudpickle.loads", "joblib.load", "marshal.load", "marshal.loads", "shelve.open",
    "pandas.read_pickle", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
    "yaml.full_load_all", "eval", "exec", "builtins.eval", "builtins.exec",
}
_SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"}


def _dotted(node, aliases):
    """The dotted name of a Name/Attribute chain, its first part resolved through the imports."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _is_constant(node, value):
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_loads(source, filename="<source>"):
    """Lines of `source` that deserialize unsafely: ["FILE:LINE: WHAT", ...]."""
    tree = ast.parse(source, filename)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname or a.name.split(".")[0]: a.name if a.asname else
                            a.name.split(".")[0] for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        problem = None
        if name in UNSAFE_CALLS:
            problem = f"{name}()"
        elif name.endswith("enable_unsafe_deserialization"):
            problem = f"{name}()"
        elif "safe_mode" in keywords and not _is_constant(keywords["safe_mode"], True):
            problem = f"{name}(safe_mode=...) not True"
        elif "allow_pickle" in keywords and not _is_constant(keywords["allow_pickle"], False):
            problem = f"{name}(allow_pickle=...) not False"
        elif name == "torch.load" and not _is_constant(keywords.get("weights_only"), True):
            problem = "torch.load() without weights_only=True"
        elif name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if _dotted(loader, aliases) not in _SAFE_YAML_LOADERS:
                problem = f"{name}() without a safe Loader"
        if problem:
            found.append((node.lineno, f"{filename}:{node.lineno}: {problem}"))
    return [line for _, line in sorted(found)]


_UNSAFE_EXAMPLES = """
import pickle, marshal, yaml
import numpy as np
import torch as th
import tf_keras as keras
from pickle import loads as unpickle
pickle.load(f)
unpickle(b)
marshal.loads(b)
np.load(path, allow_pickle=True)
th.load(path)
th.load(path, weights_only=False)
keras.models.load_model(path, safe_mode=False)
keras.config.enable_unsafe_deserialization()
yaml.load(text)
yaml.load(text, Loader=yaml.FullLoader)
eval(open(path).read())
exec(code)
"""
_SAFE_EXAMPLES = """
import pickle, yaml
import numpy as np
import torch
import tf_keras as keras
from yaml import SafeLoader
np.load(path)
np.load(path, allow_pickle=False)
torch.load(path, map_location="cpu", weights_only=True)
keras.models.load_model(path)
keras.models.load_model(path, safe_mode=True)
yaml.load(text, Loader=yaml.SafeLoader)
yaml.load(text, SafeLoader)
yaml.safe_load(text)
model.eval()
try:
    pass
except pickle.UnpicklingError:
    pass
"""


def test_the_scan_finds_each_unsafe_form_and_passes_the_safe_ones():
    assert [line.split(": ", 1)[1] for line in unsafe_loads(_UNSAFE_EXAMPLES)] == [
        "pickle.load()", "pickle.loads()", "marshal.loads()",
        "numpy.load(allow_pickle=...) not False",
        "torch.load() without weights_only=True", "torch.load() without weights_only=True",
        "tf_keras.models.load_model(safe_mode=...) not True",
        "tf_keras.config.enable_unsafe_deserialization()", "yaml.load() without a safe Loader",
        "yaml.load() without a safe Loader", "eval()", "exec()"]
    assert unsafe_loads(_SAFE_EXAMPLES) == []


def test_no_project_module_deserializes_unsafely():
    files = sorted(p for d in SCANNED for p in (REPO_ROOT / d).rglob("*.py"))
    assert len(files) > 20  # the scan does see the sources
    found = [hit for path in files
             for hit in unsafe_loads(path.read_text(encoding="utf-8"),
                                     str(path.relative_to(REPO_ROOT)))]
    assert found == []
