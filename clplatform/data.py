"""Datasets and tensors: reading a dataset into tensors once (evaluation sets, pre-training
data, SEMA's caches) and images (tensors, or any indexable source read per item) as an
Avalanche classification dataset."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import Dataset, TensorDataset


_READ_WORKERS = [0]


@contextmanager
def reading_workers(workers: int):
    """Within the block, :func:`dataset_tensors` reads with ``workers`` processes
    (``--data-workers``; the runner sets it for a run)."""
    before = _READ_WORKERS[0]
    _READ_WORKERS[0] = workers
    try:
        yield
    finally:
        _READ_WORKERS[0] = before


def dataset_tensors(dataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x, y) of an Avalanche/torch dataset as two tensors, read once in order (by
    :func:`reading_workers` processes: images of file-backed streams decode in parallel)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=_READ_WORKERS[0])
    xs, ys = [], []
    for batch in loader:
        xs.append(batch[0])
        ys.append(batch[1])
    return torch.cat(xs), torch.cat(ys).long()


class LabelledImages(Dataset):
    """``(images[i], labels[i])``: ``images`` is any indexable source read one item at a
    time (image files, uint8 arrays), so nothing is decoded before it is used."""

    def __init__(self, images: Any, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 image [C, H, W] -> float in [0, 1] (the same values as a whole batch / 255)."""
    return x.float().div_(255.0)


def classification_dataset(x: Any, y: torch.Tensor,
                           transforms: Mapping[str, Callable] | None = None):
    """An Avalanche classification dataset over images ``x`` and labels ``y``, with targets
    and task labels 0.

    ``x``: a float tensor [N, C, H, W] (used as it is), a uint8 tensor (converted to float
    in [0, 1] per item, so only the uint8 copy is held), or any indexable source read per
    item (e.g. :class:`clplatform.streams.files.ImageFiles`). ``transforms``: Avalanche
    transform groups ``{"train": f, "eval": g}`` applied to each image; the training
    template switches to ``eval`` for evaluation (``dataset.eval()``).
    Task-aware (``task_set``), as Avalanche's regularisation strategies (LwF, ...) expect.
    """
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import (
        TaskAwareSupervisedClassificationDataset)
    from avalanche.benchmarks.utils.transform_groups import TransformGroups
    y = torch.as_tensor(y).long()
    if torch.is_tensor(x) and x.dtype == torch.uint8 and transforms is None:
        transforms = {"train": uint8_to_float, "eval": uint8_to_float}
    source = TensorDataset(x, y) if torch.is_tensor(x) else LabelledImages(x, y)
    return TaskAwareSupervisedClassificationDataset(
        [source],
        transform_groups=TransformGroups(dict(transforms)) if transforms else None,
        data_attributes=[DataAttribute(y.tolist(), "targets"),
                         DataAttribute([0] * len(y), "targets_task_labels",
                                       use_in_getitem=True)])


# ------------------------------------------------------------------ an experience's images
class StoredAugment:
    """A stream's random training transform, marked so that :func:`experience_images` can
    keep an experience as uint8 and draw the augmentation again at every read.

    Called on a PIL image it is ``full`` (the stream's own transform, unchanged: the
    per-item data-loader path of the other strategies stays as it was). ``store``: the
    deterministic part, PIL image -> uint8 tensor [3, R, R] (the stored copy);
    ``size``, ``scale``, ``ratio``, ``interpolation``: the random-resized-crop drawn on
    that copy (torchvision's ``RandomResizedCrop.get_params``), then a horizontal flip with
    probability ``flip``; ``eval_crop``: the centre crop of the stored copy that gives
    the eval transform's image (prototypes, closed-form heads)."""

    def __init__(self, full: Callable, store: Callable, size: int, scale: tuple,
                 ratio: tuple, flip: float, interpolation, eval_crop: int):
        self.full, self.store = full, store
        self.size, self.scale, self.ratio, self.flip = size, tuple(scale), tuple(ratio), flip
        self.interpolation, self.eval_crop = interpolation, eval_crop

    def __call__(self, img):
        return self.full(img)

    @property
    def transforms(self) -> list:
        """The steps of ``full`` (a torchvision ``Compose``)."""
        return self.full.transforms

    def __repr__(self) -> str:
        return f"StoredAugment({self.full!r})"


def draw_boxes(augment: StoredAugment, height: int, width: int, seeds: list[int]
               ) -> list[tuple[int, int, int, int, bool]]:
    """One (top, left, h, w, flip) per seed: torchvision's ``RandomResizedCrop.get_params``
    on a ``height`` x ``width`` image and a flip with probability ``augment.flip``, under
    ``torch.manual_seed(seed)`` (the global generator is left as it was)."""
    from torchvision.transforms import RandomResizedCrop
    probe = torch.empty(0, height, width)
    out = []
    with torch.random.fork_rng(devices=[]):
        for seed in seeds:
            torch.manual_seed(seed)
            box = RandomResizedCrop.get_params(probe, list(augment.scale), list(augment.ratio))
            out.append((*box, bool(torch.rand(1).item() < augment.flip)))
    return out


def _pil_filter(interpolation):
    """(support, filter) of PIL's resampling filter for ``interpolation`` (Resample.c), or
    None for one this module does not batch."""
    from torchvision.transforms import InterpolationMode as M

    def triangle(x):
        x = x.abs()
        return (1 - x).clamp(min=0)

    def cubic(x, a=-0.5):
        x = x.abs()
        return torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                           torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a,
                                       torch.zeros_like(x)))
    return {M.BILINEAR: (1.0, triangle), M.BICUBIC: (2.0, cubic)}.get(interpolation)


def _resample_weights(starts: torch.Tensor, lengths: torch.Tensor, in_size: int, out: int,
                      interpolation) -> torch.Tensor:
    """[N, out, in_size]: row i of image n resamples the span [start, start + length) of an
    axis to ``out`` pixels with PIL's antialiased filter coefficients (``precompute_coeffs``:
    the filter widened by the scale when shrinking, only pixels of the span, normalised)."""
    support, kernel = _pil_filter(interpolation)
    scale = lengths.double() / out                                        # [N]
    filterscale = scale.clamp(min=1.0)
    centers = (torch.arange(out, dtype=torch.float64, device=starts.device) + 0.5
               )[None] * scale[:, None]                                    # [N, out]
    pos = torch.arange(in_size, dtype=torch.float64, device=starts.device)[None, None] \
        - starts.double()[:, None, None]                                   # [N, 1, in]
    w = kernel((pos - centers[..., None] + 0.5) / filterscale[:, None, None])
    inside = (pos >= 0) & (pos < lengths.double()[:, None, None])
    w = w * inside * ((pos - centers[..., None]).abs() < support * filterscale[:, None, None]
                      + 0.5)
    return (w / w.sum(-1, keepdim=True).clamp(min=1e-12)).float()


def crop_boxes(images: torch.Tensor, boxes, size: int, interpolation,
               batched: bool | None = None) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> uint8 [N, C, size, size]: each image's box
    (top, left, h, w, flip) resized to ``size`` and flipped where asked, on the images'
    device. Bilinear and bicubic (the random-resized-crops of the streams): one batched
    pair of matrix products with PIL's antialiased filter coefficients, horizontal pass
    first and rounded to uint8 in between as PIL does (a pixel differs from PIL's by at
    most a level or two: PIL's fixed-point arithmetic); other modes: torchvision's
    per-image ``resized_crop`` (antialiased; within one level of PIL). ``batched``: None
    batches on a GPU only (a CPU core runs the per-image path ~10x faster: the matrix
    products are dense)."""
    from torchvision.transforms.v2 import functional as TF
    if not len(boxes):
        return images.new_zeros((0, images.shape[1], size, size))
    if batched is None:
        batched = images.is_cuda
    if _pil_filter(interpolation) is None or not batched:
        out = []
        for img, (top, left, h, w, flip) in zip(images, boxes):
            crop = TF.resized_crop(img, top, left, h, w, [size, size],
                                   interpolation=interpolation, antialias=True)
            out.append(TF.horizontal_flip(crop) if flip else crop)
        return torch.stack(out)
    b = torch.tensor([box[:4] for box in boxes], dtype=torch.long, device=images.device)
    flip = torch.tensor([box[4] for box in boxes], dtype=torch.bool, device=images.device)
    wx = _resample_weights(b[:, 1], b[:, 3], images.shape[-1], size, interpolation)
    wx = torch.where(flip[:, None, None], wx.flip(1), wx)  # a flip: columns reversed
    wy = _resample_weights(b[:, 0], b[:, 2], images.shape[-2], size, interpolation)
    rows = torch.einsum("nchw,nkw->nchk", images.float(), wx).round_().clamp_(0, 255)
    return torch.einsum("nih,nchk->ncik", wy, rows).round_().clamp_(0, 255).to(torch.uint8)


class ExperienceImages:
    """An experience's images, held as uint8 (4x less than float) and converted to float in
    [0, 1] per read: stands in for the float tensor [N, C, H, W] a strategy indexed
    (``x[idx]`` with an index tensor, a list, a slice or an int; ``len(x)``; ``x.shape``).

    ``stored``: uint8 [N, C, H, W] (or float, kept as it is, when a stream's values are not
    k/255). ``augment`` (:class:`StoredAugment`, optional): each read of image i draws its
    k-th random crop + flip on the stored copy, seeded from (``salt``, i, k) — a new draw
    per epoch, deterministic for a run; ``random`` tells it. ``crop``: a centre crop of the
    stored copy for reads without ``augment`` (the eval view). ``mapped``: ``stored`` is
    memory-mapped from the image cache (never copied whole into pinned memory)."""

    def __init__(self, stored: torch.Tensor, augment: StoredAugment | None = None,
                 crop: int | None = None, salt: int = 0, mapped: bool = False):
        self.stored, self.augment, self.crop, self.salt = stored, augment, crop, int(salt)
        self.mapped = mapped
        self.draws = torch.zeros(len(stored), dtype=torch.long)

    @property
    def random(self) -> bool:
        return self.augment is not None

    def __len__(self) -> int:
        return len(self.stored)

    @property
    def shape(self) -> torch.Size:
        side = self.augment.size if self.augment else self.crop
        if side is None:
            return self.stored.shape
        return torch.Size((len(self), self.stored.shape[1], side, side))

    @property
    def dtype(self) -> torch.dtype:
        return self.stored.dtype

    def eval_view(self) -> "ExperienceImages":
        """The same stored images read without the random transform (the eval view)."""
        if self.augment is None:
            return self
        return ExperienceImages(self.stored, None, self.augment.eval_crop,
                                mapped=self.mapped)

    def pin_memory(self) -> "ExperienceImages":
        """A view with the stored copy in pinned memory (asynchronous copies to CUDA); itself
        when the copy is memory-mapped: pinning would read the whole file into memory."""
        if self.mapped:
            return self
        view = ExperienceImages(self.stored.pin_memory(), self.augment, self.crop, self.salt)
        view.draws = self.draws
        return view

    def is_pinned(self) -> bool:
        return self.stored.is_pinned()

    def _index(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            return torch.arange(len(self))[idx]
        return torch.as_tensor(idx, dtype=torch.long).cpu()

    def rows(self, idx, device=None) -> torch.Tensor:
        """Images ``idx`` as float [k, C, H, W] on ``device`` (uint8 copied, then converted
        there)."""
        single = isinstance(idx, int) or (torch.is_tensor(idx) and idx.dim() == 0)
        index = self._index(idx).reshape(-1)
        batch = self.stored[index]
        if device is not None:  # uint8 to the device: crops, flips and float there
            batch = batch.to(device, non_blocking=True)
        if self.augment is not None:
            k = self.draws[index]
            self.draws[index] += 1
            seeds = [hash((self.salt, int(i), int(j))) & 0x7FFFFFFF
                     for i, j in zip(index.tolist(), k.tolist())]
            boxes = draw_boxes(self.augment, batch.shape[-2], batch.shape[-1], seeds)
            batch = crop_boxes(batch, boxes, self.augment.size, self.augment.interpolation)
        elif self.crop is not None:
            from torchvision.transforms.v2 import functional as TF
            batch = TF.center_crop(batch, [self.crop, self.crop])
        if batch.dtype == torch.uint8:
            batch = batch.float().div_(255.0)
        return batch[0] if single else batch

    def __getitem__(self, idx) -> torch.Tensor:
        return self.rows(idx)

    @staticmethod
    def cat(parts: list["ExperienceImages"]) -> "ExperienceImages":
        """Stores as one: deterministic ones (the test stream), or the training experiences
        of one stream with a random transform (the same :class:`StoredAugment`: every read
        draws anew, from a new salt)."""
        augment = parts[0].augment
        if any(p.crop is not None or p.augment is not augment for p in parts):
            raise ValueError("only plain stores, or stores of one random transform, "
                             "concatenate")
        salt = int(torch.randint(2**31 - 1, ()).item()) if augment is not None else 0
        if any(p.mapped or not torch.is_tensor(p.stored) for p in parts):
            # some read from files or mapped from the image cache: indexed in place
            return ExperienceImages(_Concat([p.stored for p in parts]), augment, salt=salt)
        dtype = torch.uint8 if all(p.dtype == torch.uint8 for p in parts) else torch.float
        return ExperienceImages(torch.cat([p.stored if p.dtype == dtype else
                                           p.stored.float().div_(255.0) for p in parts]),
                                augment, salt=salt)


class _Concat:
    """Stored images (tensors, :class:`FileImages`) one after another, indexed as one."""

    def __init__(self, parts: list):
        self.parts = parts
        self.ends = torch.tensor([len(p) for p in parts]).cumsum(0)
        self.shape = torch.Size((int(self.ends[-1]), *parts[0].shape[1:]))
        self.dtype = torch.uint8

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        index = torch.as_tensor(index).reshape(-1)
        part = torch.bucketize(index, self.ends, right=True)
        out = torch.zeros((len(index), *self.shape[1:]), dtype=torch.uint8)
        for k in part.unique().tolist():
            mask = part == k
            start = int(self.ends[k - 1]) if k else 0
            rows = self.parts[k][index[mask] - start]
            out[mask] = rows if rows.dtype == torch.uint8 else _as_uint8(rows)
        return out

    def pin_memory(self) -> "_Concat":
        return self

    def is_pinned(self) -> bool:
        return False


def rows_on(x, idx, device) -> torch.Tensor:
    """``x[idx]`` on ``device``: an :class:`ExperienceImages` copies its uint8 rows and
    converts them there; a tensor is copied (asynchronously when pinned)."""
    if isinstance(x, ExperienceImages):
        return x.rows(idx, device)
    return x[idx].to(device, non_blocking=True)


def _as_uint8(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as uint8 when every value is exactly k/255 (``ToTensor``'s output), else None."""
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        return None
    u = x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return u if torch.equal(u.float().div_(255.0), x) else None


def _current_transforms(dataset, group: str | None = None) -> list:
    """The x transforms of the current group in an Avalanche dataset's tree: the group of
    the outermost dataset, which Avalanche applies at every level (``.eval()`` switches the
    outer one only)."""
    found = []
    if group is None and hasattr(dataset, "_flat_data"):  # an AvalancheDataset
        group = dataset._flat_data._transform_groups.current_group
    groups = getattr(dataset, "_transform_groups", None)
    if groups is not None:
        group = group or groups.current_group
        for tg in (getattr(dataset, "_frozen_transform_groups", None), groups):
            t = tg[group] if tg is not None else None
            if t is not None:
                found += list(getattr(t, "transforms", [t]))[:1]
    for sub in getattr(dataset, "_datasets", []):
        found += _current_transforms(sub, group)
    return found


# ------------------------------------------------------------------ the image cache on disk
_IMAGE_CACHE: list = [None]  # (folder, budget in bytes) while a run uses --image-cache


@contextmanager
def image_cache(folder: str | None, gib: float):
    """Within the block, :func:`experience_images` keeps the decoded uint8 images of file
    streams in memory-mapped ``.npy`` files under ``folder`` (``--image-cache``) while all the
    files there stay within ``gib`` GiB (``--image-cache-gib``; beyond, an experience is
    decoded from its files at every read: :class:`FileImages`); None: no cache (the uint8
    images held in memory)."""
    before = _IMAGE_CACHE[0]
    _IMAGE_CACHE[0] = (str(folder), int(gib * 2**30)) if folder else None
    try:
        yield
    finally:
        _IMAGE_CACHE[0] = before


def _leaf_items(dataset) -> list[tuple[Any, int]]:
    """(leaf source, index) of every item of an Avalanche dataset (through its subsets and
    concatenations), in order."""
    out = []
    for i in range(len(dataset)):
        node, j = dataset, i
        while hasattr(node, "_flat_data") or hasattr(node, "_get_idx"):
            if hasattr(node, "_flat_data"):  # an AvalancheDataset: its FlatData
                node = node._flat_data
                continue
            k, j = node._get_idx(j)
            node = node._datasets[k]
        out.append((node, j))
    return out


def _file_key(dataset, transform) -> dict | None:
    """What the decoded images of ``dataset`` depend on: its files (paths, sizes, mtimes,
    in order) and ``transform``; None when its images are not read from files."""
    paths = []
    for leaf, j in _leaf_items(dataset):
        files = getattr(getattr(leaf, "images", None), "paths", None)
        if files is None:
            return None
        paths.append(files[j])
    stats = [os.stat(p) for p in paths]
    return {"paths": paths, "sizes": [st.st_size for st in stats],
            "mtimes": [st.st_mtime_ns for st in stats], "transform": repr(transform)}


class _NotCached(Exception):
    """The images of an experience are not written to the image cache (read into memory)."""


class _OverBudget(_NotCached):
    """The images of an experience do not fit the image cache's budget (read from the
    files at every read)."""


class FileImages:
    """The uint8 images of a file-backed dataset decoded at every read (``--image-cache``
    beyond its budget): stands in for the stored tensor of :class:`ExperienceImages`
    (``len``, ``[index tensor]``, ``shape``, ``dtype``); nothing is held."""

    def __init__(self, dataset, shape: tuple):
        self.dataset, self.shape, self.dtype = dataset, torch.Size(shape), torch.uint8

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        index = torch.as_tensor(index).reshape(-1).tolist()
        return torch.stack([_as_uint8(torch.as_tensor(self.dataset[i][0])) for i in index]) \
            if index else torch.zeros((0, *self.shape[1:]), dtype=torch.uint8)

    def pin_memory(self) -> "FileImages":
        return self

    def is_pinned(self) -> bool:
        return False


def _check_budget(folder: str, budget: int, need: int, count: int) -> None:
    """:class:`_NotCached` (with a note) when ``need`` more bytes would take the cache files
    in ``folder`` over ``budget``."""
    used = sum(f.stat().st_size for f in Path(folder).glob("images-*.npy"))
    if used + need > budget:
        print(f"clplat: note: the image cache {folder} holds {used / 2**30:.3g} GiB; this "
              f"experience's {count} images need {need / 2**30:.3g} GiB more than "
              f"--image-cache-gib {budget / 2**30:g} allows: read from their files at every "
              "read instead",
              file=sys.stderr)
        raise _OverBudget


def _cached_store(dataset, transform, batch_size: int):
    """(uint8 images, labels) of ``dataset`` read through ``transform`` (the current one
    when None), from the image cache (memory-mapped) when one is set and the images are
    files; written there on first use when it fits the budget, else read from the files at
    every read (:class:`FileImages`). None: no cache to use (the caller reads into
    memory).

    The global generator advances as by the one data-loader pass of a read into memory
    (its base seed, one int64 draw) whether the images were decoded or found: records
    with the cache equal those without."""
    if _IMAGE_CACHE[0] is None:
        return None
    with torch.random.fork_rng(devices=[]):
        found = _read_or_write_cache(dataset, transform, batch_size)
    if found is not None:
        torch.empty((), dtype=torch.int64).random_()  # the loader pass it stands for
    return found


def _read_or_write_cache(dataset, transform, batch_size: int):
    import numpy as np

    from .cache import atomic_path, read_cached, stable_hash
    folder, budget = _IMAGE_CACHE[0]
    key = _file_key(dataset, transform if transform is not None
                    else _current_transforms(dataset))
    if key is None or not key["paths"]:
        return None
    path = Path(folder) / f"images-{stable_hash(key, 20)}.npy"
    labels_path = path.with_suffix(".labels.npy")
    found = read_cached(path, lambda p: np.load(p, mmap_mode="c"))
    labels = read_cached(labels_path, np.load) if found is not None else None
    if found is not None and labels is not None:
        return torch.from_numpy(found), torch.from_numpy(labels).long()
    source = dataset.replace_current_transform_group(transform) if transform else dataset
    loader = torch.utils.data.DataLoader(source, batch_size=batch_size, shuffle=False,
                                         num_workers=_READ_WORKERS[0])
    ys = []
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            for batch in loader:  # np.save's format, the pixels written batch by batch
                u = _as_uint8(batch[0])
                if u is None:
                    raise _NotCached  # not k/255: nothing to cache as uint8
                if not ys:
                    shape = (len(dataset), *u.shape[1:])
                    _check_budget(folder, budget, int(np.prod(shape)), len(dataset))
                    np.lib.format.write_array_header_2_0(
                        fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
                fh.write(u.contiguous().numpy().tobytes())
                ys.append(batch[1])
    except _OverBudget:
        y = torch.as_tensor(list(dataset.targets)).long()
        return FileImages(source, (len(dataset), *u.shape[1:])), y
    except _NotCached:
        return None
    y = torch.cat(ys).long()
    with atomic_path(labels_path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, y.numpy())
    return torch.from_numpy(np.load(path, mmap_mode="c")), y


def experience_images(dataset, batch_size: int = 512
                      ) -> tuple[ExperienceImages, torch.Tensor]:
    """(images, labels) of an experience, for the strategies that train from tensors and for
    the evaluator: as :func:`dataset_tensors` reads them, but held as uint8
    (:class:`ExperienceImages`) when the values are k/255.

    A dataset whose current transform is a :class:`StoredAugment` (a random training
    transform of an image stream) is read once through its ``store`` transform, and every
    read then draws the augmentation anew (seeded from the global generator: the run's seed).
    """
    marked = [t for t in _current_transforms(dataset) if isinstance(t, StoredAugment)]
    if marked:
        augment = marked[0]
        cached = _cached_store(dataset, augment.store, batch_size)
        stored, y = cached if cached is not None else dataset_tensors(
            dataset.replace_current_transform_group(augment.store), batch_size)
        salt = int(torch.randint(2**31 - 1, ()).item())
        return ExperienceImages(stored, augment, salt=salt,
                                mapped=cached is not None and torch.is_tensor(stored)), y
    cached = _cached_store(dataset, None, batch_size)
    if cached is not None:
        return ExperienceImages(cached[0], mapped=torch.is_tensor(cached[0])), cached[1]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=_READ_WORKERS[0])
    xs, ys, exact = [], [], True
    for batch in loader:
        u = _as_uint8(batch[0]) if exact else None
        if exact and u is None:
            exact = False
            xs = [p.float().div_(255.0) for p in xs]
        xs.append(u if exact else batch[0])
        ys.append(batch[1])
    if not xs:
        return ExperienceImages(torch.empty(0)), torch.empty(0, dtype=torch.long)
    return ExperienceImages(torch.cat(xs)), torch.cat(ys).long()
