"""Images read lazily from files: the piece every stream over a dataset on disk uses.

Large datasets (ImageNet-R at 224 px is ~4.5 GB decoded, DomainNet ~90 GB) are never decoded
up front: a stream keeps a list of (path, label) and each item is opened with PIL and
converted to RGB when it is read (:class:`ImageFiles`). What is cached on disk is the scan
of the folders (names, sizes, mtimes, and which files are not images), never pixels.

The small interface (used by the paper streams and the domain streams):

- :class:`ImageOptions`: ``transform=``, ``image_size=``, ``skip_bad=`` for a stream's options.
- :func:`image_transforms` (``pilot`` | ``coda`` | ``shot`` | ``none``) ->
  ``{"train": ..., "eval": ...}``.
- :func:`scan_class_folders` (``DIR/<class>/<image>``, cached) and :func:`check_images`
  (unreadable files: one line naming the file, or skipped with ``skip_bad``).
- :func:`label_by_name`: train and test classes matched by folder *name* (sorted index).
- :func:`files_dataset`: (paths, labels) -> an Avalanche dataset with train/eval transforms.
- :func:`files_benchmark`: (train items, test items, class order, classes per task) -> the
  class-incremental Avalanche benchmark with ``info``; :func:`class_order` and
  :func:`~clplatform.streams.common.b0_split` give the PILOT order and split.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clplatform.data import StoredAugment
from clplatform.errors import UserError
from clplatform.options import opt

from .common import (StreamInfo, cached_arrays, class_incremental, classification_dataset,
                     legacy_permutation)

# torchvision's ImageFolder extensions, and GIF
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm"}
TRANSFORMS = ("pilot", "coda", "shot", "none")
SKIP_HINT = "--stream-opt skip_bad=true skips unreadable images"


# ------------------------------------------------------------------------------- items
def _pil_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image, UnidentifiedImageError
    return (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError,
            Image.DecompressionBombError)  # what PIL raises for a bad image


def read_rgb(path: str | os.PathLike):
    """The image at ``path`` as a loaded PIL RGB image (grayscale, RGBA, CMYK, palette
    files become 3 channels, as PILOT's ``pil_loader``); an unreadable file is a
    UserError naming it."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except _pil_errors() as exc:
        raise UserError(f"cannot read image {path}: {exc} ({SKIP_HINT})") from None


class ImageFiles:
    """Indexable image source over file paths, read one item at a time (:func:`read_rgb`).
    Pass it to :func:`~clplatform.data.classification_dataset` with transforms that take a
    PIL image."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [os.fspath(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return read_rgb(self.paths[index])


class ImageArrays:
    """Indexable image source over uint8 arrays [N, H, W, 3] held in memory (CIFAR-100):
    item i is a PIL RGB image, for the same transforms as files."""

    def __init__(self, arrays: np.ndarray):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int):
        from PIL import Image
        return Image.fromarray(self.arrays[index], "RGB")


# ------------------------------------------------------------------------------- transforms
@dataclass
class ImageOptions:
    """Options of every stream read from image files (add to a stream's options)."""
    transform: str = opt("pilot", "pilot: random-resized-crop (scale 0.05-1) + flip for "
                         "training, resize 256 + centre-crop 224 for testing (PILOT/APER/"
                         "SEMA); coda: CODA-Prompt's; shot: SHOT/LFTL's resize to 256x256 + "
                         "random/centre crop 224 (+ flip); none: resize only. No mean/std "
                         "normalisation (a backbone option)", choices=TRANSFORMS)
    image_size: int = opt(224, "side of the crops (test resize scales with it: 256/224)",
                          min=8, max=1024)
    skip_bad: bool = opt(False, "skip unreadable images with a warning instead of stopping")


def image_transforms(kind: str = "pilot", image_size: int = 224,
                     eval_crop: bool = True) -> dict[str, Any]:
    """Avalanche transform groups ``{"train": ..., "eval": ...}`` taking a PIL image to a
    float tensor [3, s, s] in [0, 1] (no normalisation).

    - ``pilot`` (PILOT/RevisitingCIL ``build_transform``): train
      ``RandomResizedCrop(s, scale=(0.05, 1), ratio=(3/4, 4/3))``, ``RandomHorizontalFlip``,
      ``ToTensor``; eval ``Resize(int(256 s/224), bicubic)``, ``CenterCrop(s)``, ``ToTensor``.
    - ``coda`` (CODA-Prompt ``dataloaders/utils.py``): train ``RandomResizedCrop(s)`` (default
      scale), flip; eval as ``pilot`` with the default (bilinear) resize when ``eval_crop``
      (ImageNet-*), else ``Resize(s)`` + ``CenterCrop(s)`` (= CODA's ``Resize(s)`` on square
      images; the crop keeps batches square on others).
    - ``shot`` (SHOT ``object/image_source.py``/``image_target.py``, LFTL ``train_source.py``/
      ``adapt_target.py``: ``image_train``/``image_test``): train ``Resize((r, r))`` (square,
      the aspect ratio is not kept; bilinear), ``RandomCrop(s)``, ``RandomHorizontalFlip``,
      ``ToTensor``; eval ``Resize((r, r))``, ``CenterCrop(s)``, ``ToTensor``; r = 256 s/224.
      Their ``Normalize`` (ImageNet mean/std) is the backbone's ``normalize=``.
    - ``none``: ``Resize((s, s))``, ``ToTensor`` for both.
    """
    from torchvision import transforms as T
    if kind not in TRANSFORMS:
        raise UserError(f"invalid transform {kind!r}: choose from {', '.join(TRANSFORMS)}")
    s = image_size
    resize = int(256 / 224 * s)  # PILOT's build_transform: int((256 / 224) * input_size)
    if kind == "none":
        plain = T.Compose([T.Resize((s, s)), T.ToTensor()])
        return {"train": plain, "eval": plain}
    if kind == "pilot":
        crop = T.RandomResizedCrop(s, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3))
        eval_resize = T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC)
    elif kind == "shot":
        # SHOT's RandomCrop(s) of the (r, r) squash: a crop of fixed area s^2, ratio 1, at a
        # uniform position (RandomResizedCrop.get_params with this scale and ratio draws
        # exactly that), so the stored copy and its per-read draws serve it too
        crop = T.RandomResizedCrop(s, scale=((s / resize) ** 2,) * 2, ratio=(1.0, 1.0))
        eval_resize = T.Resize((resize, resize))
        train = T.Compose([T.Resize((resize, resize)), T.RandomCrop(s),
                           T.RandomHorizontalFlip(), T.ToTensor()])
        test = T.Compose([eval_resize, T.CenterCrop(s), T.ToTensor()])
        return {"train": stored_augment(train, crop, eval_resize, s), "eval": test}
    else:
        crop = T.RandomResizedCrop(s)
        eval_resize = T.Resize(resize if eval_crop else s)
    train = T.Compose([crop, T.RandomHorizontalFlip(0.5), T.ToTensor()])
    test = T.Compose([eval_resize, T.CenterCrop(s), T.ToTensor()])
    return {"train": stored_augment(train, crop, eval_resize, s), "eval": test}


def stored_augment(train, crop, eval_resize, size: int) -> StoredAugment:
    """``train`` marked for :func:`~clplatform.data.experience_images`: the stored copy is
    the eval transform's resize (short side R, or R x R) and a centre R x R crop, as uint8;
    each read draws ``crop`` (its scale, ratio, interpolation) and a flip on that copy.
    Deviation from the per-item path (and the official codes) for ``pilot``/``coda``: the
    random-resized-crop is drawn on the R x R copy, not on the full image (its area and
    aspect ratio); ``shot`` squashes to R x R first, so its copy is exact."""
    from torchvision import transforms as T
    side = eval_resize.size if isinstance(eval_resize.size, int) else eval_resize.size[0]
    store = T.Compose([eval_resize, T.CenterCrop(side), T.PILToTensor()])
    return StoredAugment(train, store, size, crop.scale, crop.ratio, 0.5, crop.interpolation,
                         eval_crop=size)


# ------------------------------------------------------------------------------- scanning
def _walk_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, as ImageFolder), sorted, hidden skipped."""
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(top, f) for f in sorted(files) if not f.startswith(".")
                  and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
    return found


def _image_error(path: str) -> str:
    """'' if PIL recognises the file as an image (header only, no decoding), else why not."""
    from PIL import Image
    try:
        with Image.open(path):
            return ""
    except _pil_errors() as exc:
        return str(exc) or type(exc).__name__


def class_folders(folder: Path) -> list[str]:
    """Names of the class folders of ``folder``, Python-sorted (case-sensitive: "10" < "2"),
    hidden ones and files (README.txt, .DS_Store) ignored."""
    return sorted(e.name for e in os.scandir(folder)
                  if e.is_dir() and not e.name.startswith("."))


def scan_files(paths: Sequence[str], key: dict) -> dict[str, np.ndarray]:
    """Sizes, mtimes and header errors ('' = readable) of ``paths``, cached on disk under
    ``key`` + the paths (so a rescan is free when nothing changed)."""
    def make():
        stats = [os.stat(p) for p in paths]
        return {"path": np.asarray(paths, dtype=str),
                "size": np.asarray([s.st_size for s in stats], dtype=np.int64),
                "mtime": np.asarray([s.st_mtime_ns for s in stats], dtype=np.int64),
                "error": np.asarray([_image_error(p) for p in paths], dtype=str)}
    if not paths:
        return make()
    return cached_arrays("scan", {**key, "paths": list(paths)}, make)


def scan_class_folders(folder: str | os.PathLike) -> tuple[list[str], list[str], list[str]]:
    """``folder/<class>/<image>`` -> (paths, class name of each, header error of each).

    The scan (names, sizes, mtimes, which files are not images) is cached, keyed on the
    folder and the mtimes of its directories: adding, removing or renaming a file rescans."""
    folder = Path(folder)
    classes = class_folders(folder)
    paths, names = [], []
    for name in classes:
        files = _walk_images(folder / name)
        paths += files
        names += [name] * len(files)
    dirs = sorted({os.path.dirname(p) for p in paths} | {str(folder / c) for c in classes})
    key = {"folder": str(folder.resolve()),
           "dirs": [(d, os.stat(d).st_mtime_ns) for d in dirs]}
    scanned = scan_files(paths, key)
    return paths, names, scanned["error"].tolist()


def check_images(paths: Sequence[str], errors: Sequence[str], skip_bad: bool,
                 *others: Sequence) -> tuple[list, ...]:
    """Drop the files whose ``errors`` entry is not empty (a warning line each) when
    ``skip_bad``, else stop with one line naming the first bad file. ``others``: lists
    parallel to ``paths`` (labels, names), filtered the same way."""
    bad = [i for i, e in enumerate(errors) if e]
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(f"cannot read image {paths[bad[0]]}: {errors[bad[0]]}{more} "
                        f"({SKIP_HINT})")
    for i in bad:
        print(f"clplat: warning: skipped unreadable image {paths[i]}: {errors[i]}",
              file=sys.stderr)
    keep = [i for i, e in enumerate(errors) if not e]
    return tuple([seq[i] for i in keep] for seq in (paths, *others))


# ------------------------------------------------------------------------------- labels
def label_by_name(train_names: Sequence[str], test_names: Sequence[str],
                  classes: Sequence[str] | None = None, where: str = ""
                  ) -> tuple[list[str], list[int], list[int]]:
    """(classes, train labels, test labels): label = index of the class name in
    ``classes`` (default: the sorted train class names, ImageFolder's index). A test class
    missing from the training classes is a UserError naming it (PILOT silently
    mislabels)."""
    classes = list(classes) if classes is not None else sorted(set(train_names))
    index = {c: i for i, c in enumerate(classes)}
    for kind, names in (("training", train_names), ("test", test_names)):
        missing = sorted(set(names) - set(index))
        if missing:
            raise UserError(f"{where}: {kind} class {missing[0]!r} is not among the "
                            f"{len(classes)} training classes"
                            + (f" ({len(missing)} such classes)" if len(missing) > 1 else ""))
    return classes, [index[n] for n in train_names], [index[n] for n in test_names]


def class_order(num_classes: int, order_seed: str | int | None, run_seed: int | None
                ) -> list[int]:
    """The class order of an ``order_seed=`` option: ``none`` -> 0..C-1; an integer ->
    PILOT's ``np.random.RandomState(seed).permutation(C)``; ``run`` -> the run's seed."""
    seed = parse_order_seed(order_seed)
    if seed == "run":
        seed = run_seed
    return legacy_permutation(num_classes, seed)


def parse_order_seed(value: str | int | None) -> int | str | None:
    """``order_seed=`` as None, an int >= 0, or "run"; anything else is a UserError."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("none", "null", ""):
        return None
    if text == "run":
        return "run"
    if text.isdigit() and int(text) < 2**32:
        return int(text)
    raise UserError(f"invalid value {value!r} for order_seed: expected none, run or an "
                    "integer 0..2^32-1")


# ------------------------------------------------------------------------------- benchmark
def files_dataset(paths: Sequence[str], labels: Sequence[int], transforms: dict):
    """An Avalanche classification dataset reading ``paths`` lazily with ``transforms``
    (:func:`image_transforms`); call ``.eval()`` on it for a test set."""
    import torch
    return classification_dataset(ImageFiles(paths), torch.as_tensor(list(labels)),
                                  transforms)


def files_benchmark(name: str, train: tuple[Any, Sequence[int]],
                    test: tuple[Any, Sequence[int]], classes: Sequence[str],
                    order: Sequence[int], sizes: Sequence[int], transforms: dict,
                    image_size: int):
    """The class-incremental Avalanche benchmark of ``train``/``test`` = (images, labels):
    images a list of paths (read lazily) or an indexable source (:class:`ImageArrays`);
    labels index ``classes``. Experience k holds original classes
    ``order[sum(sizes[:k]):sum(sizes[:k+1])]`` relabelled to their position in ``order``;
    test experiences use the ``eval`` transform."""
    def source(images):
        return ImageFiles(images) if isinstance(images, (list, tuple)) else images
    info = StreamInfo(name, "class-incremental", list(classes), (3, image_size, image_size))
    return class_incremental((source(train[0]), train[1]), (source(test[0]), test[1]),
                             order, list(sizes), info, transforms)


__all__ = ["IMAGE_SUFFIXES", "ImageArrays", "ImageFiles", "ImageOptions", "check_images",
           "class_folders", "class_order", "files_benchmark", "files_dataset",
           "image_transforms", "label_by_name", "parse_order_seed", "read_rgb",
           "scan_class_folders", "scan_files"]
