"""The embedded photographs: sizes, RGB output, train/val disjointness, licences, lazy packages."""
import hashlib
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from keras_sr.common import image_io
from keras_sr.data import builtin

# The sizes (height, width) the installed packages must deliver; written out here, not read from
# builtin.PHOTOS, so that a changed file in a new package release is noticed.
EXPECTED_SIZES = {
    "astronaut": (512, 512), "motorcycle_left": (500, 741), "motorcycle_right": (500, 741),
    "rocket": (427, 640), "grace_hopper": (600, 512), "camera": (512, 512), "coins": (303, 384),
    "brick": (512, 512), "grass": (512, 512), "gravel": (512, 512), "text": (172, 448),
    "chelsea": (300, 451), "coffee": (400, 600),
}
GRAYSCALE = {"camera", "coins", "brick", "grass", "gravel", "text"}


@pytest.fixture(scope="module")
def images():
    return {split: dict(builtin.load_split(split)) for split in builtin.SPLITS}


def _hash(image):
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()


def test_splits_name_each_recorded_photo_once():
    names = builtin.TRAIN + builtin.VAL
    assert len(set(names)) == len(names)
    assert set(names) == set(builtin.PHOTOS) == set(EXPECTED_SIZES)
    assert builtin.VAL == ("chelsea", "coffee")  # validation numbers stay comparable across versions
    assert not set(builtin.TRAIN) & set(builtin.VAL)


def test_every_image_loads_as_uint8_rgb_of_its_recorded_size(images):
    for split, loaded in images.items():
        assert list(loaded) == list(builtin.SPLITS[split])
        for name, hr in loaded.items():
            assert hr.dtype == np.uint8, name
            assert hr.shape == EXPECTED_SIZES[name] + (3,), name
            assert hr.shape[:2] == builtin.PHOTOS[name].size, name
            gray = np.array_equal(hr[..., 0], hr[..., 1]) and np.array_equal(hr[..., 1], hr[..., 2])
            assert gray == (not builtin.PHOTOS[name].color) == (name in GRAYSCALE), name


def test_grayscale_files_are_replicated_not_converted():
    for name, path in builtin.image_paths("train"):
        raw = image_io.read_image(path)
        assert (raw.ndim == 2) == (name in GRAYSCALE), name
        if raw.ndim == 2:
            np.testing.assert_array_equal(dict(builtin.load_split("train"))[name],
                                          image_io.to_rgb(raw))
            break  # one is enough: load_split applies the same `to_rgb` to each


def test_train_and_val_are_disjoint_by_content(images):
    train, val = images["train"], images["val"]
    train_hashes = {_hash(hr): name for name, hr in train.items()}
    assert len(train_hashes) == len(train)  # no image is listed twice under two names
    for name, hr in val.items():
        assert _hash(hr) not in train_hashes, f"val image {name} is also in train"
    # Nor a near copy (a rescaled or re-encoded version): thumbnails must not correlate strongly.
    def thumb(hr):
        small = cv2.resize(hr.mean(axis=-1).astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA)
        return (small - small.mean()) / (small.std() + 1e-6)

    for v_name, v in val.items():
        for t_name, t in train.items():
            corr = float(np.mean(thumb(v) * thumb(t)))
            assert corr < 0.9, f"val {v_name} looks like train {t_name} (correlation {corr:.2f})"


def test_files_are_distinct_on_disk():
    paths = dict(builtin.image_paths("train") + builtin.image_paths("val"))
    digests = {}
    for name, path in paths.items():
        with open(path, "rb") as f:
            digests.setdefault(hashlib.sha256(f.read()).hexdigest(), []).append(name)
    assert all(len(names) == 1 for names in digests.values()), digests


def test_every_image_has_a_source_and_a_licence():
    table = builtin.licences()
    assert list(table) == list(builtin.TRAIN + builtin.VAL)
    for name, entry in table.items():
        assert entry["package"] in ("scikit-image", "matplotlib"), name
        assert entry["source"].strip() and entry["licence"].strip(), name
        assert entry["split"] == ("val" if name in builtin.VAL else "train")
        assert tuple(entry["size"]) == EXPECTED_SIZES[name]
    assert list(builtin.licences(("val",))) == list(builtin.VAL)
    with pytest.raises(ValueError, match="unknown builtin split"):
        builtin.licences(("test",))


def test_paths_resolve_in_the_package_that_ships_each_image():
    import matplotlib
    import skimage.data

    roots = {"scikit-image": os.path.dirname(skimage.data.__file__),
             "matplotlib": os.path.join(matplotlib.get_data_path(), "sample_data")}
    for name, path in builtin.image_paths("train") + builtin.image_paths("val"):
        photo = builtin.PHOTOS[name]
        assert path == os.path.join(roots[photo.package], photo.file), name
        assert os.path.isfile(path), path
    with pytest.raises(ValueError, match="unknown builtin split"):
        builtin.image_paths("test")


def test_importing_the_module_imports_no_image_package():
    code = ("import sys, keras_sr.data.builtin as b; b.licences(); "
            "print(sorted(m for m in ('skimage', 'matplotlib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_file_names_its_package(monkeypatch, tmp_path):
    monkeypatch.setitem(builtin._PACKAGE_DIRS, "matplotlib", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="grace_hopper.*missing from matplotlib.*matplotlib>="):
        list(builtin.load_split("train"))
