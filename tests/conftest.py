"""Shared fixtures: a private cache for generated data and the pre-trained backbone."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny versions of the streams: every strategy end to end in seconds.
TINY_GLYPHS = {"experiences": 3, "samples_per_class": 6, "test_samples_per_class": 3}


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
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
def pretrained_backbone(private_cache) -> tuple[Path, float]:
    """The real default backbone, built once per session (about a minute on 2 cores)."""
    import torch

    from clplatform.pretrain import pretrained_glyph_vit_path
    path = pretrained_glyph_vit_path()
    accuracy = torch.load(path, weights_only=True)["pretrain_test_accuracy"]
    return path, accuracy


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"
