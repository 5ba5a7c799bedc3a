"""Checkpoints after every experience, and resuming a run from its last one.

A checkpoint (``RUN_DIR/checkpoint.pt``) holds state dicts and plain values only — model,
optimizer, RNG states, the evaluator's records and bookkeeping, the strategy's state — written
atomically and read back with ``torch.load(weights_only=True)``: nothing is unpickled.

The strategy's state has three parts:
- the template's clock (Avalanche plugins key their state by experience counter);
- the state of the Avalanche plugins it uses (``PLUGIN_STATE``: EWC importances and saved
  parameters, SI trajectories, LwF's previous model, replay buffers, A-GEM memories) and a
  Cumulative template's dataset. Buffers are kept as the ids of their samples: every training
  dataset carries a ``sample_id`` attribute (``tag_samples``), which Avalanche keeps through
  subsets and concatenations, so a buffer is rebuilt from the stream exactly, in order;
- the strategy's own state, ``checkpoint_state()`` (a hook of
  :class:`clplatform.contract.StrategyHooks`, read through ``contract.hooks``), given back
  to ``restore_checkpoint_state(state, experiences)`` before the model's weights are loaded
  (it regrows what the strategy added: adapters, prompts, quantizers, counters).

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

from .contract import hooks
from .errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"


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
    if hooks(strategy).builds_own_optimizers:  # within experiences: nothing to keep between
        return None
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


# ----------------------------------------------------------------------------- samples
SAMPLE_ID = "sample_id"


def tag_samples(stream) -> None:
    """Give every training sample of ``stream`` its id (position in the concatenated stream)
    as the ``sample_id`` data attribute (not part of the batches)."""
    offset = 0
    for experience in stream:
        size = len(experience.dataset)
        # DatasetExperience.dataset is read-only; the tagged dataset holds the same samples
        experience._dataset = experience.dataset.update_data_attribute(
            SAMPLE_ID, list(range(offset, offset + size)))
        offset += size


def sample_ids(dataset) -> torch.Tensor:
    if len(dataset) == 0:
        return torch.zeros(0, dtype=torch.long)
    if not hasattr(dataset, SAMPLE_ID):
        raise UserError("a strategy buffer holds samples that are not from the stream: "
                        "it cannot be checkpointed")
    return torch.as_tensor(list(getattr(dataset, SAMPLE_ID)), dtype=torch.long)


class Samples:
    """The stream's training samples by id (what ``tag_samples`` numbered)."""

    def __init__(self, stream):
        self.stream = stream
        self._all = None

    def __call__(self, ids: torch.Tensor):
        from avalanche.benchmarks.utils import concat_datasets
        if self._all is None:
            self._all = concat_datasets([e.dataset for e in self.stream])
        return self._all.subset(ids.tolist())


# ----------------------------------------------------------------------------- plugins
def _params_state(params: dict) -> dict:
    """An Avalanche ``{name: ParamData}`` dict as tensors."""
    return {k: {"name": p.name, "data": p.data} for k, p in params.items()}


def _params(state: dict, device) -> dict:
    from avalanche.training.utils import ParamData
    return {k: ParamData(v["name"], init_tensor=v["data"].to(device), device=device)
            for k, v in state.items()}


def _ewc_state(plugin) -> dict:
    return {"importances": {t: _params_state(d) for t, d in plugin.importances.items()},
            "saved_params": {t: _params_state(d) for t, d in plugin.saved_params.items()}}


def _ewc_restore(plugin, state, strategy, samples) -> None:
    for key in ("importances", "saved_params"):
        table = getattr(plugin, key)
        table.clear()
        table.update({int(t): _params(d, strategy.device) for t, d in state[key].items()})


def _si_state(plugin) -> dict:
    return {"ewc": [_params_state(d) for d in plugin.ewc_data],
            "syn": {k: _params_state(d) for k, d in plugin.syn_data.items()}}


def _si_restore(plugin, state, strategy, samples) -> None:
    device = plugin.device(strategy)
    plugin.ewc_data = tuple(_params(d, device) for d in state["ewc"])
    plugin.syn_data = {k: _params(d, device) for k, d in state["syn"].items()}


def _lwf_state(plugin) -> dict:
    lwf = plugin.lwf
    return {"expcount": lwf.expcount,
            "prev_model": None if lwf.prev_model is None else lwf.prev_model.state_dict(),
            "prev_classes": {int(t): sorted(int(c) for c in cs)
                             for t, cs in lwf.prev_classes_by_task.items()}}


def _lwf_restore(plugin, state, strategy, samples) -> None:
    import copy
    lwf = plugin.lwf
    lwf.expcount = int(state["expcount"])
    lwf.prev_model = None
    if state["prev_model"] is not None:
        lwf.prev_model = copy.deepcopy(strategy.model)
        load_model_state(lwf.prev_model, state["prev_model"])
    lwf.prev_classes_by_task.clear()
    lwf.prev_classes_by_task.update({t: set(cs) for t, cs in state["prev_classes"].items()})


def _buffer_state(policy) -> dict:
    from avalanche.training.storage_policy import (BalancedExemplarsBuffer,
                                                   ReservoirSamplingBuffer)
    if isinstance(policy, BalancedExemplarsBuffer):
        return {"max_size": policy.max_size,
                "groups": {k: _buffer_state(g) for k, g in policy.buffer_groups.items()},
                "num_exps": getattr(policy, "_num_exps", None),
                "seen_classes": sorted(int(c) for c in getattr(policy, "seen_classes", ()))}
    if isinstance(policy, ReservoirSamplingBuffer):
        return {"max_size": policy.max_size, "ids": sample_ids(policy.buffer),
                "weights": policy._buffer_weights}
    raise UserError(f"a {type(policy).__name__} replay buffer cannot be checkpointed")


def _restore_buffer(state: dict, samples, policy=None):
    from avalanche.training.storage_policy import ReservoirSamplingBuffer
    if "groups" in state:
        policy.max_size = state["max_size"]
        policy.buffer_groups = {k: _restore_buffer(g, samples)
                                for k, g in state["groups"].items()}
        if state["num_exps"] is not None:
            policy._num_exps = state["num_exps"]
        if hasattr(policy, "seen_classes"):
            policy.seen_classes = set(state["seen_classes"])
        return policy
    group = ReservoirSamplingBuffer(state["max_size"])
    if len(state["ids"]):
        group.buffer = samples(state["ids"])
    group._buffer_weights = state["weights"]
    return group


def _replay_state(plugin) -> dict:
    return _buffer_state(plugin.storage_policy)


def _replay_restore(plugin, state, strategy, samples) -> None:
    _restore_buffer(state, samples, plugin.storage_policy)


def _agem_state(plugin) -> dict:
    return {"buffers": [sample_ids(b) for b in plugin.buffers]}


def _agem_restore(plugin, state, strategy, samples) -> None:
    from avalanche.benchmarks.utils.data_loader import GroupBalancedInfiniteDataLoader
    plugin.buffers = [samples(ids) for ids in state["buffers"]]
    if plugin.buffers:  # as AGEMPlugin.update_memory leaves it (the iterator is lazy)
        plugin.buffer_dataloader = GroupBalancedInfiniteDataLoader(
            plugin.buffers, batch_size=plugin.sample_size // len(plugin.buffers),
            num_workers=0, pin_memory=False, persistent_workers=False)
        plugin.buffer_dliter = iter(plugin.buffer_dataloader)


def _plugin_handlers() -> list:
    """(Avalanche plugin class, save, restore) for the plugins whose state is checkpointed."""
    from avalanche.training.plugins import (AGEMPlugin, EWCPlugin, LwFPlugin, ReplayPlugin,
                                            SynapticIntelligencePlugin)
    return [(EWCPlugin, _ewc_state, _ewc_restore),
            (SynapticIntelligencePlugin, _si_state, _si_restore),
            (LwFPlugin, _lwf_state, _lwf_restore),
            (ReplayPlugin, _replay_state, _replay_restore),
            (AGEMPlugin, _agem_state, _agem_restore)]


CLOCK_FIELDS = ("train_iterations", "train_exp_counter", "train_exp_epochs",
                "train_exp_iterations", "train_epoch_iterations", "total_iterations")


def strategy_state(strategy) -> dict[str, Any]:
    state: dict[str, Any] = {"clock": {k: getattr(strategy.clock, k) for k in CLOCK_FIELDS},
                             "plugins": {}}
    handlers = _plugin_handlers()
    for plugin in strategy.plugins:
        for cls, save_fn, _ in handlers:
            if isinstance(plugin, cls):
                state["plugins"][cls.__name__] = save_fn(plugin)
    cumulative = getattr(strategy, "dataset", None)  # Avalanche's Cumulative template
    if cumulative is not None:
        state["dataset"] = sample_ids(cumulative)
    state["own"] = hooks(strategy).checkpoint_state()
    return state


def restore_strategy(strategy, state: dict[str, Any], samples: Samples,
                     experiences: list) -> None:
    """Everything of ``strategy_state`` except what needs the model's weights loaded first
    (see ``restore_plugins``)."""
    for k, v in state["clock"].items():
        setattr(strategy.clock, k, int(v))
    if "dataset" in state:
        strategy.dataset = samples(state["dataset"])
    hooks(strategy).restore_checkpoint_state(state.get("own", {}), experiences)


def restore_plugins(strategy, state: dict[str, Any], samples: Samples) -> None:
    handlers = _plugin_handlers()
    for plugin in strategy.plugins:
        for cls, _, restore_fn in handlers:
            if isinstance(plugin, cls) and cls.__name__ in state["plugins"]:
                restore_fn(plugin, state["plugins"][cls.__name__], strategy, samples)


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict``, first giving buffers that grow (statistics windows, codebooks)
    the saved shape; a mismatch of parameters is a clear error."""
    buffers = dict(model.named_buffers())
    for name, value in state.items():
        current = buffers.get(name)
        if current is not None and current.shape != value.shape:
            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            module._buffers[leaf] = torch.empty(value.shape, dtype=value.dtype,
                                                device=current.device)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"the checkpoint does not fit the rebuilt model: "
                        f"{str(exc).splitlines()[0]}") from None


# ----------------------------------------------------------------------------- files
def save(run_dir: Path, strategy, evaluator, experience: int) -> None:
    """The state after ``experience`` of ``strategy`` and of the run's ``evaluator`` (its
    records and bookkeeping). Serialized in memory first, then written atomically with its
    space reserved: the previous checkpoint stays until the new one is complete and renamed
    onto it, and a failure (disk full) names this file."""
    import io

    from .cache import write_bytes
    from .store import json_safe
    state = {"experience": experience, "model": strategy.model.state_dict(),
             "strategy": strategy_state(strategy),
             "rng": rng_state(), "evaluator": json_safe(evaluator.checkpoint_state())}
    optimizer = optimizer_state(strategy)
    if optimizer is not None:
        state["optimizer"] = optimizer
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(Path(run_dir) / CHECKPOINT_FILE, buffer.getbuffer())


# what every checkpoint holds, and the type of each part
REQUIRED = {"experience": int, "model": dict, "strategy": dict, "rng": dict, "evaluator": dict}


def load(run_dir: Path) -> dict[str, Any]:
    """The checkpoint's state, read without unpickling anything; a damaged, unsafe or
    malformed file is a one-line error naming it."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"no checkpoint in {run_dir}: no experience of this run finished; "
                        "start it again")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001  (a damaged file is the user's problem to see)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        if lines and lines[0].startswith("Weights only load failed"):
            # torch's advice (load it with weights_only=False) is the wrong one here
            lines = [line for line in lines[1:] if "weights_only" not in line
                     and not line.startswith("Check the documentation")] or lines
            if "global" in lines[0].lower():  # it would import and call something
                raise UserError(f"unsafe checkpoint {path}: refused, it holds more than "
                                f"plain data ({lines[0]})") from None
        raise UserError(f"corrupt checkpoint {path}: "
                        f"{lines[0] if lines else type(exc).__name__}") from None
    if not isinstance(state, dict):
        raise UserError(f"corrupt checkpoint {path}: holds a {type(state).__name__}, not "
                        "a checkpoint's dict")
    for key, kind in REQUIRED.items():
        if key not in state:
            raise UserError(f"corrupt checkpoint {path}: no {key!r} in it")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise UserError(f"corrupt checkpoint {path}: {key!r} is a "
                            f"{type(state[key]).__name__}, not a {kind.__name__}")
    return state


def restore(run_dir: Path, strategy, train_stream, evaluator) -> int:
    """Load the checkpoint of ``run_dir`` into the rebuilt ``strategy`` (trained on
    ``train_stream``) and the run's ``evaluator``; returns the first experience still to
    train. Whatever in it does not fit the rebuilt run is a one-line error naming the file."""
    path = Path(run_dir) / CHECKPOINT_FILE
    state = load(run_dir)
    experiences = len(train_stream)
    if not 0 <= state["experience"] < experiences:
        raise UserError(f"corrupt checkpoint {path}: experience {state['experience']} is not "
                        f"one of the stream's {experiences}")
    try:
        return _restore(state, strategy, train_stream, evaluator)
    except UserError as exc:
        raise UserError(f"checkpoint {path}: {exc}") from None
    except (LookupError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"corrupt checkpoint {path}: {type(exc).__name__}"
                        + (f": {first}" if first else "")) from None


def _restore(state: dict[str, Any], strategy, train_stream, evaluator) -> int:
    """Continue after the checkpoint's experience: the model regrows what it had grown
    (dynamic heads, the strategy's own modules), then weights, plugin and optimizer states,
    records and RNG states come back."""
    from avalanche.models.dynamic_modules import avalanche_model_adaptation
    done = int(state["experience"])
    experiences = list(train_stream)[:done + 1]
    samples = Samples(train_stream)
    model = strategy.model
    for experience in experiences:
        avalanche_model_adaptation(model, experience)
    restore_strategy(strategy, state["strategy"], samples, experiences)
    load_model_state(model, state["model"])
    restore_plugins(strategy, state["strategy"], samples)
    if "optimizer" in state:
        restore_optimizer(strategy, state["optimizer"])
    evaluator.restore(state["evaluator"])
    set_rng_state(state["rng"])
    return done + 1
