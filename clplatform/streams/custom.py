"""Bring your own data: in-memory arrays, image folders, and Python callables.

- ``from_arrays(x, y, domains=None, ...)``: NumPy/torch data -> a class-incremental (or, with
  ``domains``, domain-incremental) benchmark with its ``info``.
- ``folder`` stream: ``root=DIR`` with ``layout=class`` (``DIR/<class>/<image>``) or
  ``layout=domain`` (``DIR/<domain>/<class>/<image>``), optional ``DIR/train`` + ``DIR/test``.
- ``path/to/file.py:function`` or ``package.module:function`` as a stream name: the function
  (called with the ``--stream-opt`` values as keyword arguments) returns an Avalanche
  benchmark, or a dict ``{"train": ..., "test": ..., ...}`` of datasets/arrays plus the
  keyword arguments of ``from_arrays``.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from clplatform.errors import UserError
from clplatform.options import build_options, opt
from clplatform.registry import old_import_name, old_names_refused, register_stream

from .common import (SEED_MAX, StreamInfo, cached_arrays, class_incremental,
                     domain_incremental, seed_option, seeded_permutation)
from .files import IMAGE_SUFFIXES



# ------------------------------------------------------------------------------- arrays
def _images(x, what: str) -> torch.Tensor:
    """[N, H, W], [N, H, W, C] (uint8 or float) or [N, C, H, W] float -> float [N, C, H, W]."""
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.dim() not in (3, 4) or len(t) == 0:
        raise UserError(f"{what}: expected images [N, H, W], [N, H, W, C] or [N, C, H, W], "
                        f"got shape {tuple(t.shape)}")
    integer = not torch.is_floating_point(t)
    t = t.float() / 255.0 if integer else t.float()
    if not torch.isfinite(t).all():
        raise UserError(f"{what}: images contain NaN or infinite values")
    if t.dim() == 3:
        return t.unsqueeze(1).contiguous()
    if t.shape[1] in (1, 3) and t.shape[-1] not in (1, 3):
        return t.contiguous()
    return t.permute(0, 3, 1, 2).contiguous()


def _labels(y, n: int, what: str) -> np.ndarray:
    y = np.asarray(y.cpu() if torch.is_tensor(y) else y)
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"{what}: expected {n} labels (one per image), got shape {y.shape}")
    if y.dtype.kind in "fc" and not np.isfinite(y).all():
        raise UserError(f"{what}: labels contain NaN or infinite values")
    return y


def _split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split: ``fraction`` of every group (class, or domain x class) to the test set,
    at least one sample of a group with two or more."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(groups), dtype=bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1 if len(idx) > 1 and fraction > 0 else 0), len(idx) - 1)
        test[rng.permutation(idx)[:k]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


@dataclass
class ArraysOptions:
    """The numbers of :func:`from_arrays` (validated like every other option)."""
    experiences: Optional[int] = opt(None, "experiences of a class-incremental stream "
                                           "(default: min(5, classes))", min=1)
    test_fraction: float = opt(0.2, "test share of every class without a given test set",
                               min=0, max=0.9)
    seed: int = opt(0, "seed of the class order and the split", min=0, max=SEED_MAX)


def from_arrays(x, y, domains=None, *, test: tuple | None = None, test_domains=None,
                test_fraction: float = 0.2, experiences: int | None = None,
                class_names: Sequence[str] | None = None, domain_order: Sequence | None = None,
                seed: int = 0, name: str = "arrays"):
    """An Avalanche benchmark (with ``.info``) from images ``x`` and labels ``y``.

    Without ``domains``: class-incremental, classes in a seeded order split into
    ``experiences`` (default min(5, classes)). With ``domains`` (one value per image):
    domain-incremental, one experience per domain in ``domain_order`` (default: sorted).
    The test set is ``test=(x, y)`` (with ``test_domains``) or a seeded ``test_fraction``
    of every class (and domain).
    """
    checked = build_options(ArraysOptions, {"experiences": experiences,
                                            "test_fraction": test_fraction, "seed": seed},
                            f"stream {name}")
    experiences, test_fraction, seed = checked.experiences, checked.test_fraction, checked.seed
    images = _images(x, name)
    labels = _labels(y, len(images), name)
    if test is not None:
        test_images = _images(test[0], f"{name} (test)")
        test_labels = _labels(test[1], len(test_images), f"{name} (test)")
        if test_images.shape[1:] != images.shape[1:]:
            raise UserError(f"{name}: test images {tuple(test_images.shape[1:])} differ from "
                            f"training images {tuple(images.shape[1:])}")
    values = np.unique(labels if test is None else np.concatenate([labels, test_labels]))
    if class_names is not None and len(class_names) != len(values):
        raise UserError(f"{name}: {len(class_names)} class names for {len(values)} classes")
    names = list(class_names) if class_names is not None else [str(v) for v in values]
    index = {v: i for i, v in enumerate(values.tolist())}

    def encode(lab):
        return torch.tensor([index[v] for v in lab.tolist()], dtype=torch.long)
    if domains is not None:
        domains = _labels(domains, len(images), f"{name} domains")
        order = list(domain_order) if domain_order is not None else sorted(
            np.unique(domains).tolist(), key=str)
        missing = sorted(set(np.unique(domains).tolist()) - set(order), key=str)
        if missing:
            raise UserError(f"{name}: domain {missing[0]!r} is not in the domain order")
    if test is None:
        groups = labels.astype(str) if domains is None else np.char.add(
            domains.astype(str), "\0" + labels.astype(str))
        train_idx, test_idx = _split(groups, test_fraction, seed)
        if len(test_idx) == 0:
            raise UserError(f"{name}: the test split is empty (test_fraction={test_fraction})")
        test_images, test_labels = images[test_idx], labels[test_idx]
        test_domains = domains[test_idx] if domains is not None else None
        images, labels = images[train_idx], labels[train_idx]
        domains = domains[train_idx] if domains is not None else None
    info = StreamInfo(name, "class-incremental" if domains is None else "domain-incremental",
                      names, tuple(images.shape[1:]))
    if domains is None:
        k = experiences if experiences is not None else min(5, len(values))
        return class_incremental((images, encode(labels)), (test_images, encode(test_labels)),
                                 seeded_permutation(len(values), seed), k, info)
    if test_domains is None:
        raise UserError(f"{name}: test_domains are needed with domains and a given test set")
    test_domains = _labels(test_domains, len(test_images), f"{name} test domains")
    train, tests = [], []
    for domain in order:
        tr, te = domains == domain, test_domains == domain
        if not tr.any() or not te.any():
            raise UserError(f"{name}: domain {domain!r} has no training or no test images")
        train.append((images[torch.from_numpy(tr)], encode(labels[tr])))
        tests.append((test_images[torch.from_numpy(te)], encode(test_labels[te])))
    info.domains = [str(d) for d in order]
    return domain_incremental(train, tests, info)


# ------------------------------------------------------------------------------- folders
@dataclass
class FolderOptions:
    root: str = opt("", "dataset folder (required)")
    layout: str = opt("class", "class: DIR/<class>/<image> (class-incremental); domain: "
                      "DIR/<domain>/<class>/<image> (one experience per domain)",
                      choices=("class", "domain"))
    experiences: int = opt(5, "experiences of a class layout", min=1)
    domains: tuple[str, ...] = opt((), "order of the domains (default: sorted by name)")
    test_fraction: float = opt(0.2, "test share of every class without DIR/train + DIR/test",
                               min=0, max=0.9)
    image_size: int = opt(32, "images are resized to this side (the backbone adapts them "
                              "further)", min=8, max=1024)
    channels: int = opt(3, "channels the images are converted to (1: grayscale, 3: RGB)",
                        choices=(1, 3))
    skip_bad: bool = opt(False, "skip unreadable images with a warning instead of stopping")
    seed: Optional[int] = seed_option("seed of the class order and split (default: run seed)")

    def validate(self) -> None:
        if not self.root:
            raise UserError("stream 'folder' needs --stream-opt root=DIR")
        if not Path(self.root).is_dir():
            raise UserError(f"stream folder not found: {self.root}")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in
                  IMAGE_SUFFIXES)


def _scan(root: Path, layout: str) -> list[tuple[Path, str, str]]:
    """(file, domain, class) of every image under ``root``."""
    found = []
    for top in _subdirs(root):
        if layout == "class":
            found += [(f, "", top.name) for f in _image_files(top)]
        else:
            for cls in _subdirs(top):
                found += [(f, top.name, cls.name) for f in _image_files(cls)]
    if not found:
        shape = "<class>/<image>" if layout == "class" else "<domain>/<class>/<image>"
        raise UserError(f"no images found in {root} (layout={layout} expects {shape})")
    return found


def _decode(files: list[Path], size: int, channels: int, skip_bad: bool
            ) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError
    mode = "L" if channels == 1 else "RGB"
    images, kept = [], []
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert(mode).resize((size, size), Image.BILINEAR)
                images.append(np.asarray(img, dtype=np.uint8))
                kept.append(i)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError,
                Image.DecompressionBombError) as exc:  # what PIL raises for a bad image
            if not skip_bad:
                raise UserError(f"cannot read image {path}: {exc} (--stream-opt "
                                "skip_bad=true skips unreadable images)") from None
            print(f"clplat: warning: skipped unreadable image {path}: {exc}", file=sys.stderr)
    if not images:
        raise UserError("no readable images")
    return np.stack(images), np.asarray(kept)


def _load_folder(root: Path, opts: FolderOptions, part: str) -> dict[str, np.ndarray]:
    found = _scan(root, opts.layout)
    key = {"root": str(root.resolve()), "part": part, "size": opts.image_size,
           "channels": opts.channels, "skip_bad": opts.skip_bad, "layout": opts.layout,
           "files": [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                     for f, _, _ in found]}

    def make():
        images, kept = _decode([f for f, _, _ in found], opts.image_size, opts.channels,
                               opts.skip_bad)
        return {"x": images, "y": np.asarray([found[i][2] for i in kept]),
                "d": np.asarray([found[i][1] for i in kept])}
    return cached_arrays("folder", key, make)


@register_stream("folder", options=FolderOptions,
                 help="your images: DIR/<class>/<image> or DIR/<domain>/<class>/<image>")
def folder(opts: FolderOptions):
    root = Path(opts.root)
    split = (root / "train").is_dir() and (root / "test").is_dir()
    train = _load_folder(root / "train" if split else root, opts, "train")
    test = _load_folder(root / "test", opts, "test") if split else None
    domain = opts.layout == "domain"
    kwargs = dict(experiences=opts.experiences, test_fraction=opts.test_fraction, seed=opts.seed,
                  name=f"folder:{root.name}", domain_order=list(opts.domains) or None)
    if test is not None:
        kwargs.update(test=(test["x"], test["y"]), test_domains=test["d"] if domain else None)
    return from_arrays(train["x"], train["y"], train["d"] if domain else None, **kwargs)


# ------------------------------------------------------------------------------- callables
def is_callable_reference(name: str) -> bool:
    """``file.py:function`` or ``package.module:function`` (not a registered prefix)."""
    target, _, function = name.rpartition(":")
    return bool(target) and function.isidentifier() and (
        target.endswith(".py") or all(p.isidentifier() for p in target.split(".")))


def _load_callable(reference: str):
    target, _, function = reference.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise UserError(f"stream file not found: {target}")
        spec = importlib.util.spec_from_file_location(f"clplat_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look modules up here
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            with old_names_refused():
                spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001  (the user's code: report, do not crash)
            sys.modules.pop(spec.name, None)
            raise UserError(old_import_name(exc, target) or f"cannot import {target}: "
                            f"{type(exc).__name__}: {exc}") from None
        finally:
            sys.path.remove(str(path.parent.resolve()))
    else:
        try:
            with old_names_refused():
                module = importlib.import_module(target)
        except Exception as exc:  # noqa: BLE001
            raise UserError(old_import_name(exc, target) or f"cannot import module {target!r}: "
                            f"{type(exc).__name__}: {exc}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise UserError(f"{target} has no function {function!r}")
    return fn


def _literal(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _task_aware(dataset, what: str):
    """``dataset`` as an Avalanche classification dataset whose mini-batches end with the
    task label (``<x, y, t>``), as the strategies expect: its own task labels, else 0."""
    from avalanche.benchmarks.utils import (AvalancheDataset, ConstantSequence, TaskLabels,
                                            as_classification_dataset)
    if not hasattr(dataset, "targets"):
        raise UserError(f"{what} holds a {type(dataset).__name__} without targets (class "
                        "labels), not a classification dataset")
    if not isinstance(dataset, AvalancheDataset):  # a torch dataset with targets
        dataset = as_classification_dataset(dataset)
    labels = getattr(dataset, "targets_task_labels", None)
    if labels is not None and labels.use_in_getitem:
        return dataset
    labels = TaskLabels(labels.data if labels is not None
                        else ConstantSequence(0, len(dataset)))
    return dataset.update_data_attribute("targets_task_labels", labels)


def complete_benchmark(benchmark, name: str, classes: Sequence[str] | None = None):
    """A benchmark from any of Avalanche's generators (or a user's own ``CLScenario``) in the
    one shape the platform's strategies expect: eager ``train_stream``/``test_stream`` of
    dataset experiences numbered 0..n-1 whose datasets carry task labels (0 where they have
    none), experiences that know their classes and task labels, and ``info`` (``classes``:
    the name of each label, when the benchmark does not carry its own ``info``)."""
    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
    from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    streams = []
    for kind, stream in (("training", "train"), ("test", "test")):
        experiences = list(getattr(benchmark, f"{stream}_stream"))  # lazy streams too
        if not experiences:
            raise UserError(f"stream {name} has no {kind} experience")
        streams.append(EagerCLStream(stream, [
            DatasetExperience(dataset=_task_aware(exp.dataset,
                                                  f"stream {name}: {kind} experience {i}"),
                              current_experience=i)
            for i, exp in enumerate(experiences)]))
    completed = with_task_labels(with_classes_timeline(CLScenario(streams)))
    info = getattr(benchmark, "info", None)
    completed.info = (info if isinstance(info, StreamInfo)
                      else _infer_info(completed, name, classes))
    return completed


def _infer_info(benchmark, name: str, classes: Sequence[str] | None = None) -> StreamInfo:
    """StreamInfo of a benchmark that does not carry one."""
    from clplatform.data import dataset_tensors
    targets, shape = set(), None
    for stream in (benchmark.train_stream, benchmark.test_stream):
        for exp in stream:
            try:
                labels = torch.as_tensor(list(exp.dataset.targets))
            except (TypeError, ValueError, RuntimeError):  # strings, None, mixed
                labels = torch.tensor(float("nan"))
            if labels.is_complex() or labels.dtype == torch.bool or (
                    torch.is_floating_point(labels) and not (
                        torch.isfinite(labels).all() and labels.eq(labels.round()).all())):
                raise UserError(f"stream {name}: labels must be integers >= 0")
            targets.update(labels.long().tolist())
            if shape is None:
                shape = tuple(dataset_tensors(exp.dataset)[0].shape[1:])
    if not targets or min(targets) < 0:
        raise UserError(f"stream {name}: labels must be integers >= 0")
    names = [str(c) for c in range(max(targets) + 1)]
    if classes is not None:
        names[:len(classes)] = [str(c) for c in classes]
    domain = all(len(exp.classes_in_this_experience) == len(targets)
                 for exp in benchmark.train_stream) and len(benchmark.train_stream) > 1
    return StreamInfo(name, "domain-incremental" if domain else "class-incremental", names,
                      shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _pair(value, what: str) -> tuple:
    """``(images, labels)`` of a returned dict, or a UserError naming what came instead."""
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        shape = (f"a {len(value)}-item {type(value).__name__}"
                 if isinstance(value, (tuple, list)) else f"a {type(value).__name__}")
        raise UserError(f"{what} is {shape}, not a pair (images, labels)")
    return tuple(value)


def callable_stream(reference: str, options: dict[str, Any], seed: int):
    """Build the benchmark returned by the user's function ``reference``. Whatever the
    function raises, or returns that is not a benchmark or a dict of data, is a UserError
    naming the function."""
    fn = _load_callable(reference)
    kwargs = {k: _literal(v) for k, v in options.items()}
    try:
        result = fn(**kwargs)
    except UserError as exc:  # e.g. from_arrays called inside
        raise UserError(f"{reference}: {exc}") from None
    except Exception as exc:  # noqa: BLE001  (the user's code: report, do not crash)
        raise UserError(f"{reference} raised {_first_line(exc)}") from None
    if isinstance(result, dict):
        if "train" not in result:
            raise UserError(f"{reference} returned a dict without 'train'")
        data = dict(result)
        x, y = _pair(data.pop("train"), f"'train' returned by {reference}")
        test = data.pop("test", None)
        if test is not None:
            test = _pair(test, f"'test' returned by {reference}")
        data.setdefault("seed", seed)
        data.setdefault("name", reference)
        try:
            return from_arrays(x, y, data.pop("domains", None), test=test, **data)
        except (TypeError, ValueError, KeyError) as exc:  # arguments or data from_arrays
            raise UserError(f"{reference} returned an unusable dict: "  # cannot take
                            f"{_first_line(exc)}") from None
    if not (hasattr(result, "train_stream") and hasattr(result, "test_stream")):
        raise UserError(f"{reference} returned a {type(result).__name__}, not an Avalanche "
                        "benchmark or a dict of train/test data")
    return complete_benchmark(result, reference)


__all__ = ["from_arrays", "FolderOptions", "callable_stream", "is_callable_reference"]
