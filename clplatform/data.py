"""Datasets and tensors: reading a dataset into tensors once (evaluation sets, pre-training
data, SEMA's caches) and images (tensors, or any indexable source read per item) as an
Avalanche classification dataset."""
from __future__ import annotations

from contextlib import contextmanager
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


def crop_boxes(images: torch.Tensor, boxes, size: int, interpolation) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> uint8 [N, C, size, size]: each image's box
    (top, left, h, w, flip) resized to ``size`` (torchvision's tensor ``resized_crop``,
    antialiased) and flipped where asked."""
    from torchvision.transforms.v2 import functional as TF
    out = []
    for img, (top, left, h, w, flip) in zip(images, boxes):
        crop = TF.resized_crop(img, top, left, h, w, [size, size],
                               interpolation=interpolation, antialias=True)
        out.append(TF.horizontal_flip(crop) if flip else crop)
    return torch.stack(out) if out else images.new_zeros((0, images.shape[1], size, size))


class ExperienceImages:
    """An experience's images, held as uint8 (4x less than float) and converted to float in
    [0, 1] per read: stands in for the float tensor [N, C, H, W] a strategy indexed
    (``x[idx]`` with an index tensor, a list, a slice or an int; ``len(x)``; ``x.shape``).

    ``stored``: uint8 [N, C, H, W] (or float, kept as it is, when a stream's values are not
    k/255). ``augment`` (:class:`StoredAugment`, optional): each read of image i draws its
    k-th random crop + flip on the stored copy, seeded from (``salt``, i, k) — a new draw
    per epoch, deterministic for a run; ``random`` tells it. ``crop``: a centre crop of the
    stored copy for reads without ``augment`` (the eval view)."""

    def __init__(self, stored: torch.Tensor, augment: StoredAugment | None = None,
                 crop: int | None = None, salt: int = 0):
        self.stored, self.augment, self.crop, self.salt = stored, augment, crop, int(salt)
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
        return ExperienceImages(self.stored, None, self.augment.eval_crop)

    def pin_memory(self) -> "ExperienceImages":
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
        if device is not None:
            batch = batch.to(device, non_blocking=True)
        if batch.dtype == torch.uint8:
            batch = batch.float().div_(255.0)
        return batch[0] if single else batch

    def __getitem__(self, idx) -> torch.Tensor:
        return self.rows(idx)

    @staticmethod
    def cat(parts: list["ExperienceImages"]) -> "ExperienceImages":
        """Deterministic stores (the test stream) as one."""
        if any(p.random or p.crop is not None for p in parts):
            raise ValueError("only plain stores concatenate")
        dtype = torch.uint8 if all(p.dtype == torch.uint8 for p in parts) else torch.float
        return ExperienceImages(torch.cat([p.stored if p.dtype == dtype else
                                           p.stored.float().div_(255.0) for p in parts]))


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


def _current_transforms(dataset) -> list:
    """The x transforms of the current group in an Avalanche dataset's tree."""
    found = []
    groups = getattr(dataset, "_transform_groups", None)
    if groups is not None:
        for tg in (getattr(dataset, "_frozen_transform_groups", None), groups):
            t = tg[groups.current_group] if tg is not None else None
            if t is not None:
                found += list(getattr(t, "transforms", [t]))[:1]
    for sub in getattr(dataset, "_datasets", []):
        found += _current_transforms(sub)
    return found


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
        stored, y = dataset_tensors(dataset.replace_current_transform_group(augment.store),
                                    batch_size)
        salt = int(torch.randint(2**31 - 1, ()).item())
        return ExperienceImages(stored, augment, salt=salt), y
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
