"""The framework boundary: no TensorFlow in teacher_bridge and keras_sr.common, no torch in keras_sr.

Each check runs in a fresh interpreter in which the other framework cannot be imported (a
`sys.meta_path` finder refuses it), imports every module of the packages in question and reports the
modules that failed to import and the refused imports that nevertheless ended up in `sys.modules`.
"""
import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

TENSORFLOW = ("tensorflow", "tf_keras", "tensorflow_model_optimization")

# Runs in the child interpreter; formatted with the names to refuse and the packages to import.
_CHILD = """
import importlib, json, pkgutil, sys, traceback

REFUSED = {refused!r}


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in REFUSED:
            raise ModuleNotFoundError(f"{{name}} is made unimportable by test_boundary", name=name)
        return None


sys.meta_path.insert(0, Refuse())
failed, walk_errors = {{}}, []
names = []
for package in {packages!r}:
    module = importlib.import_module(package)
    names.append(package)
    names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".",
                                                          onerror=walk_errors.append)]
for name in names + walk_errors:
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps({{"imported": names, "failed": failed,
                  "leaked": sorted(m for m in sys.modules if m.partition(".")[0] in REFUSED),
                  "keras_sr": sorted(m for m in sys.modules if m.partition(".")[0] == "keras_sr")}}))
"""


def _import_all(packages, refused, timeout):
    """Imports every module of `packages` in a child interpreter where `refused` cannot be imported.

    Returns:
        dict: "imported" (module names), "failed" (name -> traceback), "leaked" (refused modules
        found in sys.modules) and "keras_sr" (the keras_sr modules loaded).
    """
    code = _CHILD.format(refused=tuple(refused), packages=tuple(packages))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"the import check crashed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_clean(report, refused):
    failures = "\n".join(f"{name}:\n{tb}" for name, tb in report["failed"].items())
    assert not report["failed"], f"modules that do not import without {refused}:\n{failures}"
    assert report["leaked"] == [], f"{report['leaked']} were imported"


def test_teacher_bridge_and_common_import_without_tensorflow():
    report = _import_all(["teacher_bridge", "keras_sr.common"], TENSORFLOW, timeout=120)
    _assert_clean(report, TENSORFLOW)
    assert {"teacher_bridge.precompute", "keras_sr.common.record_schema"} <= set(report["imported"])
    # From keras_sr, only the package itself (it sets an environment variable) and keras_sr.common.
    outside = [m for m in report["keras_sr"]
               if m not in ("keras_sr", "keras_sr.common") and not m.startswith("keras_sr.common.")]
    assert outside == [], f"teacher_bridge or keras_sr.common imported {outside}"


def test_keras_sr_imports_without_torch():
    report = _import_all(["keras_sr"], ["torch"], timeout=300)
    _assert_clean(report, ["torch"])
    assert {"keras_sr.data.pipeline", "keras_sr.common.metrics"} <= set(report["imported"])
