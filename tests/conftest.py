"""Shared fixtures: a private cache for generated data and the pre-trained backbone."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

# Tiny versions of the streams: every strategy end to end in seconds.
TINY_GLYPHS = {"experiences": 3, "samples_per_class": 6, "test_samples_per_class": 3}

# Runs that name no backbone use vit-glyphs here (the default, vit-mini, costs ~5x the
# FLOPs): the suite's times stay as they were. Subprocesses (README commands) inherit it;
# the tests of the default itself remove it (tests/test_default_backbone.py).
os.environ["CLPLATFORM_BACKBONE"] = "vit-glyphs"


@pytest.fixture(scope="session")
def user_cache() -> Path:
    """The cache a user's runs fill (not written by the tests)."""
    from clplatform.cache import cache_root
    return cache_root()


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory, user_cache) -> Path:
    """All caching goes to CLPLATFORM_TEST_CACHE (to reuse one) or a fresh temporary folder."""
    path = Path(os.environ.get("CLPLATFORM_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    old = os.environ.get("CLPLATFORM_CACHE")
    os.environ["CLPLATFORM_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CLPLATFORM_CACHE", None)
    else:
        os.environ["CLPLATFORM_CACHE"] = old


@pytest.fixture(scope="session")
def pretrained_backbone(private_cache, user_cache) -> tuple[Path, float]:
    """The real vit-glyphs (the suite's default backbone): a copy of the user's cached one
    when that one is complete and built by the current recipe, else built once per session
    (70 s on 2 idle cores)."""
    import torch

    from clplatform.models.pretrain import adopt_cached_weights, pretrained_glyph_vit_path
    adopt_cached_weights(user_cache)
    path = pretrained_glyph_vit_path()
    accuracy = torch.load(path, weights_only=True)["pretrain_test_accuracy"]
    return path, accuracy


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


@contextlib.contextmanager
def stopped_after(experience: int):
    """Runs started inside stop with a SIGTERM right after the checkpoint of ``experience``
    is written (as a signal between experiences would); the block must raise
    RunInterrupted."""
    import signal

    from clplatform import checkpoint
    from clplatform.interrupt import RunInterrupted
    save = checkpoint.save

    def save_then_stop(run_dir, strategy, evaluator, done):
        save(run_dir, strategy, evaluator, done)
        if done == experience:
            raise RunInterrupted(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint, "save", save_then_stop)
        with pytest.raises(RunInterrupted):
            yield
