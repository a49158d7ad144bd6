"""The embedded default data set: natural RGB photographs that ship inside scikit-image.

It lets a user without any download train and evaluate end to end (and tests run anywhere). It is
tiny, so models trained on it are demos, not benchmarks.

Split (by image, so that no validation pixel is seen in training; the two motorcycle frames are a
stereo pair and stay together on the training side):

* train: astronaut (512x512), motorcycle_left, motorcycle_right (500x741), rocket (427x640, JPEG)
* val: chelsea (300x451), coffee (400x600)

The other scikit-image samples are left out on purpose: they are grayscale, synthetic (color wheel,
phantom, chessboard, logo), microscopy/medical (ihc, retina, cell) or mostly empty sky
(hubble_deep_field), whose statistics differ from the photographs an SR model is meant for.
"""
import os

from keras_sr.common import image_io
from keras_sr.data import benchmark

TRAIN = ("astronaut", "motorcycle_left", "motorcycle_right", "rocket")
VAL = ("chelsea", "coffee")
SPLITS = {"train": TRAIN, "val": VAL}
_FILES = {"astronaut": "astronaut.png", "motorcycle_left": "motorcycle_left.png",
          "motorcycle_right": "motorcycle_right.png", "rocket": "rocket.jpg",
          "chelsea": "chelsea.png", "coffee": "coffee.png"}


def data_dir():
    """scikit-image's folder of bundled sample images (read directly: no network fetch)."""
    import skimage.data  # the only use of scikit-image; imported lazily

    return os.path.dirname(skimage.data.__file__)


def image_paths(split):
    """(name, path) of the images of a split ("train" or "val")."""
    if split not in SPLITS:
        raise ValueError(f"unknown builtin split {split!r}; choose from {sorted(SPLITS)}")
    root = data_dir()
    return [(name, os.path.join(root, _FILES[name])) for name in SPLITS[split]]


def load_split(split):
    """Yields (name, hr uint8 HxWx3 RGB) for each image of a split.

    Raises:
        FileNotFoundError: the installed scikit-image lacks a bundled image (it names the file).
    """
    for name, path in image_paths(split):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"builtin image {name!r} is missing from scikit-image "
                                    f"({path}); "
                                    "reinstall scikit-image>=0.22")
        yield name, image_io.read_image(path)


def write_benchmark_layout(out_dir, split="val", scale=3):
    """Writes a builtin split in the EDSR benchmark layout (HR/ + LR_bicubic/X<scale>/).

    The LR images are made with the MATLAB bicubic rule, so `tools/evaluate.py --data=out_dir`
    measures the same degradation as on Set5/Set14.

    Returns:
        The names written.
    """
    return benchmark.write_benchmark_layout(
        ((name, hr, None) for name, hr in load_split(split)), out_dir, scale)
