"""Checkpoints after every experience, and resuming a run from its last one.

A checkpoint (``RUN_DIR/checkpoint.pt``) holds state dicts and plain values only — model,
RNG states, the evaluator's records and bookkeeping, the strategy's own state — written
atomically and read back with ``torch.load(weights_only=True)``: nothing is unpickled.

Strategies declare support when registered (``resumable=True``); for them ``clplat run
--resume RUN_DIR`` rebuilds the run from its resolved configuration, restores the checkpoint
and continues after the last finished experience, into the same directory. A run that
completes deletes its checkpoint.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import atomic_path
from .errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"
# keys config.json adds to a stream's options (derived from the built stream)
DERIVED_STREAM_KEYS = ("name", "scenario", "classes", "experiences_in_stream")


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": list(internal),
                       "gauss_next": gauss_next}}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def optimizer_state(strategy) -> dict[str, Any] | None:
    """An Avalanche template's optimizer (single parameter group, parameters tracked by name
    in ``optimized_param_id``): its state dict and the names of its parameters, in order."""
    names = getattr(strategy, "optimized_param_id", None)
    optimizer = strategy.optimizer
    if not names or len(optimizer.param_groups) != 1:
        return None
    by_id = {id(p): n for n, p in names.items()}
    return {"names": [by_id[id(p)] for p in optimizer.param_groups[0]["params"]],
            "state": optimizer.state_dict()}


def restore_optimizer(strategy, saved: dict[str, Any]) -> None:
    """The same parameters in the same order as when saved, then the saved state."""
    named = dict(strategy.model.named_parameters())
    params = [named[n] for n in saved["names"]]
    strategy.optimizer.param_groups[0]["params"] = params
    strategy.optimized_param_id = {n: named[n] for n in saved["names"]}
    strategy.optimizer.load_state_dict(saved["state"])


def save(run_dir: Path, prepared, experience: int) -> None:
    from .store import json_safe
    state = {"experience": experience, "model": prepared.strategy.model.state_dict(),
             "rng": rng_state(), "evaluator": json_safe(prepared.evaluator.checkpoint_state())}
    optimizer = optimizer_state(prepared.strategy)
    if optimizer is not None:
        state["optimizer"] = optimizer
    with atomic_path(run_dir / CHECKPOINT_FILE) as tmp:
        torch.save(state, tmp)


def load(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"no checkpoint in {run_dir}: nothing finished to resume from")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  (a damaged file is the user's problem to see)
        raise UserError(f"corrupt checkpoint {path}: {exc}") from None


def spec_from_config(config: dict[str, Any]):
    """The RunSpec that reproduces a run from its resolved config.json."""
    from .runner import RunSpec
    strategy, stream, backbone = (dict(config[k]) for k in ("strategy", "stream", "backbone"))
    train = config["train"]
    spec = RunSpec()
    spec.strategy = strategy.pop("name")
    spec.strategy_options = strategy
    spec.stream = stream["name"]
    spec.stream_options = {k: v for k, v in stream.items() if k not in DERIVED_STREAM_KEYS}
    if "domains" in stream and not stream["domains"]:
        spec.stream_options.pop("domains")
    spec.backbone = backbone.pop("name")
    spec.backbone_options = backbone
    from .registry import STRATEGIES
    unused = STRATEGIES.get(spec.strategy).extra.get("unused_train", ())
    spec.train = {"seed": train["seed"], "device": train.get("device_requested", "auto"),
                  "flops": train.get("flops", "sampled"), "out": train["out"],
                  **{k: train[k] for k in ("epochs", "batch_size", "lr") if k not in unused}}
    return spec
