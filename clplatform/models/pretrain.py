"""Pre-training of the backbone ``vit-glyphs`` on the stream ``glyphs-pretrain``.

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
        print(f"building the backbone vit-glyphs (first use: {recipe.epochs} epochs "
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


def state_path_for(out: str | os.PathLike) -> Path:
    """The resumable state of a pre-training writing ``out``: ``<out>.state.pt``."""
    return Path(f"{out}.state.pt")


#: what a state file is (checked on resume besides recipe and architecture)
STATE_FORMAT = "clplatform vit-mini pretrain state 1"


def load_pretrain_state(path: Path, recipe: "MiniPretrainRecipe") -> dict:
    """The state saved at ``path`` if it belongs to ``recipe`` and vit-mini's architecture;
    otherwise a UserError naming the difference (nothing is written)."""
    from clplatform.backbones import MiniViTArch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (truncated, not torch's format)
        raise UserError(f"cannot resume from {path}: not a readable state file "
                        f"({type(exc).__name__}); remove it to start again") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"cannot resume from {path}: not a vit-mini pre-training state; "
                        "remove it to start again")
    for key, ours in (("arch", dataclasses.asdict(MiniViTArch())),
                      ("recipe", dataclasses.asdict(recipe))):
        theirs = state.get(key) or {}
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if diff:
            what = ", ".join(f"{k}={theirs.get(k)!r} (now {ours.get(k)!r})" for k in diff)
            raise UserError(f"cannot resume from {path}: it belongs to another {key} ({what}); "
                            "remove it to start again, or give another --out")
    return state


def pretrain_vit_mini(recipe: MiniPretrainRecipe = MiniPretrainRecipe(),
                      out: Path | None = None, progress: bool = True,
                      log=None, checkpoint_every: float | None = 600.0, resume: bool = False,
                      stop_after_steps: int | None = None) -> tuple[Path, float, dict]:
    """Train ``vit-mini`` on ``mini-pretrain``; write safetensors (no head) with metadata
    (recipe, architecture, pre-training test accuracy, corpus counts) to ``out`` (default:
    the shipped path). Returns (file, test accuracy, metadata).

    Resumable: every ``checkpoint_every`` seconds (None: never) and on SIGTERM/SIGINT the
    whole training state (model, optimizer, step, data-order/augmentation generator, torch's
    RNG, the current epoch's order) is written atomically to ``<out>.state.pt``; a state
    file there is resumed from (``resume``: it must exist), giving the same weights as an
    uninterrupted run (same thread count). A signal (:class:`clplatform.interrupt.StopRequest`:
    the end of the current step is the safe point), or ``stop_after_steps`` (a test hook,
    as a SIGTERM), raises :class:`clplatform.interrupt.RunInterrupted` once the state is
    saved. The state file is removed when the weights are written."""
    import json
    import signal
    import time

    from safetensors.torch import save_file

    from clplatform.backbones import MiniViTArch, build_glyph_vit
    from clplatform.interrupt import RunInterrupted, StopRequest
    from clplatform.progress import StepProgress
    from clplatform.seeding import seed_everything
    from clplatform.streams.corpus import corpus_arrays

    out = Path(out) if out else shipped_weights_path()
    state_path = state_path_for(out)
    if state_path.is_dir():
        raise UserError(f"{state_path} is a folder, in the way of the pre-training state")
    saved = load_pretrain_state(state_path, recipe) if state_path.is_file() else None
    if resume and saved is None:
        raise UserError(f"--resume: there is no state file {state_path} to resume from")

    seed_everything(recipe.seed)
    started = time.monotonic()
    data, names = corpus_arrays(recipe.samples_per_class, recipe.test_samples_per_class,
                                recipe.fractals, 32, recipe.seed,
                                glyph_classes=recipe.glyph_classes)
    x_train, y_train = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    x_test, y_test = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    n_fractals = sum(n.startswith("fractal:") for n in names)
    corpus = {"glyph_classes": len(names) - n_fractals, "fractal_classes": n_fractals,
              "train_images": len(x_train), "test_images": len(x_test)}
    if log:
        log(f"corpus: {len(names) - n_fractals} glyph classes + {n_fractals} fractal "
            f"categories, {len(x_train)} training / {len(x_test)} test images "
            f"({time.monotonic() - started:.0f} s to render or read)")
    if saved is not None and saved["corpus"] != corpus:
        raise UserError(f"cannot resume from {state_path}: it was trained on another corpus "
                        f"({saved['corpus']}, now {corpus}); remove it to start again")

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
    step, order, seconds_before = 0, None, 0.0
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        step, seconds_before = saved["step"], saved["train_seconds"]
        order = saved["order"] if step % steps_per_epoch else None
        if log:
            log(f"pre-training vit-mini: resumed at step {step}/{total} from {state_path}")

    def save_state() -> None:
        state = {"format": STATE_FORMAT, "arch": dataclasses.asdict(arch),
                 "recipe": dataclasses.asdict(recipe), "corpus": corpus, "step": step,
                 "epoch": step // steps_per_epoch, "lr": _lr_at(min(step, total - 1), total,
                                                                warmup, recipe),
                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                 "order": order, "train_seconds": seconds_before + time.monotonic() - started}
        with atomic_path(state_path) as tmp:
            torch.save(state, tmp)

    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    steps = StepProgress(total, "pre-training vit-mini", unit="step", enabled=progress,
                         start=step)
    last_save = time.monotonic()
    with StopRequest() as stop:
        for epoch in range(step // steps_per_epoch, recipe.epochs):
            model.train()
            if order is None:
                order = torch.randperm(len(x_train), generator=generator)
            for start in range(step % steps_per_epoch * recipe.batch_size, len(order),
                               recipe.batch_size):
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
                if step % steps_per_epoch == 0:
                    order = None  # the next epoch draws its own
                    steps.mark(f"epoch {epoch + 1}/{recipe.epochs}, loss {loss.item():.3f}")
                if step == stop_after_steps:
                    stop.requested = signal.SIGTERM
                if stop.requested or (checkpoint_every is not None
                                      and time.monotonic() - last_save >= checkpoint_every):
                    save_state()
                    last_save = time.monotonic()
                if stop.requested:
                    steps.close()
                    print(f"clplat: pre-training stopped at step {step}/{total}; its state "
                          f"is in {state_path}: run the same command again to resume",
                          file=sys.stderr, flush=True)
                    raise RunInterrupted(stop.requested)
    steps.close()
    accuracy = _accuracy(model, x_test, y_test)
    metadata = {"backbone": "vit-mini", "arch": dataclasses.asdict(arch),
                "recipe": dataclasses.asdict(recipe), "pretrain_test_accuracy": accuracy,
                **corpus,
                "train_seconds": round(seconds_before + time.monotonic() - started),
                "torch": torch.__version__}
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.startswith("head.")}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    state_path.unlink(missing_ok=True)
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
