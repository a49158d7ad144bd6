"""Setup shim; the package metadata lives in setup.cfg.

The binaries live in the folder tools/ (so that `python tools/train.py` runs from a checkout) but are
installed as the package `keras_sr_tools`: a top-level `tools` package would collide with any other
distribution that ships one. setup.cfg cannot map a folder to another package name for `find:`
packages, so the package list is made here.
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["keras_sr", "keras_sr.*", "teacher_bridge",
                                      "teacher_bridge.*"]) + ["keras_sr_tools"],
      package_dir={"keras_sr_tools": "tools"})
