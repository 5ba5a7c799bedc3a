"""Sweep presets: the comparisons of a paper, one name each (``clplat sweep --preset``).

A preset names the strategies of a published comparison; each runs with its own defaults,
which follow its official code (the paper's recipe), on the stream, backbone and seeds the
user chooses. Where the setting matches a published one, the comparison report shows the
published value beside the measured one (:mod:`clplatform.reports.published`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Preset:
    name: str
    help: str
    strategies: tuple[str, ...]


PRESETS = {p.name: p for p in (
    Preset("sema-table1", "SEMA (CVPR 2025) Table 1: L2P, DualPrompt, CODA-Prompt, SimpleCIL, "
           "APER with adapters, InfLoRA, SEMA",
           ("l2p", "dualprompt", "coda-prompt", "simplecil", "aper", "inflora", "sema")),
    Preset("sema-appendix", "the methods SEMA's appendix adds: EASE and RanPAC, beside "
           "SimpleCIL and SEMA", ("ease", "ranpac", "simplecil", "sema")),
)}


def preset_strategies(name: str) -> list[str]:
    """The strategies of preset ``name``; an unknown name is an error listing the valid
    ones."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return list(PRESETS[name].strategies)
