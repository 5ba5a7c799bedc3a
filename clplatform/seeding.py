"""One seed drives Python, NumPy and torch (through Avalanche's RNG manager)."""
from __future__ import annotations


def seed_everything(seed: int) -> None:
    from avalanche.training.determinism.rng_manager import RNGManager
    RNGManager.set_random_seeds(seed)
