"""Progress without a terminal (a log), pre-training estimates, and the test cache re-using
the user's cached backbone."""
import dataclasses
import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import clplatform
from clplatform.progress import ProgressPlugin, StepProgress
from clplatform import create_backbone, create_strategy, create_stream
from clplatform.strategies.base import StrategyContext, TrainSettings

from conftest import TINY_GLYPHS

ROOT = Path(__file__).resolve().parents[1]
TRAINED = re.compile(r"^clplat: experience (\d+)/3 trained: 2 epochs, [\d.]+ s, "
                     r"loss ([\d.]+) \((\d+:\d\d) elapsed\)$")


def test_a_run_logging_to_a_file_prints_a_line_per_experience(runs_dir, pretrained_backbone,
                                                              capsys):
    """stderr captured (not a terminal): before, tqdm printed nothing at all there."""
    clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, epochs=2, seed=0,
                   out=runs_dir, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("clplat: experience")]
    matches = [TRAINED.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches] == [1, 2, 3]
    assert all(0 < float(m.group(2)) < 10 for m in matches)


def test_log_lines_carry_epoch_iteration_and_the_mean_loss(pretrained_backbone):
    """interval=0: a line at every iteration and epoch; the losses they show are the running
    and per-epoch means of the losses the strategy computed."""
    from avalanche.core import SupervisedPlugin

    class Recorder(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.losses: list[list[float]] = []

        def before_training_epoch(self, strategy, **kwargs):
            self.losses.append([])

        def after_training_iteration(self, strategy, **kwargs):
            self.losses[-1].append(strategy.loss.item())

    log, recorder = io.StringIO(), Recorder()
    progress = ProgressPlugin(enabled=True, file=log, interval=0)
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=2, batch_size=16, lr=0.01), plugins=[progress, recorder])
    strategy = create_strategy("naive", ctx)
    progress.start_experience(0, 3)
    strategy.train(bm.train_stream[0], eval_streams=[])
    lines = log.getvalue().splitlines()
    per_epoch = len(recorder.losses[0])
    assert per_epoch > 1 and len(recorder.losses) == 2
    iterations = [line for line in lines if "iteration" in line]
    assert len(iterations) == 2 * per_epoch
    last = re.search(rf"epoch 2/2, iteration {per_epoch}/{per_epoch}, loss ([\d.]+)",
                     iterations[-1])
    mean = sum(recorder.losses[1]) / per_epoch
    assert last and float(last.group(1)) == pytest.approx(mean, abs=1e-4)
    done = [line for line in lines if " done" in line]
    assert [re.search(r"epoch (\d)/2 done", line).group(1) for line in done] == ["1", "2"]
    trained = re.search(r"experience 1/3 trained: 2 epochs, [\d.]+ s, loss ([\d.]+)", lines[-1])
    assert trained and float(trained.group(1)) == pytest.approx(mean, abs=1e-4)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_quiet_prints_nothing_and_a_terminal_gets_bars_not_lines():
    buffer = io.StringIO()
    quiet = ProgressPlugin(enabled=False, file=buffer, interval=0)
    quiet.start_experience(0, 3)
    quiet.close()
    assert buffer.getvalue() == ""
    terminal = _Terminal()
    bars = ProgressPlugin(enabled=True, file=terminal, interval=0)
    bars.start_experience(1, 3)
    bars.close()
    assert "experiences" in terminal.getvalue() and "clplat:" not in terminal.getvalue()


def test_step_progress_estimates_the_time_left_from_the_steps_measured():
    now = [0.0]
    log = io.StringIO()
    steps = StepProgress(10, "pre-training", file=log, interval=1000, estimate_after=3,
                         clock=lambda: now[0])
    for epoch in range(2):
        for _ in range(5):
            now[0] += 2.0  # 2 s a step
            steps.step()
        steps.mark(f"epoch {epoch + 1}/2, loss 1.000")
    assert log.getvalue().splitlines() == [
        "pre-training: estimate, 2/10 steps, about 0:16 left (0:04 elapsed)",
        "pre-training: epoch 1/2, loss 1.000, 5/10 steps, about 0:10 left (0:10 elapsed)",
        "pre-training: epoch 2/2, loss 1.000, 10/10 steps, about 0:00 left (0:20 elapsed)"]


def test_pretraining_without_a_terminal_logs_its_epochs(tmp_path, capsys):
    from clplatform.models.pretrain import PretrainRecipe, pretrain_glyph_vit
    recipe = PretrainRecipe(epochs=2, samples_per_class=2, test_samples_per_class=1)
    path, accuracy = pretrain_glyph_vit(recipe, out=tmp_path / "w.pt", progress=True)
    assert path.is_file() and 0 <= accuracy <= 1
    lines = capsys.readouterr().err.splitlines()
    epochs = [line for line in lines if re.match(
        r"pre-training vit-glyphs: epoch \d/2, loss [\d.]+, \d+/\d+ steps, "
        r"about \d+:\d\d left \(\d+:\d\d elapsed\)$", line)]
    assert len(epochs) == 2, lines


# ---- the test cache re-uses the user's backbone
def _fake_backbone_file(path: Path, recipe_changes: dict | None = None) -> Path:
    """A file in the format pre-training writes, with random weights (fast to make)."""
    from clplatform.backbones import build_glyph_vit
    from clplatform.models.pretrain import PretrainRecipe
    recipe = dataclasses.replace(PretrainRecipe(), **(recipe_changes or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": build_glyph_vit().state_dict(),
                "recipe": dataclasses.asdict(recipe), "pretrain_test_accuracy": 0.5,
                "classes": "ab"}, path)
    return path


@pytest.fixture
def other_caches(tmp_path, monkeypatch):
    """(a user's cache folder, this process's cache) with the default recipe's file name."""
    from clplatform.models.pretrain import PretrainRecipe, cached_weights_path
    monkeypatch.setenv("CLPLATFORM_CACHE", str(tmp_path / "private"))
    target = cached_weights_path(PretrainRecipe())
    user = tmp_path / "user"
    return user, user / "backbones" / target.name, target


def test_a_complete_backbone_of_the_recipe_is_adopted(other_caches):
    from clplatform.models.pretrain import adopt_cached_weights
    user, source, target = other_caches
    _fake_backbone_file(source)
    assert adopt_cached_weights(user) == target
    assert target.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("defect", ["missing", "truncated", "other recipe", "other model"])
def test_an_incomplete_or_foreign_backbone_is_not_adopted(other_caches, defect):
    from clplatform.models.pretrain import adopt_cached_weights
    user, source, target = other_caches
    if defect != "missing":
        _fake_backbone_file(source, {"epochs": 3} if defect == "other recipe" else None)
    if defect == "truncated":
        source.write_bytes(source.read_bytes()[:100_000])
    if defect == "other model":
        state = torch.load(source, weights_only=True)
        state["state_dict"].pop("blocks.5.mlp.fc2.weight")
        torch.save(state, source)
    assert adopt_cached_weights(user) is None
    assert not target.exists()


def test_a_fresh_test_session_uses_the_users_cached_backbone(tmp_path):
    """The fixture, in a pytest session of its own with no CLPLATFORM_TEST_CACHE: it must
    find the backbone in the user's cache (XDG_CACHE_HOME) instead of pre-training (the
    timeout would stop that)."""
    user_file = tmp_path / "xdg" / "clplatform" / "backbones" / "x.pt"
    probe = tmp_path / "test_probe.py"
    probe.write_text(textwrap.dedent("""
        def test_probe(pretrained_backbone, user_cache, private_cache):
            path, accuracy = pretrained_backbone
            assert accuracy == 0.5
            assert path.parent.parent == private_cache != user_cache
            assert path.read_bytes() == (user_cache / "backbones" / path.name).read_bytes()
    """))
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLPLATFORM_TEST_CACHE", "CLPLATFORM_CACHE")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    name = subprocess.run(
        [sys.executable, "-c", "from clplatform.models.pretrain import PretrainRecipe, "
         "cached_weights_path; print(cached_weights_path(PretrainRecipe()).name)"],
        env={**env, "CLPLATFORM_CACHE": str(tmp_path / "scratch")}, cwd=ROOT,
        capture_output=True, text=True, check=True).stdout.strip()
    _fake_backbone_file(user_file.with_name(name))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, "--timeout", "120", str(probe)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@pytest.mark.parametrize("defect", ["truncated", "empty"])
def test_a_corrupt_cached_backbone_is_built_again(other_caches, monkeypatch, capsys, defect):
    """The weights file is a cache: one that cannot be read is rebuilt with a warning, not
    a one-line error on every run."""
    from clplatform.models import pretrain
    _user, _source, target = other_caches
    _fake_backbone_file(target)
    target.write_bytes(target.read_bytes()[:100_000] if defect == "truncated" else b"")
    built = []

    def fake_pretrain(recipe):  # what pre-training writes, without its minute
        built.append(recipe)
        return _fake_backbone_file(target), 0.5
    monkeypatch.setattr(pretrain, "pretrain_glyph_vit", fake_pretrain)
    assert pretrain.pretrained_glyph_vit_path() == target
    assert len(built) == 1 and "cannot be read; building it again" in capsys.readouterr().err
    assert pretrain.pretrained_glyph_vit_path() == target and len(built) == 1  # valid now
