"""Shared pytest fixtures.

`../shared` (data, fixtures, references) sits beside the checkout on CI and on the developers' machines but
not in a user's clone; tests that need it skip with a reason that says so.
"""
import os
import pathlib

import keras_sr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any test imports TensorFlow)
import pytest

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
