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


# --------------------------------------------------------------------------- vit-mini
@dataclass(frozen=True)
class MiniPretrainRecipe:
    """Pre-training of ``vit-mini`` on ``mini-pretrain`` (sized for ~2 h on 2 idle cores:
    376k images x 6 epochs at ~340 images/s, estimated from measurements on a loaded
    machine, plus ~10 min to render the corpus once)."""
    epochs: int = 6
    batch_size: int = 256
    lr: float = 1e-3               # AdamW peak, after a linear warm-up, then cosine to min_lr
    min_lr: float = 1e-5
    warmup_epochs: float = 0.5
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    samples_per_class: int = 80    # rendered once (each in a font of the class, jittered)
    test_samples_per_class: int = 10
    fractals: int = 1000           # FractalDB-1k's number of categories
    glyph_classes: int = 0         # 0: every glyph class; k: k of them, evenly spaced
    shift: float = 0.125           # on-the-fly augmentation: translation, share of the side
    scale: tuple[float, float] = (0.8, 1.2)  # and zoom range (random crop / pad)
    seed: int = 0


#: a recipe for tests: a few classes, one short epoch (seconds)
QUICK_RECIPE = MiniPretrainRecipe(epochs=1, batch_size=32, samples_per_class=6,
                                  test_samples_per_class=3, fractals=4, glyph_classes=40,
                                  warmup_epochs=0.2)


def shipped_weights_path() -> Path:
    """Where the package holds vit-mini's pre-trained weights (package data)."""
    return Path(__file__).parent / "weights" / "vit-mini.safetensors"


def augment(x: torch.Tensor, generator: torch.Generator, shift: float,
            scale: tuple[float, float]) -> torch.Tensor:
    """Batched geometric augmentation of images in [0, 1] [B, 1, S, S]: a random zoom in
    ``scale`` and a translation up to ``shift`` of the side (black fills the border)."""
    import torch.nn.functional as F
    b = len(x)
    zoom = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    move = torch.empty(b, 2).uniform_(-2 * shift, 2 * shift, generator=generator)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom  # output -> input coordinates
    theta[:, :, 2] = move
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _lr_at(step: int, total: int, warmup: int, recipe: MiniPretrainRecipe) -> float:
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return recipe.min_lr + 0.5 * (recipe.lr - recipe.min_lr) * (1 + math.cos(math.pi * progress))


def pretrain_vit_mini(recipe: MiniPretrainRecipe = MiniPretrainRecipe(),
                      out: Path | None = None, progress: bool = True,
                      log=None) -> tuple[Path, float, dict]:
    """Train ``vit-mini`` on ``mini-pretrain``; write safetensors (no head) with metadata
    (recipe, architecture, pre-training test accuracy, corpus counts) to ``out`` (default:
    the shipped path). Returns (file, test accuracy, metadata)."""
    import json
    import time

    from safetensors.torch import save_file

    from clplatform.backbones import MiniViTArch, build_glyph_vit
    from clplatform.progress import StepProgress
    from clplatform.seeding import seed_everything
    from clplatform.streams.corpus import corpus_arrays

    seed_everything(recipe.seed)
    started = time.monotonic()
    data, names = corpus_arrays(recipe.samples_per_class, recipe.test_samples_per_class,
                                recipe.fractals, 32, recipe.seed,
                                glyph_classes=recipe.glyph_classes)
    x_train, y_train = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    x_test, y_test = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    n_fractals = sum(n.startswith("fractal:") for n in names)
    if log:
        log(f"corpus: {len(names) - n_fractals} glyph classes + {n_fractals} fractal "
            f"categories, {len(x_train)} training / {len(x_test)} test images "
            f"({time.monotonic() - started:.0f} s to render or read)")

    arch = MiniViTArch()
    model = build_glyph_vit(arch, num_classes=len(names))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n
             and "cls_token" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed"
                not in n and "cls_token" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    steps_per_epoch = math.ceil(len(x_train) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    warmup = max(1, round(recipe.warmup_epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(recipe.seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    steps = StepProgress(total, "pre-training vit-mini", unit="step", enabled=progress)
    step = 0
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            x = augment(x_train[idx].unsqueeze(1).float().div_(255), generator,
                        recipe.shift, recipe.scale)
            x = ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, warmup, recipe)
            loss = loss_fn(model(x), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            steps.step()
        steps.mark(f"epoch {epoch + 1}/{recipe.epochs}, loss {loss.item():.3f}")
    steps.close()
    accuracy = _accuracy(model, x_test, y_test)
    metadata = {"backbone": "vit-mini", "arch": dataclasses.asdict(arch),
                "recipe": dataclasses.asdict(recipe), "pretrain_test_accuracy": accuracy,
                "glyph_classes": len(names) - n_fractals, "fractal_classes": n_fractals,
                "train_images": len(x_train), "test_images": len(x_test),
                "train_seconds": round(time.monotonic() - started),
                "torch": torch.__version__}
    out = Path(out) if out else shipped_weights_path()
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.startswith("head.")}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    return out, accuracy, metadata


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy of a classifier on uint8 images (no augmentation)."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), 512):
            xb = (x[i:i + 512].unsqueeze(1).float().div(255) - 0.5) / 0.5
            correct += int((model(xb).argmax(1) == y[i:i + 512]).sum())
    return correct / max(1, len(x))


def weights_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a safetensors weights file written by :func:`pretrain_vit_mini`."""
    import json

    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
