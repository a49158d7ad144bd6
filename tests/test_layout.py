"""The code's layout as README.md states it: layers, forbidden imports, module sizes, packaging.

The layer table is read from README.md ("How the code is laid out"), so the README is where the
order is stated and this test is what holds the code to it. Every import counts, also those inside
functions.
"""
import ast
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO_ROOT

MAX_MODULE_LINES = 400
# Keras 3 objects must never mix with tf_keras (tfmot works with Keras 2 only).
NEVER = {"keras_sr": ("torch", "teacher_bridge", "keras"),
         "teacher_bridge": ("tensorflow", "tf_keras", "tensorflow_model_optimization", "keras")}


def _layers():
    """{module prefix: layer number} from the README's layer table."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for number, modules in re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.M):
        for module in re.findall(r"`([\w.]+)`", modules):
            layers[module] = int(number)
    assert layers, "README.md has no layer table under 'How the code is laid out'"
    return layers


def _layer_of(module, layers):
    """The layer of the longest prefix of `module` in the table (None: not a keras_sr module)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in layers:
            return layers[prefix]
    return None


def _module_name(path):
    relative = path.relative_to(REPO_ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] == "tools":
        parts[0] = "keras_sr_tools"
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path):
    """Absolute names of every module `path` imports (from-imports also as module.name)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def _sources(*folders):
    return sorted(p for folder in folders for p in (REPO_ROOT / folder).rglob("*.py"))


def test_no_module_imports_from_a_higher_layer():
    layers = _layers()
    upward = []
    for path in _sources("keras_sr", "tools"):
        own = _layer_of(_module_name(path), layers)
        assert own is not None, f"{path} is in no layer of the README's table"
        for name in _imports(path):
            layer = _layer_of(name, layers)
            if layer is not None and layer > own:
                upward.append(f"{_module_name(path)} (layer {own}) imports {name} (layer {layer})")
    assert not upward, "\n".join(upward)


def test_forbidden_imports():
    layers = _layers()
    found = []
    for package, forbidden in NEVER.items():
        for path in _sources(package):
            for name in _imports(path):
                if name.split(".")[0] in forbidden:
                    found.append(f"{_module_name(path)} imports {name}")
    # teacher_bridge may use only the dependency-free layer of keras_sr.
    for path in _sources("teacher_bridge"):
        found += [f"{_module_name(path)} imports {name}" for name in _imports(path)
                  if name.startswith("keras_sr") and _layer_of(name, layers) != 1
                  and name != "keras_sr"]
    # The dependency-free layer imports no framework and nothing above itself.
    for path in _sources("keras_sr/common"):
        found += [f"{_module_name(path)} imports {name}" for name in _imports(path)
                  if name.split(".")[0] in ("tensorflow", "tf_keras", "torch",
                                            "tensorflow_model_optimization")]
    assert not found, "\n".join(found)


def test_no_module_is_over_the_size_limit():
    sizes = {str(p.relative_to(REPO_ROOT)): len(p.read_text().splitlines())
             for p in _sources("keras_sr")}
    too_long = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_the_wheel_installs_no_top_level_tools_package(tmp_path):
    """tools/ is installed as keras_sr_tools; every console script points into it."""
    pytest.importorskip("setuptools")
    # A copy of the sources: setuptools keeps a build/ folder whose stale files would end up in
    # the wheel, and the checkout stays clean.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "setup.cfg", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for name in ("keras_sr", "teacher_bridge", "tools"):
        shutil.copytree(REPO_ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("keras_sr-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"keras_sr", "keras_sr_tools", "teacher_bridge"}, top
    binaries = sorted(p.stem for p in (REPO_ROOT / "tools").glob("*.py") if p.stem != "__init__")
    assert all(f"keras_sr_tools/{b}.py" in names for b in binaries)
    scripts = dict(re.findall(r"^(keras-sr-[\w-]+) = (\S+)$", entry_points, re.M))
    assert sorted(scripts.values()) == sorted(f"keras_sr_tools.{b}:run" for b in binaries)
