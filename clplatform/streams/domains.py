"""Domain-adaptation streams read from the datasets' own files: ``office31``, ``office-home``,
``visda`` and ``domainnet`` (spec ``paper-benchmarks.md`` §3-§4).

One experience per domain, every class in every experience (``domain-incremental``);
experience 0 is the labelled **source**, experiences 1..K the **targets** (LFTL and the
SHOT family). ``split=transductive`` (the SFADA protocol): a target's test set is its whole
training pool, the same files; ``split=holdout``: a seeded ``test_fraction`` of every target
class is held out instead. The source's test set is a seeded random ``source_val`` hold-out
(SHOT's 90/10 ``trte=val`` split, not per class), disjoint from its training set.

Labels: class folders numbered in sorted order (Office-31, Office-Home, VisDA: Python's
case-sensitive ``sorted``, so ``TV`` < ``Table``; DomainNet: the official lists' alphabetical
order, see :data:`DOMAINNET`). A list file next to the images (SHOT ``<domain>_list.txt``,
VisDA ``image_list.txt``, DomainNet ``<domain>_{train,test}.txt``) is used when present: it
says which images belong to the domain (split), and each of its labels must be the number
of the file's class folder (else a UserError naming the list file and line). Nothing is
downloaded: a wrong ``root`` is one line naming the expected layout and the archive.

VisDA's ``test`` domain (72,372 real images in ``test/trunk01..trunk20/<md5>.jpg``, no class
folders) is read only when asked for (``targets=validation,test``) and only with its labels:
the ground truth the organisers released in the devkit, ``classification/data/image_list.txt``
(``trunkNN/<file> <label>``), at ``<root>/test/image_list.txt`` or ``<root>/image_list.txt``
(where the devkit's instructions download it). Without it the stream stops with one line:
every experience is trained or queried (LFTL's oracle) and scored with labels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, ClassVar, Optional

import numpy as np

from clplatform.errors import UserError
from clplatform.options import opt
from clplatform.registry import register_stream

from .common import StreamInfo, b0_split, domain_incremental, seed_option
from .custom import _split
from .files import (TRANSFORMS, ImageFiles, ImageOptions, check_images, class_folders,
                    class_order, files_benchmark, image_transforms, parse_order_seed,
                    scan_class_folders)

Item = tuple[str, int]  # (image file, label)


# ------------------------------------------------------------------------------- layouts
def _plain_order(name: str) -> str:
    return name


def _domainnet_order(name: str) -> str:
    """DomainNet's labels follow the class names alphabetically, ignoring case, ``_`` and
    ``-`` (``aircraft_carrier`` 0, ``cello`` < ``cell_phone``, ``The_Eiffel_Tower`` 308,
    ``t-shirt`` 327), not Python's ``sorted`` of the folder names."""
    return name.lower().replace("_", "").replace("-", "")


@dataclass(frozen=True)
class DomainDataset:
    """Where a dataset's domains lie and how its classes are numbered."""
    title: str                       # for messages: "Office-31"
    archive: str                     # what a user fetches and extracts
    layout: str                      # the accepted layouts, for messages
    wrappers: tuple[str, ...]        # folders under root holding the domains; "" = root
    domains: tuple[str, ...]         # canonical domain names, folder order
    num_classes: int
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # other folder names
    inner: str = ""                  # optional level between a domain and its classes
    #: domains whose images are not in class folders (VisDA's ``test/trunkNN/``): labelled
    #: only by a ground-truth list, read only when asked for (not a default target)
    listed_only: tuple[str, ...] = ()
    list_help: str = ""              # where the list of a listed_only domain comes from
    class_order: Callable[[str], str] = _plain_order
    order_text: str = "sorted order"  # how the class order is described in messages

    def folder_names(self, domain: str) -> tuple[str, ...]:
        return (domain,) + self.aliases.get(domain, ())

    def canonical(self, name: str, stream: str) -> str:
        """The canonical name of a domain given by the user (an alias is accepted)."""
        for domain in self.domains:
            if name in self.folder_names(domain):
                return domain
        raise UserError(f"stream {stream}: unknown domain {name!r}; choose from "
                        f"{', '.join(self.domains)}")


OFFICE31 = DomainDataset(
    "Office-31", "domain_adaptation_images.tar.gz",
    "<root>/[domain_adaptation_images/]{amazon,dslr,webcam}/[images/]<class>/<image>",
    ("domain_adaptation_images", ""), ("amazon", "dslr", "webcam"), 31, inner="images")
OFFICE_HOME = DomainDataset(
    "Office-Home", "OfficeHomeDataset_10072016.zip",
    "<root>/[OfficeHomeDataset_10072016/]{Art,Clipart,Product,Real World}/<class>/<image>",
    ("OfficeHomeDataset_10072016", ""), ("Art", "Clipart", "Product", "Real World"), 65,
    aliases={"Real World": ("RealWorld", "Real_World")})
VISDA = DomainDataset(
    "VisDA-2017", "train.tar, validation.tar and test.tar (VisDA-2017 classification track)",
    "<root>/{train,validation}/<class>/<image> with image_list.txt, "
    "<root>/test/trunkNN/<image>",
    ("",), ("train", "validation", "test"), 12, listed_only=("test",),
    list_help="the test labels the organisers released: classification/data/image_list.txt "
              "of the VisDA-2017 devkit (VisionLearningGroup/taskcv-2017-public), lines "
              "'trunkNN/<file> <label>'")
DOMAINNET = DomainDataset(
    "DomainNet", "<domain>.zip and <domain>_{train,test}.txt (DomainNet cleaned, M3SDA)",
    "<root>/[domainnet/]<domain>/<class>/<image> with <domain>_train.txt, <domain>_test.txt",
    ("domainnet", ""), ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
    345, class_order=_domainnet_order,
    order_text="alphabetical order ignoring case, '_' and '-', as the official lists")


def dataset_base(data: DomainDataset, root: Path, stream: str) -> Path:
    """The first of ``root/<wrapper>`` holding a domain folder of ``data``."""
    if not root.is_dir():
        raise UserError(f"stream {stream}: root {root} is not a folder; expected "
                        f"{data.layout} (extract {data.archive})")
    for wrapper in data.wrappers:
        base = root / wrapper if wrapper else root
        if any((base / name).is_dir() for d in data.domains for name in data.folder_names(d)):
            return base
    raise UserError(f"stream {stream}: no {data.title} domain folder in {root}; expected "
                    f"{data.layout} (extract {data.archive})")


def domain_folder(data: DomainDataset, base: Path, domain: str, stream: str) -> Path:
    """The folder of ``domain`` under ``base`` (under any of its accepted names)."""
    for name in data.folder_names(domain):
        if (base / name).is_dir():
            return base / name
    raise UserError(f"stream {stream}: {data.title} domain folder {base / domain} not found; "
                    f"expected {data.layout} (extract {data.archive})")


def domain_classes(data: DomainDataset, folder: Path, stream: str) -> tuple[Path, list[str]]:
    """(the folder holding the class folders of a domain, class names in label order)."""
    inner = folder / data.inner if data.inner and (folder / data.inner).is_dir() else folder
    names = sorted(class_folders(inner), key=data.class_order)
    if len(names) != data.num_classes:
        raise UserError(f"stream {stream}: {inner} holds {len(names)} class folders; "
                        f"{data.title} has {data.num_classes}")
    return inner, names


# ------------------------------------------------------------------------------- list files
@dataclass(frozen=True)
class ListEntry:
    line: int      # 1-based line number in the list file
    path: str      # as written
    label: int


def read_list(path: Path) -> list[ListEntry]:
    """``<path> <label>`` lines (the path may hold spaces: ``Real World/...``); blank lines
    are skipped; anything else is a UserError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read list file {path}: {exc}") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise UserError(f"{path}, line {number}: expected '<image path> <label>', "
                            f"got {line.strip()!r}")
        entries.append(ListEntry(number, parts[0], int(parts[1])))
    if not entries:
        raise UserError(f"list file {path} is empty")
    return entries


@dataclass
class DomainFiles:
    """The images of a domain's class folders (a cached scan)."""
    files: dict[tuple[str, str], str]   # (class folder, file name) -> path
    errors: dict[str, str]              # path -> why PIL cannot open it ('' = readable)

    @classmethod
    def scan(cls, class_dir: Path) -> "DomainFiles":
        paths, names, errors = scan_class_folders(class_dir)
        return cls({(n, os.path.basename(p)): p for p, n in zip(paths, names)},
                   dict(zip(paths, errors)))

    def readable(self, items: list[Item], skip_bad: bool) -> list[Item]:
        """``items`` without unreadable images (``skip_bad``: a warning each), else one
        line naming the first."""
        paths, labels = check_images([p for p, _ in items], [self.errors[p] for p, _ in items],
                                     skip_bad, [label for _, label in items])
        return list(zip(paths, labels))


def listed_items(entries: list[ListEntry], list_file: Path, files: dict[tuple[str, str], str],
                 classes: list[str], class_dir: Path, order_text: str) -> list[Item]:
    """The images of a list file with their labels, each checked: the file exists under its
    class folder and the label is that folder's number. A list line is matched by its last
    two path parts (``<class>/<file>``), so SHOT's absolute paths match too."""
    index = {name: i for i, name in enumerate(classes)}
    items = []
    for entry in entries:
        key, where = _list_key(entry), f"{list_file}, line {entry.line}"
        if len(key) != 2 or key[0] not in index:
            raise UserError(f"{where}: {entry.path} is not in a class folder of {class_dir}")
        if key not in files:
            raise UserError(f"{where}: {entry.path} not found in {class_dir / key[0]}")
        if entry.label != index[key[0]]:
            raise UserError(f"{where}: label {entry.label} for {entry.path}, but class "
                            f"folder {key[0]!r} is number {index[key[0]]} in {order_text}")
        items.append((files[key], entry.label))
    return items


def _list_key(entry: ListEntry) -> tuple[str, ...]:
    """The last two path parts of a list line (``<folder>/<file>``)."""
    return tuple(PurePosixPath(entry.path.replace("\\", "/")).parts[-2:])


def ground_truth_items(entries: list[ListEntry], list_file: Path,
                       files: dict[tuple[str, str], str], num_classes: int,
                       folder: Path) -> list[Item]:
    """The images of a ground-truth list over folders that are not classes (VisDA's
    ``trunkNN/<file> <label>``): each file must exist, each label be 0..C-1."""
    items = []
    for entry in entries:
        key, where = _list_key(entry), f"{list_file}, line {entry.line}"
        if key not in files:
            raise UserError(f"{where}: {entry.path} not found in {folder}")
        if not 0 <= entry.label < num_classes:
            raise UserError(f"{where}: label {entry.label} for {entry.path}; expected 0..."
                            f"{num_classes - 1}")
        items.append((files[key], entry.label))
    return items


def folder_items(files: dict[tuple[str, str], str], classes: list[str]) -> list[Item]:
    index = {name: i for i, name in enumerate(classes)}
    return [(path, index[cls]) for (cls, _), path in sorted(files.items())]


# ------------------------------------------------------------------------------- splits
def holdout(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """(train, test): a seeded ``fraction`` of every class to the test side (at least one
    image of a class with two or more), as the ``folder`` stream splits."""
    labels = np.asarray([label for _, label in items])
    train, test = _split(labels, fraction, seed)
    return [items[i] for i in train], [items[i] for i in test]


def source_holdout(items: list[Item], fraction: float, seed: int
                   ) -> tuple[list[Item], list[Item]]:
    """(train, test) of the source as SHOT's ``trte=val``: ``int((1 - fraction) n)`` images
    drawn at random (not per class) for training, the rest for testing. The order is seeded
    here; SHOT's ``random_split`` draws from its own global seed."""
    order = np.random.default_rng(seed).permutation(len(items))
    keep = int((1 - fraction) * len(items))
    return [items[i] for i in sorted(order[:keep])], [items[i] for i in sorted(order[keep:])]


def source_and_targets(data: DomainDataset, source: str, targets: tuple[str, ...],
                       stream: str) -> list[str]:
    """Canonical [source, *targets]; targets default to the other labelled domains in folder
    order."""
    source = data.canonical(source, stream)
    names = [data.canonical(t, stream) for t in targets] if targets else [
        d for d in data.domains if d != source and d not in data.listed_only]
    if source in names:
        raise UserError(f"stream {stream}: the source domain {source!r} is also a target")
    if len(set(names)) != len(names):
        raise UserError(f"stream {stream}: a target domain is listed twice in "
                        f"targets={','.join(targets)}")
    if not names:
        raise UserError(f"stream {stream}: no target domain")
    return [source, *names]


def domain_experiences(pools: list[list[Item]], split: str, test_fraction: float,
                       source_val: float, seed: int
                       ) -> tuple[list[list[Item]], list[list[Item]]]:
    """(train lists, test lists), one per domain; ``pools[0]`` is the source (a random
    ``source_val`` hold-out, :func:`source_holdout`), the rest targets (``transductive``:
    test = train, the same files; ``holdout``: a seeded ``test_fraction`` of every class)."""
    train, test = [], []
    for i, pool in enumerate(pools):
        if i == 0:
            tr, te = source_holdout(pool, source_val, seed)
        elif split == "transductive":
            tr, te = pool, pool
        else:
            tr, te = holdout(pool, test_fraction, seed + i)
        train.append(tr)
        test.append(te)
    return train, test


# ------------------------------------------------------------------------------- options
def _transform_option():
    return opt("none", "none (default): resize to image_size only, for training and testing "
               "(deterministic: LFTL computes its frozen features once); shot: SHOT/LFTL's "
               "resize to 256x256 + random crop 224 + flip / centre crop 224 (the lftl "
               "presets); pilot: PILOT's random-resized-crop + flip / resize + centre-crop; "
               "coda: CODA-Prompt's. No mean/std normalisation (a backbone option)",
               choices=TRANSFORMS)


@dataclass
class DomainOptions(ImageOptions):
    """Options of the source -> targets streams (``office31``, ``office-home``, ``visda``)."""
    transform: str = _transform_option()
    root: str = opt("", "folder holding the extracted dataset (required)")
    source: str = opt("", "source domain: experience 0, labelled")
    targets: tuple[str, ...] = opt((), "target domains, experiences 1..K in this order "
                                       "(default: every other domain in folder order)")
    split: str = opt("transductive", "transductive: a target's test set is its whole "
                     "training pool (SFADA protocol); holdout: test_fraction of every target "
                     "class is held out", choices=("transductive", "holdout"))
    test_fraction: float = opt(0.2, "held-out share of every target class (split=holdout)",
                               min=0.01, max=0.9)
    source_val: float = opt(0.1, "share of the source images held out at random as the "
                            "source's test set (SHOT's 90/10 split)", min=0.01, max=0.9)
    seed: Optional[int] = seed_option("seed of the hold-out splits (default: run seed)")
    stream: ClassVar[str] = ""

    def validate(self) -> None:
        if not self.root:
            raise UserError(f"stream {self.stream} needs --stream-opt root=DIR (the extracted "
                            "dataset)")


@dataclass
class Office31Options(DomainOptions):
    stream: ClassVar[str] = "office31"
    source: str = opt("amazon", "source domain: experience 0, labelled (amazon, dslr, webcam)")


@dataclass
class OfficeHomeOptions(DomainOptions):
    stream: ClassVar[str] = "office-home"
    source: str = opt("Art", "source domain: experience 0, labelled (Art, Clipart, Product, "
                             "Real World; RealWorld and Real_World accepted)")


@dataclass
class VisdaOptions(DomainOptions):
    stream: ClassVar[str] = "visda"
    source: str = opt("train", "source domain: experience 0, labelled (train: synthetic "
                               "renders; validation: real images)")
    targets: tuple[str, ...] = opt((), "target domains, experiences 1..K in this order "
                                       "(default: validation; test only when asked for, with "
                                       "its ground-truth image_list.txt)")


# ------------------------------------------------------------------------------- domains
def _list_file(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def domain_pool(data: DomainDataset, base: Path, domain: str, stream: str,
                lists: list[Path], skip_bad: bool
                ) -> tuple[list[str] | None, list[Item], Path]:
    """(class names, the domain's images with labels, its class folder): from the first
    existing file of ``lists`` when there is one, else every image in the class folders.
    A ``listed_only`` domain (no class folders: class names None) needs its list."""
    folder = domain_folder(data, base, domain, stream)
    list_file = _list_file(lists)
    if domain in data.listed_only:
        if list_file is None:
            raise UserError(
                f"stream {stream}: the {domain} domain of {data.title} has no labels: "
                f"{' or '.join(map(str, lists))} not found; its images are read with "
                f"{data.list_help}, as every experience is trained or queried and scored "
                "with labels")
        scan = DomainFiles.scan(folder)
        pool = scan.readable(ground_truth_items(read_list(list_file), list_file, scan.files,
                                                data.num_classes, folder), skip_bad)
        return None, pool, folder
    class_dir, classes = domain_classes(data, folder, stream)
    scan = DomainFiles.scan(class_dir)
    pool = (listed_items(read_list(list_file), list_file, scan.files, classes, class_dir,
                         data.order_text)
            if list_file is not None else folder_items(scan.files, classes))
    pool = scan.readable(pool, skip_bad)
    if not pool:
        raise UserError(f"stream {stream}: no images in {class_dir}")
    return classes, pool, class_dir


def same_classes(classes: list[str], other: list[str], where: Path, first: Path,
                 stream: str) -> None:
    if other != classes:
        odd = sorted(set(other) ^ set(classes))
        raise UserError(f"stream {stream}: the class folders of {where} differ from those of "
                        f"{first} ({odd[0]!r} is in only one)")


@dataclass
class DomainLists:
    """What a domain stream is made of, before any image is read."""
    domains: list[str]          # experience i = domains[i]
    classes: list[str]          # label -> class name
    train: list[list[Item]]
    test: list[list[Item]]


def _shot_lists(data: DomainDataset, root: Path, base: Path, domain: str) -> list[Path]:
    """SHOT's ``<domain>_list.txt`` (any accepted folder name), beside the domains or in
    ``root``."""
    return [top / f"{name}_list.txt" for top in dict.fromkeys((base, root))
            for name in data.folder_names(domain)]


def _visda_lists(data: DomainDataset, root: Path, base: Path, domain: str) -> list[Path]:
    """``<domain>/image_list.txt``; the test labels also beside the three folders, where
    the devkit's instructions download them."""
    own = [base / domain / "image_list.txt"]
    return own + [base / "image_list.txt"] if domain in data.listed_only else own


def source_target_lists(data: DomainDataset, opts: DomainOptions, stream: str
                        ) -> DomainLists:
    """Experience 0 = ``opts.source``, then ``opts.targets``, split as ``opts`` says."""
    root = Path(opts.root)
    base = dataset_base(data, root, stream)
    names = source_and_targets(data, opts.source, opts.targets, stream)
    lists = _visda_lists if data is VISDA else _shot_lists
    classes, pools, first = None, [], None
    for domain in names:
        found, pool, where = domain_pool(data, base, domain, stream,
                                         lists(data, root, base, domain), opts.skip_bad)
        if found is not None:  # None: a listed_only domain, no class folders
            if classes is None:  # (a source and a target: one has class folders)
                classes, first = found, where
            same_classes(classes, found, where, first, stream)
        pools.append(pool)
    train, test = domain_experiences(pools, opts.split, opts.test_fraction, opts.source_val,
                                     opts.seed)
    return DomainLists(names, classes, train, test)


@dataclass
class DomainNetOptions(ImageOptions):
    """Options of ``domainnet``."""
    transform: str = _transform_option()
    root: str = opt("", "folder holding the extracted domains and their lists (required)")
    domains: tuple[str, ...] = opt((), "domains, one experience each in this order (default: "
                                       "all six, sorted)")
    split: str = opt("official", "official: the <domain>_train.txt / _test.txt lists; "
                     "transductive: experience 0 is a source (source_val hold-out), every "
                     "other domain's test set is its training pool",
                     choices=("official", "transductive"))
    source_val: float = opt(0.1, "share of the first domain's images held out at random as "
                            "its test set (split=transductive)", min=0.01, max=0.9)
    scenario: str = opt("domain", "domain: one experience per domain; class: the domains "
                        "pooled, classes split into tasks (CODA-P's DomainNet setting)",
                        choices=("domain", "class"))
    tasks: int = opt(5, "tasks of scenario=class (CODA-P: 5 of 69 classes)", min=1, max=345)
    order_seed: str = opt("none", "class order of scenario=class: none (sorted), an integer "
                          "(PILOT's RandomState(seed).permutation) or run (the run seed)")
    seed: Optional[int] = seed_option("seed of the hold-out split (default: run seed)")

    def validate(self) -> None:
        if not self.root:
            raise UserError("stream domainnet needs --stream-opt root=DIR (the extracted "
                            "domains)")
        parse_order_seed(self.order_seed)
        if self.scenario == "class" and self.split != "official":
            raise UserError("stream domainnet: scenario=class pools the official train and "
                            "test lists; it takes split=official only")


def domainnet_lists(opts: DomainNetOptions, stream: str = "domainnet") -> DomainLists:
    """Per domain: the official train and test lists (``split=official``; required), or
    every image of the domain (the two lists together when present) for
    ``split=transductive``."""
    data = DOMAINNET
    base = dataset_base(data, Path(opts.root), stream)
    names = [data.canonical(d, stream) for d in opts.domains] or list(data.domains)
    if len(set(names)) != len(names):
        raise UserError(f"stream {stream}: a domain is listed twice in "
                        f"domains={','.join(opts.domains)}")
    classes, first, train, test = None, None, [], []
    for domain in names:
        class_dir, found = domain_classes(data, domain_folder(data, base, domain, stream),
                                          stream)
        if classes is None:
            classes, first = found, class_dir
        same_classes(classes, found, class_dir, first, stream)
        lists = [base / f"{domain}_{part}.txt" for part in ("train", "test")]
        missing = [p for p in lists if not p.is_file()]
        if missing and (opts.split == "official" or len(missing) == 1):
            raise UserError(f"stream {stream}: list file {missing[0]} not found; split="
                            f"{opts.split} needs {DOMAINNET.layout} (from {data.archive})")
        scan = DomainFiles.scan(class_dir)
        parts = [listed_items(read_list(p), p, scan.files, classes, class_dir,
                              data.order_text) for p in lists if p.is_file()]
        if not parts:
            parts = [folder_items(scan.files, classes)]
        parts = [scan.readable(part, opts.skip_bad) for part in parts]
        if opts.split == "official":
            train.append(parts[0])
            test.append(parts[1])
        else:
            pool = [item for part in parts for item in part]
            train.append(pool)
            test.append(pool)
    if opts.split == "transductive":
        train[0], test[0] = source_holdout(train[0], opts.source_val, opts.seed)
    for kind, lists_ in (("training", train), ("test", test)):
        for domain, items in zip(names, lists_):
            if not items:
                raise UserError(f"stream {stream}: domain {domain} has no {kind} images")
    return DomainLists(names, classes, train, test)


# ------------------------------------------------------------------------------- streams
def _paths_and_labels(items: list[Item]) -> tuple[list[str], list[int]]:
    return [p for p, _ in items], [label for _, label in items]


def domain_benchmark(stream: str, lists: DomainLists, opts: ImageOptions):
    """One experience per domain over lazily read files; test sets use the eval transform."""
    info = StreamInfo(stream, "domain-incremental", list(lists.classes),
                      (3, opts.image_size, opts.image_size), domains=list(lists.domains))

    def pair(items: list[Item]):
        paths, labels = _paths_and_labels(items)
        return ImageFiles(paths), labels
    return domain_incremental([pair(t) for t in lists.train], [pair(t) for t in lists.test],
                              info, image_transforms(opts.transform, opts.image_size))


def _source_target_stream(name: str, data: DomainDataset, options: type, help: str):
    """Register ``name``: experience 0 = the source domain of ``data``, then the targets."""
    def build(opts: DomainOptions):
        return domain_benchmark(name, source_target_lists(data, opts, name), opts)
    build.__name__ = build.__qualname__ = name.replace("-", "_")  # the registry's identity
    return register_stream(name, options=options, help=help)(build)


office31 = _source_target_stream(
    "office31", OFFICE31, Office31Options,
    "Office-31 (amazon, dslr, webcam): source -> target domains, from "
    "domain_adaptation_images/")
office_home = _source_target_stream(
    "office-home", OFFICE_HOME, OfficeHomeOptions,
    "Office-Home (Art, Clipart, Product, Real World): source -> target domains, from "
    "OfficeHomeDataset_10072016/")
visda = _source_target_stream(
    "visda", VISDA, VisdaOptions, "VisDA-2017 classification: synthetic train -> real "
    "validation")


@register_stream("domainnet", options=DomainNetOptions,
                 help="DomainNet (6 domains, 345 classes): one experience per domain, or "
                      "class-incremental over the pooled domains")
def domainnet(opts: DomainNetOptions):
    lists = domainnet_lists(opts)
    if opts.scenario == "domain":
        return domain_benchmark("domainnet", lists, opts)
    order = class_order(len(lists.classes), opts.order_seed, opts.seed)
    bm = files_benchmark("domainnet", _paths_and_labels(sum(lists.train, [])),
                         _paths_and_labels(sum(lists.test, [])), lists.classes, order,
                         b0_split(len(lists.classes), opts.tasks),
                         image_transforms(opts.transform, opts.image_size), opts.image_size)
    bm.info.domains = list(lists.domains)
    return bm
