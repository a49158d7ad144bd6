"""Where HR/LR image pairs come from: the `--source` specs of `tools/prepare_data.py`.

    PATH                   an existing folder: benchmark:PATH when it has HR/, else folder:PATH.
    folder:PATH            HR images (PNG/JPEG/BMP) directly inside PATH; LR made with the
                           MATLAB rule.
    benchmark:PATH         EDSR layout: PATH/HR/<stem>.* and PATH/LR_bicubic/X<scale>/
                           <stem>x<scale>.png; the LR files are taken as given.
    tfds:NAME[:SPLIT]      a TensorFlow Datasets paired set with "hr"/"lr" features, e.g.
                           tfds:div2k/bicubic_x3 (split "train" by default; downloads several GB).
    builtin:train|val      the photographs embedded in installed packages (`keras_sr.data.builtin`).

A source is listed once (`Source.num_items`) and then read shard by shard (`Source.read_shard`), so
that shards can be written independently, in parallel and resumably. Reading yields `RawPair`s, or
`Skipped` entries for items that cannot be used, each with a reason.

Images of a folder source are the user's: they are read with `image_io.read_rgb` and converted
(16-bit, palette, CMYK, EXIF orientation; alpha dropped; grayscale kept as one plane), each
conversion noted in `RawPair.notes`. Benchmark and builtin sources hold evaluation-style data whose
LR files were made from the stored 8-bit pixels: they are read as stored (`image_io.read_image`),
and a file that is not plain 8-bit is skipped with the reason.
"""
import dataclasses
import os
from typing import Optional

import numpy as np

from keras_sr.common import bad_images, image_io
from keras_sr.data import benchmark, builtin, matlab_resize


@dataclasses.dataclass
class RawPair:
    """One image as read from a source.

    Attributes:
        image_id: unique id, "<prefix>/<name>".
        hr: uint8 HxWx3 RGB or HxW grayscale, not cropped.
        lr: uint8 LR given by the source, or None when it must be generated.
        origin: the file (or dataset entry) it came from, for messages.
        notes: conversions made while reading (`image_io.training_pixels`), e.g.
            ("16-bit PNG: rounded to 8-bit",).
    """
    image_id: str
    hr: np.ndarray
    lr: Optional[np.ndarray]
    origin: str
    notes: tuple = ()


@dataclasses.dataclass
class Skipped:
    """An item left out, and why; `fatal` False for entries that are not images at all (a text
    file, a subfolder), which never end a run under --on_bad_image=fail."""
    item: str
    reason: str
    fatal: bool = True


class Source:
    """A parsed source spec; subclasses list their items in `__init__` (cheap: no decoding)."""

    spec = ""
    default_prefix = ""

    def __init__(self):
        self.listing_skipped = []  # Skipped entries found while listing (e.g. duplicate names)

    @property
    def num_items(self):
        raise NotImplementedError

    def read_shard(self, index, count, id_prefix):
        """Yields RawPair/Skipped for items index, index + count, ... of the listing."""
        raise NotImplementedError


class _FileSource(Source):
    """Sources backed by a sorted list of (name, hr_path, lr_path or None)."""

    convert = False  # read HR files with read_rgb (user images) instead of as stored

    def __init__(self):
        super().__init__()
        self.items = []

    @property
    def num_items(self):
        return len(self.items)

    def read_shard(self, index, count, id_prefix):
        for name, hr_path, lr_path in self.items[index::count]:
            notes = ()
            try:
                if self.convert:
                    hr, notes = image_io.training_pixels(image_io.read_rgb(hr_path))
                else:
                    hr = image_io.read_image(hr_path)
                lr = image_io.read_image(lr_path) if lr_path else None
            except image_io.ImageError as e:  # also a file gone since listing, a symlink loop
                yield Skipped(hr_path, str(e))
                continue
            yield RawPair(f"{id_prefix}/{name}" if id_prefix else name, hr, lr, hr_path, notes)

    def _require_items(self, folder):
        """Raises NoImagesError naming `folder` when the listing found nothing to read."""
        if self.items:
            return
        if not self.listing_skipped:
            raise bad_images.NoImagesError(f"{self.spec}: the folder {folder} is empty")
        first = self.listing_skipped[0]
        raise bad_images.NoImagesError(
            f"{self.spec}: no usable images in {folder} ({len(self.listing_skipped)} entries "
            f"skipped, e.g. {os.path.basename(first.item)}: {first.reason})")

    def _add_files(self, paths, lr_path_fn=None):
        seen = {}
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0]
            if name in seen:
                self.listing_skipped.append(
                    Skipped(path, f"duplicate image name {name!r} (also {seen[name]})"))
                continue
            seen[name] = path
            lr_path = lr_path_fn(name) if lr_path_fn else None
            if lr_path and not os.path.isfile(lr_path):
                self.listing_skipped.append(Skipped(path, f"missing LR file {lr_path}"))
                continue
            self.items.append((name, path, lr_path))


class FolderSource(_FileSource):
    convert = True

    def __init__(self, path, scale):
        super().__init__()
        if not os.path.isdir(path):
            raise FileNotFoundError(f"folder source {path!r} is not a directory")
        self.spec = f"folder:{path}"
        # Ids must stay unique across data sets trained together: DATASET/HR is named after DATASET.
        folder = os.path.normpath(path)
        if os.path.basename(folder).lower() == "hr":
            folder = os.path.dirname(folder)
        self.default_prefix = os.path.basename(folder)
        images = []
        for f in sorted(os.path.join(path, f) for f in os.listdir(path)):
            if os.path.isdir(f):  # not followed: no recursion, so no directory loop either
                self.listing_skipped.append(Skipped(f, "a folder (folder sources are not "
                                                       "recursive)", fatal=False))
            elif not f.lower().endswith(image_io.IMAGE_EXTENSIONS):
                self.listing_skipped.append(Skipped(f, "not a PNG/JPEG/BMP file name",
                                                    fatal=False))
            else:  # also broken links and symlink loops: reading them gives the reason
                images.append(f)
        self._add_files(images)
        self._require_items(path)


class BenchmarkSource(_FileSource):
    def __init__(self, path, scale):
        super().__init__()
        hr_dir = os.path.join(path, "HR")
        if not os.path.isdir(hr_dir):
            raise FileNotFoundError(f"benchmark source {path!r} has no HR/ folder "
                                    "(EDSR layout expected)")
        self.spec = f"benchmark:{path}"
        self.default_prefix = os.path.basename(os.path.normpath(path))
        self._add_files(benchmark.list_hr_files(hr_dir),
                        lambda name: benchmark.lr_path(path, name, scale))
        self._require_items(hr_dir)


class BuiltinSource(_FileSource):
    def __init__(self, split, scale):
        super().__init__()
        self.spec = f"builtin:{split}"
        self.default_prefix = "builtin"
        for name, path in builtin.image_paths(split):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"builtin image {name!r} is missing from its package "
                                        f"({path}); see keras_sr.data.builtin.PHOTOS")
            self.items.append((name, path, None))


class TfdsSource(Source):
    """A TensorFlow Datasets paired set; examples are identified by their `tfds_id`."""

    def __init__(self, arg, scale):
        super().__init__()
        name, _, split = arg.partition(":")
        self.name, self.split = name, split or "train"
        self.spec = f"tfds:{self.name}:{self.split}"
        self.default_prefix = f"{self.name.split('/')[0]}_{self.split}"

    @property
    def num_items(self):
        return None  # unknown until downloaded; each shard reads an even split

    def read_shard(self, index, count, id_prefix):
        import tensorflow_datasets as tfds  # optional, heavy, and needs the network on first use

        split = tfds.even_splits(self.split, n=count)[index]
        dataset = tfds.load(self.name, split=split,
                            read_config=tfds.ReadConfig(add_tfds_id=True), shuffle_files=False)
        for example in tfds.as_numpy(dataset):
            tfds_id = example["tfds_id"].decode("utf-8")
            if "hr" not in example or "lr" not in example:
                raise ValueError(f"tfds dataset {self.name} has no 'hr'/'lr' features "
                                 f"(has {sorted(example)}); only paired SR datasets are supported")
            hr, lr = (_squeeze_gray(example[k]) for k in ("hr", "lr"))
            yield RawPair(f"{id_prefix}/{tfds_id}" if id_prefix else tfds_id, hr, lr,
                          f"{self.spec}[{tfds_id}]")


def _squeeze_gray(image):
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


_KINDS = {"folder": FolderSource, "benchmark": BenchmarkSource, "builtin": BuiltinSource,
          "tfds": TfdsSource}


def parse_source(spec, scale=3):
    """Parses a source spec (see the module docstring) and lists its items.

    Raises:
        ValueError: an unknown kind or an empty argument.
        bad_images.NoImagesError (a ValueError): a folder without usable images (the message
            names it).
        FileNotFoundError: a folder that does not exist.
    """
    kind, sep, arg = spec.partition(":")
    if kind not in _KINDS and os.path.isdir(spec):
        # A bare folder: the EDSR layout when it has HR/, else a folder of HR images.
        kind, arg = ("benchmark" if os.path.isdir(os.path.join(spec, "HR")) else "folder"), spec
    elif not sep or kind not in _KINDS or not arg:
        raise ValueError(f"bad source {spec!r}: expected an existing folder, folder:PATH, "
                         "benchmark:PATH, tfds:NAME[:SPLIT], builtin:train or builtin:val")
    return _KINDS[kind](arg, scale)


def load_lr_images(data, scale=3):
    """(name, LR uint8 (h, w, 3) RGB) pairs of an evaluation set.

    Args:
        data: an EDSR-layout folder (HR/ + LR_bicubic/X<scale>/), or "builtin:train" /
            "builtin:val" (the embedded photographs, LR made with the MATLAB bicubic rule).
        scale: SR factor of the LR images.
    """
    if data.startswith("builtin:"):
        return [(name, matlab_resize.matlab_downscale(matlab_resize.modcrop(hr, scale), scale))
                for name, hr in builtin.load_split(data[len("builtin:"):])]
    return [(name, image_io.to_rgb(lr)) for name, lr, _, _ in benchmark.load_benchmark(data, scale)]


def check_sources(named):
    """Lists every source before a job writes anything.

    Args:
        named: (flag, source spec) pairs; `tfds:` specs are left out (listing one may download
            it; preparing it reports its errors).

    Raises:
        ValueError: a source that cannot be used; the message names its flag.
    """
    for flag, spec in named:
        if spec.startswith("tfds:"):
            continue
        try:
            parse_source(spec)
        except (ValueError, OSError) as e:
            raise ValueError(f"{flag}={spec}: {e}") from None
