"""Tiny fakes of the papers' datasets in their exact on-disk layouts (spec
paper-benchmarks §6): deterministic noise images, the full class counts, one grayscale (L) and
one RGBA PNG among the images, a stray README.txt and .DS_Store at the top.

``make_fake(name, root, train=2, test=1, size=8, seed=0, variant=None)`` writes the fake of
stream ``name`` under ``root`` and returns the folder to pass as ``root=``. Add a dataset
with a function decorated ``@writer("<stream>")`` taking
``(root, train, test, size, rng, variant)`` (keyword arguments).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np

WRITERS: dict[str, Callable] = {}


def writer(name: str):
    def register(fn: Callable) -> Callable:
        WRITERS[name] = fn
        return fn
    return register


def make_fake(name: str, root, train: int = 2, test: int = 1, size: int = 8, seed: int = 0,
              variant: str | None = None) -> Path:
    """Write the fake of ``name`` (``variant``: see each writer) under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    WRITERS[name](root=root, train=train, test=test, size=size, rng=rng, variant=variant)
    write_strays(root)
    return root


def write_strays(root: Path) -> None:
    """The stray files a dataset folder holds beside its images (to be ignored)."""
    (root / "README.txt").write_text("fake dataset for tests\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")


# ------------------------------------------------------------------------------- images
class Images:
    """Writes noise images; the first one written is an L PNG, the second an RGBA PNG (the
    rest in ``suffix``), so every fake holds both."""

    def __init__(self, size: int, rng: np.random.Generator, suffix: str = ".jpg"):
        self.size, self.rng, self.suffix, self.count = size, rng, suffix, 0

    def write(self, folder: Path, stem: str) -> Path:
        from PIL import Image
        folder.mkdir(parents=True, exist_ok=True)
        mode = {0: "L", 1: "RGBA"}.get(self.count, "RGB")
        self.count += 1
        channels = {"L": (), "RGBA": (4,), "RGB": (3,)}[mode]
        pixels = self.rng.integers(0, 256, (self.size, self.size, *channels), dtype=np.uint8)
        path = folder / (stem + (".png" if mode != "RGB" else self.suffix))
        Image.fromarray(pixels, mode).save(path)
        return path


def _class_folders(images: Images, base: Path, classes: list[str], train: int, test: int,
                   stem: str = "img_{}") -> None:
    """``base/{train,test}/<class>/<stem>``."""
    for cls in classes:
        for part, n in (("train", train), ("test", test)):
            for i in range(n):
                images.write(base / part / cls, stem.format(i))


def wnids(n: int = 200) -> list[str]:
    return [f"n{1440000 + 1000 * i + 37:08d}" for i in range(n)]


# ------------------------------------------------------------------------------- writers
@writer("cifar100")
def cifar100(root: Path, train: int, test: int, size: int, rng, variant=None) -> None:
    """``cifar-100-python/{train,test,meta}`` pickles (protocol 2, bytes keys), n per class
    (32x32 whatever ``size``), and the stray ``file.txt~``."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", train), ("test", test)):
        labels = rng.permutation(np.repeat(np.arange(100), n)).tolist()
        data = {b"batch_label": f"{part} batch 1 of 1".encode(),
                b"fine_labels": labels,
                b"coarse_labels": [v // 5 for v in labels],
                b"filenames": [f"fake_{i}.png".encode() for i in range(len(labels))],
                b"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)}
        with open(base / part, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
    with open(base / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"c{i:03d}".encode() for i in range(100)],
                     b"coarse_label_names": [f"s{i:02d}".encode() for i in range(20)]},
                    fh, protocol=2)
    (base / "file.txt~").write_text("")


def _raw(images: Images, base: Path, classes: list[str], per_class: int, stem: str
         ) -> dict[str, list[str]]:
    files = {}
    for cls in classes:
        files[cls] = [images.write(base / cls, stem.format(i)).name for i in range(per_class)]
    return files


@writer("imagenet-r")
def imagenet_r(root: Path, train: int, test: int, size: int, rng, variant=None) -> None:
    """``variant``: None/"ptm" ``imagenet-r/{train,test}/<wnid>/art_<i>.jpg``; "raw"
    ``imagenet-r/<wnid>/`` + README.txt; "coda" raw + ``splits/imagenet-r_{train,test}.yaml``
    (the first ``train`` files of a class to train, targets in a shuffled wnid -> id map)."""
    images, classes = Images(size, rng), wnids()
    if variant in (None, "ptm"):
        return _class_folders(images, root / "imagenet-r", classes, train, test, "art_{}")
    files = _raw(images, root / "imagenet-r", classes, train + test, "art_{}")
    (root / "imagenet-r" / "README.txt").write_text("ImageNet-R\n")
    if variant == "coda":
        import yaml
        ids = dict(zip(classes, rng.permutation(len(classes)).tolist()))
        (root / "splits").mkdir()
        for part, pick in (("train", slice(0, train)), ("test", slice(train, None))):
            data = [f"data/imagenet-r/{c}/{f}" for c in classes for f in files[c][pick]]
            targets = [ids[c] for c in classes for _ in files[c][pick]]
            (root / "splits" / f"imagenet-r_{part}.yaml").write_text(
                yaml.safe_dump({"data": data, "targets": targets}))
    else:
        assert variant == "raw", variant


@writer("imagenet-a")
def imagenet_a(root: Path, train: int, test: int, size: int, rng, variant=None) -> None:
    """``imagenet-a/{train,test}/<wnid>/*.jpg``; "raw": ``imagenet-a/<wnid>/*.jpg``."""
    images, classes = Images(size, rng), wnids()
    if variant == "raw":
        _raw(images, root / "imagenet-a", classes, train + test, "{:04d}")
        return
    _class_folders(images, root / "imagenet-a", classes, train, test, "{:04d}")


VTAB_DOMAINS = ("resisc45", "dtd", "pets", "eurosat", "flowers")


def vtab_classes(variant=None) -> list[str]:
    """Folder names: "numeric" ``0``..``49`` (sorted "0" "1" "10" ...), else names whose
    sorted order is the domain order (``0_resisc45_c0`` ... ``4_flowers_c9``)."""
    if variant == "numeric":
        return [str(i) for i in range(50)]
    return [f"{d}_{name}_c{j}" for d, name in enumerate(VTAB_DOMAINS) for j in range(10)]


@writer("vtab")
def vtab(root: Path, train: int, test: int, size: int, rng, variant=None) -> None:
    """``vtab-cil/vtab/{train,test}/<class>/*.jpg`` (PILOT's layout), 50 classes."""
    _class_folders(Images(size, rng), root / "vtab-cil" / "vtab", vtab_classes(variant),
                   train, test)


def cub_classes() -> list[str]:
    return [f"{i + 1:03d}.Bird_{i + 1:03d}" for i in range(200)]


@writer("cub")
def cub(root: Path, train: int, test: int, size: int, rng, variant=None) -> None:
    """``cub/{train,test}/<NNN.Name>/*.jpg``; "official": ``CUB_200_2011/images/<NNN.Name>/
    <Name>_<i>.jpg`` with images.txt, image_class_labels.txt, train_test_split.txt,
    classes.txt (the first ``train`` images of a class are training images)."""
    images, classes = Images(size, rng), cub_classes()
    if variant != "official":
        return _class_folders(images, root / "cub", classes, train, test, "{:04d}")
    base = root / "CUB_200_2011"
    rows = {"images": [], "labels": [], "split": []}
    for c, cls in enumerate(classes):
        for i in range(train + test):
            path = images.write(base / "images" / cls, f"{cls.split('.')[1]}_{i:04d}")
            n = len(rows["images"]) + 1
            rows["images"].append(f"{n} {cls}/{path.name}")
            rows["labels"].append(f"{n} {c + 1}")
            rows["split"].append(f"{n} {1 if i < train else 0}")
    (base / "images.txt").write_text("\n".join(rows["images"]) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(rows["labels"]) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(rows["split"]) + "\n")
    (base / "classes.txt").write_text(
        "\n".join(f"{c + 1} {cls}" for c, cls in enumerate(classes)) + "\n")


@writer("omnibenchmark")
def omnibenchmark(root: Path, train: int, test: int, size: int, rng, variant=None) -> None:
    """``omnibenchmark/{train,test}/<numeric id>/*.jpg``, 300 unpadded numeric folders."""
    ids = sorted(rng.choice(np.arange(1, 8000), 300, replace=False).tolist())
    _class_folders(Images(size, rng), root / "omnibenchmark", [str(i) for i in ids],
                   train, test)


@writer("objectnet")
def objectnet(root: Path, train: int, test: int, size: int, rng, variant=None) -> None:
    """``objectnet/{train,test}/<class>/*.png``, 200 classes."""
    _class_folders(Images(size, rng, ".png"), root / "objectnet",
                   [f"object_{i:03d}" for i in range(200)], train, test)
