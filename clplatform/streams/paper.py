"""The class-incremental benchmarks of the pre-trained-model CL papers (PILOT, APER/
SimpleCIL, SEMA), read from the datasets' own files: ``cifar100``, ``imagenet-r``,
``imagenet-a``, ``vtab``, ``cub``, ``omnibenchmark``, ``objectnet``.

Nothing is downloaded (except CIFAR-100 with ``download=true``, through torchvision): the
user extracts the archive and passes ``root=DIR``. Faithful to PILOT/RevisitingCIL
(``utils/data.py``, ``utils/data_manager.py``): class index = position of the folder name in
Python's sorted order, class order ``np.random.RandomState(seed).permutation(C)`` (seed 1993,
or the natural order where the papers do not shuffle), B0 splits, random-resized-crop +
flip for training and resize 256 + centre-crop 224 for testing, no mean/std normalisation.
Deviation: test classes are matched to training classes by name (PILOT assumes the two
folders hold the same classes); a test class missing from train is an error.
"""
from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from clplatform.errors import UserError
from clplatform.options import opt
from clplatform.registry import register_stream

from .common import b0_split, seed_option
from .files import (ImageArrays, ImageOptions, check_images, class_folders, class_order,
                    files_benchmark, image_transforms, label_by_name, parse_order_seed,
                    scan_class_folders, scan_files)


# ------------------------------------------------------------------------------- options
@dataclass
class PaperOptions(ImageOptions):
    """Options shared by the paper streams (defaults per stream: spec paper-benchmarks §4)."""
    root: str = opt("", "folder holding the extracted dataset (required)")
    tasks: Optional[int] = opt(None, "tasks of the B0 split (default per stream); must "
                               "divide the classes unless first= is given", min=1)
    experiences: Optional[int] = opt(None, "alias of tasks", min=1)
    first: Optional[int] = opt(None, "classes of the first task (PILOT init_cls); the rest "
                               "split equally over the other tasks", min=1)
    order_seed: str = opt("1993", "class order: none (sorted folder order), an integer "
                          "(PILOT's np.random.RandomState(seed).permutation) or run (the "
                          "run's seed)")
    split: str = opt("ptm", "train/test split: ptm (the PTM-CL papers' train/test folders)",
                     choices=("ptm",))
    seed: Optional[int] = seed_option("seed of order_seed=run and of split=random "
                                      "(default: run seed)")

    def validate(self) -> None:
        layout, archive = LAYOUTS[self.stream]
        if not self.root:
            raise UserError(f"stream {self.stream!r} needs --stream-opt root=DIR ({layout}; "
                            f"fetch {archive})")
        if not Path(self.root).is_dir():
            raise UserError(f"stream {self.stream}: root {self.root} is not a folder; "
                            f"expected {layout} (fetch {archive})")
        if self.tasks is not None and self.experiences is not None and \
                self.tasks != self.experiences:
            raise UserError(f"stream {self.stream}: tasks={self.tasks} and experiences="
                            f"{self.experiences} disagree (experiences is an alias of tasks)")
        if self.experiences is not None:
            self.tasks = self.experiences
        self.experiences = None
        if self.tasks is None:
            self.tasks = DEFAULT_TASKS[self.stream]
        self.order_seed = str(parse_order_seed(self.order_seed)).lower()
        b0_split(NUM_CLASSES[self.stream], self.tasks, self.first)


# (expected layout, archive to fetch) for the one-line error of a wrong root
LAYOUTS = {
    "cifar100": ("ROOT/cifar-100-python/{train,test,meta} (or ROOT/{train,test,meta})",
                 "cifar-100-python.tar.gz from the University of Toronto CIFAR page, or "
                 "use download=true"),
    "imagenet-r": ("ROOT/imagenet-r/{train,test}/<wnid>/*.jpg or ROOT/{train,test}/<wnid>/"
                   "*.jpg; raw ROOT/imagenet-r/<wnid>/*.jpg only with split=coda or "
                   "split=random",
                   "imagenet-r.zip of the PILOT/RevisitingCIL README, or imagenet-r.tar "
                   "from hendrycks/imagenet-r for split=coda|random"),
    "imagenet-a": ("ROOT/imagenet-a/{train,test}/<wnid>/*.jpg or ROOT/{train,test}/<wnid>/"
                   "*.jpg; raw ROOT/imagenet-a/<wnid>/*.jpg only with split=random",
                   "ina.zip of the RevisitingCIL README (imagenet-a.tar from "
                   "hendrycks/natural-adv-examples for split=random)"),
    "vtab": ("ROOT/vtab-cil/vtab/{train,test}/<class>/*, ROOT/vtab/{train,test}/<class>/* "
             "or ROOT/{train,test}/<class>/*", "vtab.zip of the RevisitingCIL README"),
    "cub": ("ROOT/cub/{train,test}/<NNN.Name>/*.jpg or ROOT/{train,test}/<NNN.Name>/*.jpg; "
            "split=official: ROOT/CUB_200_2011/{images/,images.txt,image_class_labels.txt,"
            "train_test_split.txt,classes.txt}",
            "cub.zip of the RevisitingCIL README (CUB_200_2011.tgz from Caltech for "
            "split=official)"),
    "omnibenchmark": ("ROOT/omnibenchmark/{train,test}/<class>/* or ROOT/{train,test}/"
                      "<class>/*", "omnibenchmark.zip of the RevisitingCIL README"),
    "objectnet": ("ROOT/objectnet/{train,test}/<class>/* or ROOT/{train,test}/<class>/*",
                  "objnet.tgz of the RevisitingCIL README (OneDrive)"),
}
NUM_CLASSES = {"cifar100": 100, "imagenet-r": 200, "imagenet-a": 200, "vtab": 50,
               "cub": 200, "omnibenchmark": 300, "objectnet": 200}
DEFAULT_TASKS = {"cifar100": 10, "imagenet-r": 10, "imagenet-a": 20, "vtab": 5, "cub": 20,
                 "omnibenchmark": 10, "objectnet": 20}
# imagenet-* test images: resize 256 + centre-crop in CODA-Prompt too
CODA_EVAL_CROP = {"imagenet-r", "imagenet-a"}
RANDOM_TEST_FRACTION = 0.2  # the 80/20 per-class split of the PTM-CL ImageNet-R folders


def _options(stream: str, tasks_help: str, order_seed: str, splits=("ptm",),
             split_help: str = "ptm: the PTM-CL papers' train/test folders", **extra):
    """The options dataclass of ``stream``: :class:`PaperOptions` with its defaults."""
    fields = {
        "order_seed": (str, opt(order_seed, f"class order (default {order_seed}): none "
                                "(sorted folder order), an integer (PILOT's np.random."
                                "RandomState(seed).permutation) or run (the run's seed)")),
        "split": (str, opt("ptm", split_help, choices=splits)),
        "tasks": (Optional[int], opt(None, tasks_help, min=1)),
        **extra}
    namespace = {"__annotations__": {k: t for k, (t, _) in fields.items()},
                 **{k: f for k, (_, f) in fields.items()}, "stream": stream,
                 "__module__": __name__,
                 "__doc__": f"Options of the {stream} stream."}
    name = "".join(p.capitalize() for p in stream.split("-")) + "Options"
    cls = dataclass(type(name, (PaperOptions,), namespace))
    return cls


# ------------------------------------------------------------------------------- helpers
def _layout_error(stream: str, root: str, what: str = "") -> UserError:
    layout, archive = LAYOUTS[stream]
    found = f"{what}; " if what else ""
    return UserError(f"stream {stream}: no dataset found in {root}: {found}expected {layout} "
                     f"(fetch {archive})")


def _pair_folder(stream: str, root: Path, subdirs: tuple[str, ...]) -> Path | None:
    """The first of ``root/<sub>`` holding both ``train/`` and ``test/``."""
    for sub in subdirs:
        base = root / sub if sub else root
        if (base / "train").is_dir() and (base / "test").is_dir():
            return base
    return None


def _count(stream: str, classes: list[str], where: Path) -> None:
    expected = NUM_CLASSES[stream]
    if len(classes) != expected:
        raise UserError(f"stream {stream}: {where} has {len(classes)} class folders, "
                        f"expected {expected} ({LAYOUTS[stream][0]})")


def _scanned(folder: Path, skip_bad: bool) -> tuple[list[str], list[str]]:
    paths, names, errors = scan_class_folders(folder)
    paths, names = check_images(paths, errors, skip_bad, names)
    return paths, names


def _benchmark(stream: str, opts: PaperOptions, classes: list[str], train, test):
    if stream == "vtab" and opts.order_seed != "none":
        print("clplat: warning: vtab with a shuffled class order: its sorted folder order is "
              "the domain order (RevisitingCIL: shuffle must be false); tasks no longer "
              "match domains", file=sys.stderr)
    order = class_order(len(classes), opts.order_seed, opts.seed)
    sizes = b0_split(len(classes), opts.tasks, opts.first)
    transforms = image_transforms(opts.transform, opts.image_size, stream in CODA_EVAL_CROP)
    return files_benchmark(stream, train, test, classes, order, sizes, transforms,
                           opts.image_size)


def _folders_stream(stream: str, opts: PaperOptions, subdirs: tuple[str, ...]):
    """A stream read from ``<base>/{train,test}/<class>/<image>``."""
    root = Path(opts.root)
    base = _pair_folder(stream, root, subdirs)
    if base is None:
        raise _layout_error(stream, opts.root)
    train_paths, train_names = _scanned(base / "train", opts.skip_bad)
    test_paths, test_names = _scanned(base / "test", opts.skip_bad)
    classes, train_labels, test_labels = label_by_name(
        train_names, test_names, class_folders(base / "train"), f"stream {stream} ({base})")
    _count(stream, classes, base / "train")
    empty = sorted(set(classes) - set(train_names))
    if empty:
        raise UserError(f"stream {stream}: class folder {base / 'train' / empty[0]} holds no "
                        "readable image" + (f" ({len(empty)} such folders)" if len(empty) > 1
                                            else ""))
    if not test_paths:
        raise UserError(f"stream {stream}: no images in {base / 'test'}")
    return _benchmark(stream, opts, classes, (train_paths, train_labels),
                      (test_paths, test_labels))


def _raw_folder(stream: str, root: Path, name: str) -> Path:
    """``root/<name>`` or ``root`` holding the class folders of a raw download."""
    for base in (root / name, root):
        if base.is_dir() and not (base / "train").is_dir() and class_folders(base):
            return base
    raise _layout_error(stream, str(root), f"no raw {name}/<wnid>/ folders")


def _random_split(stream: str, opts: PaperOptions, base: Path):
    """A seeded 80/20 split of every class of a raw folder (not the published split)."""
    print(f"clplat: warning: stream {stream}: split=random is a seeded 80/20 split of "
          f"{base}, not the published PTM-CL split: numbers are not comparable",
          file=sys.stderr)
    paths, names = _scanned(base, opts.skip_bad)
    classes = class_folders(base)
    _count(stream, classes, base)
    rng = np.random.default_rng(opts.seed)
    names_arr = np.asarray(names)
    train, test = [], []
    for cls in classes:
        idx = rng.permutation(np.flatnonzero(names_arr == cls))
        k = int(round(RANDOM_TEST_FRACTION * len(idx)))
        k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1) if len(idx) else 0
        test += sorted(idx[:k].tolist())
        train += sorted(idx[k:].tolist())
    index = {c: i for i, c in enumerate(classes)}
    return _benchmark(stream, opts, classes,
                      ([paths[i] for i in train], [index[names[i]] for i in train]),
                      ([paths[i] for i in test], [index[names[i]] for i in test]))


# ------------------------------------------------------------------------------- CIFAR-100
def _unpickle(path: Path, keys: tuple[bytes, ...]) -> dict:
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh, encoding="bytes")
        missing = [k.decode() for k in keys if k not in data]
    except Exception as exc:  # noqa: BLE001  (any damage to a user's file: name it)
        raise UserError(f"stream cifar100: cannot read {path}: {type(exc).__name__} (expected "
                        "the python pickle of cifar-100-python.tar.gz)") from None
    if missing:
        raise UserError(f"stream cifar100: {path} has no {missing[0]!r} entry (expected the "
                        "python pickle of cifar-100-python.tar.gz)")
    return data


def _cifar_part(path: Path) -> tuple[np.ndarray, list[int]]:
    data = _unpickle(path, (b"data", b"fine_labels"))
    x = np.asarray(data[b"data"])
    labels = [int(v) for v in data[b"fine_labels"]]
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(labels) \
            or not all(0 <= v < 100 for v in labels):
        raise UserError(f"stream cifar100: {path} holds data {x.dtype} {list(x.shape)} with "
                        f"{len(labels)} labels; expected uint8 [N, 3072] with N fine labels "
                        "0..99")
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


CifarOptions = _options(
    "cifar100", "tasks of the B0 split (default 10, SEMA/PILOT; APER: 20)", "1993",
    download=(bool, opt(False, "download cifar-100-python.tar.gz into ROOT with "
                               "torchvision if it is not there (needs internet)")))


@register_stream("cifar100", options=CifarOptions,
                 help="CIFAR-100 from cifar-100-python/ (PILOT cifar224): 10 tasks of 10, "
                      "order seed 1993")
def cifar100(opts):
    root = Path(opts.root)
    base = next((b for b in (root / "cifar-100-python", root)
                 if all((b / f).is_file() for f in ("train", "test", "meta"))), None)
    if base is None and opts.download:
        from torchvision.datasets import CIFAR100
        try:
            CIFAR100(str(root), train=True, download=True)
        except Exception as exc:  # noqa: BLE001  (no network, disk full, bad archive)
            raise UserError(f"stream cifar100: cannot download cifar-100-python.tar.gz "
                            f"into {root}: {type(exc).__name__}: {exc}") from None
        base = root / "cifar-100-python"
    if base is None:
        raise _layout_error("cifar100", opts.root)
    names = _unpickle(base / "meta", (b"fine_label_names",))[b"fine_label_names"]
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(classes) != 100:
        raise UserError(f"stream cifar100: {base / 'meta'} names {len(classes)} fine classes, "
                        "expected 100")
    (x_train, y_train), (x_test, y_test) = (_cifar_part(base / p) for p in ("train", "test"))
    return _benchmark("cifar100", opts, classes, (ImageArrays(x_train), y_train),
                      (ImageArrays(x_test), y_test))


# ------------------------------------------------------------------------------- ImageNet-R/A
ImagenetROptions = _options(
    "imagenet-r", "tasks of the B0 split (default 10, PILOT; SEMA 5/10/20; APER 40)", "1993",
    splits=("ptm", "coda", "random"),
    split_help="ptm: PILOT's imagenet-r.zip train/test folders; coda: CODA-Prompt's split "
               "yaml files over the raw folder (coda_split=DIR); random: a seeded 80/20 "
               "per-class split of the raw folder (not published)",
    coda_split=(str, opt("", "folder holding CODA-Prompt's imagenet-r_train.yaml and "
                             "imagenet-r_test.yaml (default: ROOT/splits)")))


def _coda_items(stream: str, base: Path, yaml_file: Path, skip_bad: bool):
    """(paths, wnids) of a CODA-Prompt split file (``data``: data/imagenet-r/<wnid>/<file>,
    ``targets``: CODA's own class ids, checked to be one id per wnid)."""
    import yaml
    try:
        with open(yaml_file) as fh:
            spec = yaml.safe_load(fh)
        data, targets = list(spec["data"]), [int(t) for t in spec["targets"]]
    except Exception as exc:  # noqa: BLE001  (a user's file: name it)
        raise UserError(f"stream {stream}: cannot read {yaml_file}: {type(exc).__name__} "
                        "(expected CODA-Prompt's split yaml with 'data' and 'targets')") from None
    if len(data) != len(targets):
        raise UserError(f"stream {stream}: {yaml_file} has {len(data)} paths and "
                        f"{len(targets)} targets")
    paths, wnids, seen = [], [], {}
    for item, target in zip(data, targets):
        wnid, name = Path(item).parts[-2:]
        if seen.setdefault(wnid, target) != target:
            raise UserError(f"stream {stream}: {yaml_file} gives class {wnid} the targets "
                            f"{seen[wnid]} and {target}")
        path = base / wnid / name
        if not path.is_file():
            raise UserError(f"stream {stream}: {path} (listed in {yaml_file}) is missing")
        paths.append(str(path))
        wnids.append(wnid)
    errors = scan_files(paths, {"list": str(yaml_file.resolve()),
                                "mtime": os.stat(yaml_file).st_mtime_ns})["error"].tolist()
    return check_images(paths, errors, skip_bad, wnids)


@register_stream("imagenet-r", options=ImagenetROptions,
                 help="ImageNet-R, 200 classes (PILOT/SEMA): 10 tasks of 20, order seed 1993")
def imagenet_r(opts):
    stream, root = "imagenet-r", Path(opts.root)
    if opts.split == "ptm":
        return _folders_stream(stream, opts, ("imagenet-r", ""))
    base = _raw_folder(stream, root, "imagenet-r")
    if opts.split == "random":
        return _random_split(stream, opts, base)
    folder = Path(opts.coda_split) if opts.coda_split else root / "splits"
    files = [folder / f"imagenet-r_{part}.yaml" for part in ("train", "test")]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(f"stream {stream}: split=coda needs {missing[0]} (CODA-Prompt's "
                        "dataloaders/splits/imagenet-r_{train,test}.yaml; give the folder "
                        "with coda_split=DIR)")
    (train_paths, train_wnids), (test_paths, test_wnids) = (
        _coda_items(stream, base, f, opts.skip_bad) for f in files)
    classes, train_labels, test_labels = label_by_name(
        train_wnids, test_wnids, class_folders(base), f"stream {stream} ({files[1]})")
    _count(stream, classes, base)
    return _benchmark(stream, opts, classes, (train_paths, train_labels),
                      (test_paths, test_labels))


ImagenetAOptions = _options(
    "imagenet-a", "tasks of the B0 split (default 20, SEMA/APER)", "none",
    splits=("ptm", "random"),
    split_help="ptm: ina.zip's train/test folders; random: a seeded 80/20 per-class split "
               "of the raw folder (not published)")


@register_stream("imagenet-a", options=ImagenetAOptions,
                 help="ImageNet-A, 200 classes (SEMA/APER): 20 tasks of 10, unshuffled "
                      "(SEMA)")
def imagenet_a(opts):
    if opts.split == "random":
        return _random_split("imagenet-a", opts,
                             _raw_folder("imagenet-a", Path(opts.root), "imagenet-a"))
    return _folders_stream("imagenet-a", opts, ("imagenet-a", ""))


# ------------------------------------------------------------------------------- VTAB
VtabOptions = _options("vtab", "tasks of the B0 split (default 5: one per source dataset)",
                       "none")


@register_stream("vtab", options=VtabOptions,
                 help="VTAB-CIL, 5 domains x 10 classes (APER/SEMA): unshuffled, task k = "
                      "domain k")
def vtab(opts):
    return _folders_stream("vtab", opts, ("vtab-cil/vtab", "vtab", ""))


# ------------------------------------------------------------------------------- CUB
CubOptions = _options(
    "cub", "tasks of the B0 split (default 20, APER)", "1993", splits=("ptm", "official"),
    split_help="ptm: cub.zip's train/test folders (APER); official: CUB_200_2011's "
               "train_test_split.txt (not comparable)")


def _read_table(path: Path, columns: int) -> dict[str, list[str]]:
    """``<id> <value...>`` lines of a CUB txt file -> {id: values}."""
    if not path.is_file():
        raise UserError(f"stream cub: {path} is missing (split=official reads "
                        "CUB_200_2011.tgz's txt files)")
    rows = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != columns:
            raise UserError(f"stream cub: {path} line {number}: expected {columns} fields, "
                            f"got {line.strip()!r}")
        rows[parts[0]] = parts[1:]
    return rows


def _cub_official(opts):
    root = Path(opts.root)
    base = next((b for b in (root / "CUB_200_2011", root) if (b / "images.txt").is_file()),
                None)
    if base is None:
        raise _layout_error("cub", opts.root, "no CUB_200_2011/images.txt")
    images = _read_table(base / "images.txt", 2)
    labels = _read_table(base / "image_class_labels.txt", 2)
    split = _read_table(base / "train_test_split.txt", 2)
    classes = [v[0] for _, v in sorted(_read_table(base / "classes.txt", 2).items(),
                                       key=lambda kv: int(kv[0]))]
    _count("cub", classes, base / "classes.txt")
    train, test = ([], []), ([], [])
    for image_id, (relpath,) in images.items():
        if image_id not in labels or image_id not in split:
            raise UserError(f"stream cub: image {image_id} of images.txt has no class or "
                            "split in image_class_labels.txt / train_test_split.txt")
        label = int(labels[image_id][0]) - 1
        folder = Path(relpath).parts[0]
        if not 0 <= label < len(classes) or classes[label] != folder:
            raise UserError(f"stream cub: image_class_labels.txt gives {relpath} class "
                            f"{label + 1}, but its folder is {folder}")
        part = train if split[image_id][0] == "1" else test
        part[0].append(str(base / "images" / relpath))
        part[1].append(label)
    for part in (train, test):
        missing = next((p for p in part[0] if not os.path.isfile(p)), None)
        if missing:
            raise UserError(f"stream cub: {missing} (listed in images.txt) is missing")
    key = {"list": str((base / "images.txt").resolve()),
           "mtime": os.stat(base / "images.txt").st_mtime_ns}
    checked = [check_images(p[0], scan_files(p[0], key)["error"].tolist(), opts.skip_bad,
                            p[1]) for p in (train, test)]
    return _benchmark("cub", opts, classes, checked[0], checked[1])


@register_stream("cub", options=CubOptions,
                 help="CUB-200-2011 (APER): 20 tasks of 10, order seed 1993")
def cub(opts):
    if opts.split == "official":
        return _cub_official(opts)
    return _folders_stream("cub", opts, ("cub", ""))


# ------------------------------------------------------------------------------- the others
OmnibenchmarkOptions = _options("omnibenchmark", "tasks of the B0 split (default 10, APER)",
                                "1993")


@register_stream("omnibenchmark", options=OmnibenchmarkOptions,
                 help="OmniBenchmark, 300 classes (APER): 10 tasks of 30, order seed 1993")
def omnibenchmark(opts):
    return _folders_stream("omnibenchmark", opts, ("omnibenchmark", ""))


ObjectnetOptions = _options("objectnet", "tasks of the B0 split (default 20, APER)", "1993")


@register_stream("objectnet", options=ObjectnetOptions,
                 help="ObjectNet, 200-class subset (APER): 20 tasks of 10, order seed 1993")
def objectnet(opts):
    return _folders_stream("objectnet", opts, ("objectnet", ""))


__all__ = ["LAYOUTS", "NUM_CLASSES", "DEFAULT_TASKS", "PaperOptions"]
