"""The embedded default data set: natural photographs that ship inside installed Python packages.

It lets a user without any download train and evaluate end to end (and tests run anywhere). Every
image is read from a wheel that pip installs (scikit-image, matplotlib), never fetched at run time.
It is small, so models trained on it are demos, not benchmarks.

Split (by image, so that no validation pixel is seen in training; the two motorcycle frames are a
stereo pair and stay together on the training side). Sizes are height x width:

* train, colour: astronaut (512x512), motorcycle_left, motorcycle_right (500x741), rocket (427x640,
  JPEG), grace_hopper (600x512, JPEG, matplotlib);
* train, grayscale: camera (512x512), coins (303x384), brick, grass, gravel (512x512 each), text
  (172x448);
* val: chelsea (300x451), coffee (400x600), unchanged so that validation numbers stay comparable.

`PHOTOS` records, for every image, the package it ships in, its size, its origin and its licence;
`licences()` returns that table for a run's report.

Why these. The first four colour photographs alone gave a model that lost colour and texture on
Set5/Set14, so the set was widened with every bundled *photograph* of a natural scene whose licence
is recorded as public domain / CC0 / no known copyright restrictions:

* grayscale photographs (camera: a person, tripod, grass and buildings; coins: metal relief; brick,
  grass, gravel: CC0 surface textures; text: handwriting on paper, thin dark strokes). They are
  replicated to RGB (R = G = B, `image_io.to_rgb`), so they teach luminance texture and edges, and
  that a neutral input stays neutral; colour comes from the colour photographs;
* grace_hopper, a colour portrait (skin, cloth, flags, insignia) from matplotlib's sample data
  (matplotlib is a dependency anyway, for the report plots). It is a JPEG of about quality 80 with
  4:2:0 chroma, so its chroma is softer than the PNGs'.

Left out on purpose:

* scikit-image: moon and page (no source or licence recorded by scikit-image; moon is also a very
  low-contrast crop, page a scanned document), clock_motion (motion blurred: a blurred HR target
  teaches blur), hubble_deep_field (mostly black sky), horse (binary silhouette), synthetic images
  (color wheel, phantom, chessboard, logo), microscopy/medical images (ihc, cell, retina,
  microaneurysms), lfw_subset (25x25 crops) and the GIF/TIFF/NPY test files;
* matplotlib: Minduka_Present_Blue_Pack.png (128x128 clip art), logo2.png (the logo), s1045.ima.gz
  (an MRI slice); the rest of sample_data is data files (CSV, NPZ, DAT, XRC), not images;
* scikit-learn: china.jpg and flower.jpg are good colour photographs, but CC BY 2.0 (attribution
  required, and sklearn's own README credits flower.jpg to the author of china.jpg while linking
  another photographer), and two 427x640 images do not justify a ~31 MB dependency (plus joblib,
  threadpoolctl, narwhals) that nothing else in the project needs.

Other images that scikit-image only downloads on first use (eagle, skin, ...) are excluded: no network
at run time.
"""
import collections
import os

from keras_sr.common import image_io
from keras_sr.data import benchmark

Photo = collections.namedtuple("Photo", "file package size color source licence")
Photo.__doc__ = """One embedded photograph.

Attributes:
    file: file name inside the package's sample-data folder (see `package_dir`).
    package: the PyPI distribution that ships it ("scikit-image" or "matplotlib").
    size: (height, width) in pixels, as stored.
    color: True for an RGB photograph, False for a grayscale one (replicated to RGB when loaded).
    source: original author / source, as documented by the package.
    licence: the image's licence or copyright status.
"""

# One home for every fact about an image; TRAIN/VAL below only name them.
PHOTOS = {
    # --- scikit-image, colour (the original training set). ---
    "astronaut": Photo(
        "astronaut.png", "scikit-image", (512, 512), True,
        "Eileen Collins, NASA portrait (NASA Great Images database, https://flic.kr/p/r9qvLn)",
        "public domain (NASA; no known copyright restrictions)"),
    "motorcycle_left": Photo(
        "motorcycle_left.png", "scikit-image", (500, 741), True,
        "Middlebury 2014 stereo data set, 'Motorcycle' left view, downsampled 4x by scikit-image "
        "(Scharstein et al., GCPR 2014)",
        "not stated by scikit-image (redistributed in its BSD-3-Clause wheel); cite Scharstein "
        "et al., GCPR 2014"),
    "motorcycle_right": Photo(
        "motorcycle_right.png", "scikit-image", (500, 741), True,
        "Middlebury 2014 stereo data set, 'Motorcycle' right view, downsampled 4x by scikit-image "
        "(Scharstein et al., GCPR 2014)",
        "not stated by scikit-image (redistributed in its BSD-3-Clause wheel); cite Scharstein "
        "et al., GCPR 2014"),
    "rocket": Photo(
        "rocket.jpg", "scikit-image", (427, 640), True,
        "SpaceX, launch of DSCOVR on Falcon 9 (https://www.flickr.com/photos/spacexphotos/16511594820)",
        "public domain (released by SpaceX in 2015; see scikit-image issue #5095 on the Flickr "
        "page's later CC BY-NC 2.0 label)"),
    # --- scikit-image, grayscale photographs. ---
    "camera": Photo(
        "camera.png", "scikit-image", (512, 512), False,
        "Lav Varshney, cameraman photograph (scikit-image >= 0.18 replacement image)", "CC0"),
    "coins": Photo(
        "coins.png", "scikit-image", (303, 384), False,
        "Greek coins from Pompeii, Brooklyn Museum Collection", "no known copyright restrictions"),
    "brick": Photo(
        "brick.png", "scikit-image", (512, 512), False,
        "CC0Textures 'Bricks25' (perspective-corrected, cropped and scaled by scikit-image)", "CC0"),
    "grass": Photo(
        "grass.png", "scikit-image", (512, 512), False,
        "linolafett, 'Grass-01' on DeviantArt (cropped by scikit-image)", "CC0"),
    "gravel": Photo(
        "gravel.png", "scikit-image", (512, 512), False,
        "CC0Textures 'Gravel04' (rescaled and cropped by scikit-image)", "CC0"),
    "text": Photo(
        "text.png", "scikit-image", (172, 448), False,
        "Wikipedia, File:Corner.png (handwriting on paper)",
        "public domain (no known copyright restrictions)"),
    # --- matplotlib sample data, colour. ---
    "grace_hopper": Photo(
        "grace_hopper.jpg", "matplotlib", (600, 512), True,
        "Commodore Grace M. Hopper, official U.S. Navy photograph (Naval History and Heritage "
        "Command, NH 96919-KN); added to matplotlib in PR #1599",
        "public domain (work of the U.S. federal government)"),
    # --- scikit-image, colour (validation). ---
    "chelsea": Photo(
        "chelsea.png", "scikit-image", (300, 451), True, "Stefan van der Walt, Chelsea the cat",
        "CC0"),
    "coffee": Photo(
        "coffee.png", "scikit-image", (400, 600), True,
        "Rachel Michetti, coffee cup (courtesy of Pikolo Espresso Bar)", "CC0"),
}

TRAIN = ("astronaut", "motorcycle_left", "motorcycle_right", "rocket", "grace_hopper",
         "camera", "coins", "brick", "grass", "gravel", "text")
VAL = ("chelsea", "coffee")
SPLITS = {"train": TRAIN, "val": VAL}

# How to reach each package's folder of sample images; imported lazily (only when read).
_INSTALL_HINTS = {"scikit-image": "scikit-image>=0.22", "matplotlib": "matplotlib>=3.7"}


def _skimage_dir():
    import skimage.data

    return os.path.dirname(skimage.data.__file__)


def _matplotlib_dir():
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "sample_data")


_PACKAGE_DIRS = {"scikit-image": _skimage_dir, "matplotlib": _matplotlib_dir}


def data_dir():
    """scikit-image's folder of bundled sample images (read directly: no network fetch)."""
    return package_dir("scikit-image")


def package_dir(package):
    """The folder of bundled sample images of `package` ("scikit-image" or "matplotlib")."""
    if package not in _PACKAGE_DIRS:
        raise ValueError(f"unknown image package {package!r}; choose from {sorted(_PACKAGE_DIRS)}")
    return _PACKAGE_DIRS[package]()


def _split_names(split):
    if split not in SPLITS:
        raise ValueError(f"unknown builtin split {split!r}; choose from {sorted(SPLITS)}")
    return SPLITS[split]


def image_paths(split):
    """(name, path) of the images of a split ("train" or "val"), resolved in their packages."""
    dirs = {}
    paths = []
    for name in _split_names(split):
        photo = PHOTOS[name]
        if photo.package not in dirs:
            dirs[photo.package] = package_dir(photo.package)
        paths.append((name, os.path.join(dirs[photo.package], photo.file)))
    return paths


def load_split(split):
    """Yields (name, hr uint8 HxWx3 RGB) for each image of a split; grayscale is replicated to RGB.

    Raises:
        FileNotFoundError: the installed package lacks a bundled image (it names file and package).
    """
    for name, path in image_paths(split):
        if not os.path.isfile(path):
            package = PHOTOS[name].package
            raise FileNotFoundError(f"builtin image {name!r} is missing from {package} ({path}); "
                                    f"reinstall {_INSTALL_HINTS[package]}")
        yield name, image_io.to_rgb(image_io.read_image(path))


def licences(splits=("train", "val")):
    """The origin and licence of every image of `splits`, for a run's report (JSON-serialisable).

    Returns:
        {name: {"split", "package", "file", "size": [h, w], "color", "source", "licence"}}, in split
        order.
    """
    table = {}
    for split in splits:
        for name in _split_names(split):
            photo = PHOTOS[name]
            table[name] = {"split": split, "package": photo.package, "file": photo.file,
                           "size": list(photo.size), "color": photo.color, "source": photo.source,
                           "licence": photo.licence}
    return table


def write_benchmark_layout(out_dir, split="val", scale=3):
    """Writes a builtin split in the EDSR benchmark layout (HR/ + LR_bicubic/X<scale>/).

    The LR images are made with the MATLAB bicubic rule, so `tools/evaluate.py --data=out_dir`
    measures the same degradation as on Set5/Set14.

    Returns:
        The names written.
    """
    return benchmark.write_benchmark_layout(
        ((name, hr, None) for name, hr in load_split(split)), out_dir, scale)
