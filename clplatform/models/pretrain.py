"""Pre-training of the default backbone ``vit-glyphs`` on the stream ``glyphs-pretrain``.

Greek and Cyrillic characters (none a Latin look-alike) rendered in the bundled fonts; a
supervised classifier is trained and its head dropped. The weights are cached under a hash
of the recipe, so every machine builds the same backbone once (70 s on 2 idle cores, several
minutes on a loaded machine: progress shows the time left, measured).
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from clplatform.cache import atomic_path, cache_file, stable_hash
from clplatform.data import dataset_tensors
from clplatform.errors import UserError


@dataclass(frozen=True)
class PretrainRecipe:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    samples_per_class: int = 80
    test_samples_per_class: int = 20
    seed: int = 0


def cached_weights_path(recipe: PretrainRecipe) -> Path:
    """Where the weights of ``recipe`` are cached (a hash of architecture and recipe)."""
    from clplatform.streams.render import RENDER_VERSION
    from clplatform.backbones import GlyphViTArch
    key = {"arch": dataclasses.asdict(GlyphViTArch()), "recipe": dataclasses.asdict(recipe),
           "render": RENDER_VERSION}
    return cache_file("backbones", f"vit-glyphs-{stable_hash(key)}.pt")  # refuses a folder


def adopt_cached_weights(source_root: str | os.PathLike,
                         recipe: PretrainRecipe = PretrainRecipe()) -> Path | None:
    """Copy the weights of ``recipe`` from another cache folder (``source_root``: the user's
    cache, for the tests' private one) into this cache when that file is complete (it loads
    into the architecture, every key and shape) and was built by ``recipe`` (its file name
    is the hash of architecture, recipe and rendering; its stored recipe must match too).
    Returns the path in this cache (also when it was there already), else None."""
    target = cached_weights_path(recipe)
    if target.is_file():
        return target
    source = Path(source_root) / "backbones" / target.name
    if not source.is_file() or not _built_by(source, recipe):
        return None
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def _built_by(path: Path, recipe: PretrainRecipe) -> bool:
    """Complete (it loads into the architecture, every key and shape), built by ``recipe``
    and holding its pre-training accuracy."""
    from clplatform.backbones import build_glyph_vit, load_weights
    saved = _saved_by(path, recipe)
    if saved is None or "pretrain_test_accuracy" not in saved:
        return False
    try:
        load_weights(build_glyph_vit(), path)
    except UserError:  # truncated tensors, or another architecture
        return False
    return True


def _saved_by(path: Path, recipe: PretrainRecipe) -> dict | None:
    """The file's contents when it loads and holds the weights of ``recipe``, else None: the
    cheap check of every run (no model built; the backbone builder checks keys and
    shapes)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (truncated zip, empty file, not torch's format)
        return None
    if (isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict)
            and saved.get("recipe") == dataclasses.asdict(recipe)):
        return saved
    return None


def pretrain_glyph_vit(recipe: PretrainRecipe = PretrainRecipe(), out: Path | None = None,
                       progress: bool = True) -> tuple[Path, float]:
    """Train ``vit-glyphs`` on ``glyphs-pretrain``; returns (weights file, test accuracy).

    ``progress``: a bar on a terminal, else lines on stderr with the time left (measured on
    the first steps, then after every epoch)."""
    from clplatform.backbones import build_glyph_vit
    from clplatform.progress import StepProgress
    from clplatform.seeding import seed_everything
    from clplatform.streams import StreamSource

    seed_everything(recipe.seed)
    bm = StreamSource("glyphs-pretrain", {"samples_per_class": recipe.samples_per_class,
                                          "test_samples_per_class":
                                          recipe.test_samples_per_class}).build(recipe.seed)
    x_train, y_train = dataset_tensors(bm.train_stream[0].dataset)
    x_test, y_test = dataset_tensors(bm.test_stream[0].dataset)
    x_train, x_test = (x_train - 0.5) / 0.5, (x_test - 0.5) / 0.5  # the backbone's mean/std

    model = build_glyph_vit(num_classes=bm.info.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr,
                                  weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(recipe.seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    steps = StepProgress(recipe.epochs * steps_per_epoch, "pre-training vit-glyphs",
                         unit="step", enabled=progress)
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            steps.step()
        steps.mark(f"epoch {epoch + 1}/{recipe.epochs}, loss {loss.item():.3f}")
    steps.close()
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(x_test[i:i + 512]).argmax(1) for i in range(0, len(x_test), 512)])
    accuracy = (pred == y_test).float().mean().item()

    out = Path(out) if out else cached_weights_path(recipe)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    with atomic_path(out) as tmp:
        torch.save({"state_dict": state, "recipe": dataclasses.asdict(recipe),
                    "pretrain_test_accuracy": accuracy,
                    "classes": "".join(bm.info.classes)}, tmp)
    return out, accuracy


def pretrained_glyph_vit_path() -> Path:
    """The cached pre-trained weights, built now (with a note on stderr) if missing."""
    recipe = PretrainRecipe()
    path = cached_weights_path(recipe)
    if path.is_file() and _saved_by(path, recipe) is None:  # truncated, corrupt: it is a cache
        print(f"clplat: warning: the cached backbone {path} cannot be read; building it "
              f"again", file=sys.stderr, flush=True)
        path.unlink()
    if not path.is_file():
        print(f"building the default backbone vit-glyphs (first use: {recipe.epochs} epochs "
              f"of pre-training, 70 s on 2 idle CPU cores; the time left on this machine "
              f"follows)...", file=sys.stderr, flush=True)
        path, accuracy = pretrain_glyph_vit(recipe)
        print(f"vit-glyphs pre-trained: {accuracy:.1%} test accuracy on glyphs-pretrain; "
              f"cached at {path}", file=sys.stderr)
    return path
