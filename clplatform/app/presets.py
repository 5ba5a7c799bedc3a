"""Sweep presets: the comparisons of a paper, one name each (``clplat sweep --preset``).

A preset names the strategies of a published comparison; each runs with its own defaults,
which follow its official code (the paper's recipe), on the stream, backbone and seeds the
user chooses. Where the setting matches a published one, the comparison report shows the
published value beside the measured one (:mod:`clplatform.reports.published`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import UserError


@dataclass(frozen=True)
class Preset:
    name: str
    help: str
    strategies: tuple[str, ...]
    #: per strategy, values that replace its defaults (a hyper-parameter, else a training
    #: setting of that name); the command line's --set, --epochs, ... and --grid win
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


#: the comparators whose official 20-epoch recipes take over 90 s a run on 2 CPU cores
#: (epochs: a hyper-parameter of aper, ranpac, ease; a training setting of the others)
CPU_EPOCHS = {name: {"epochs": 5} for name in ("coda-prompt", "inflora", "aper", "ranpac",
                                               "ease")}

PRESETS = {p.name: p for p in (
    Preset("sema-table1", "SEMA (CVPR 2025) Table 1: L2P, DualPrompt, CODA-Prompt, SimpleCIL, "
           "APER with adapters, InfLoRA, SEMA",
           ("l2p", "dualprompt", "coda-prompt", "simplecil", "aper", "inflora", "sema")),
    Preset("sema-appendix", "the methods SEMA's appendix adds: EASE and RanPAC, beside "
           "SimpleCIL and SEMA", ("ease", "ranpac", "simplecil", "sema")),
    Preset("sema-table1-cpu", "sema-table1 on a CPU: 5 epochs instead of the official 20 "
           "for CODA-Prompt, InfLoRA and APER (their 20-epoch runs take over 90 s on 2 "
           "cores); every other setting as in sema-table1",
           ("l2p", "dualprompt", "coda-prompt", "simplecil", "aper", "inflora", "sema"),
           CPU_EPOCHS),
    Preset("sema-appendix-cpu", "sema-appendix on a CPU: 5 epochs instead of the official "
           "20 for EASE and RanPAC's phase 1; every other setting as in sema-appendix",
           ("ease", "ranpac", "simplecil", "sema"), CPU_EPOCHS),
)}


def preset_strategies(name: str) -> list[str]:
    """The strategies of preset ``name``; an unknown name is an error listing the valid
    ones."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return list(PRESETS[name].strategies)


def preset_overrides(name: str | None) -> dict[str, dict[str, Any]]:
    """Per strategy, the values preset ``name`` (None: no preset) sets over its defaults."""
    if name is None:
        return {}
    preset_strategies(name)  # an unknown name is an error
    return {k: dict(v) for k, v in PRESETS[name].overrides.items()}
