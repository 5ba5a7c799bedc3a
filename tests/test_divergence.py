"""Training numerics: EWC's importances and the divergence check every run carries."""
import json

import pytest
import torch
from click.testing import CliRunner

import clplatform
from clplatform.app.cli import cli
from clplatform.divergence import TrainingDiverged
from clplatform import create_backbone, create_strategy, create_stream
from clplatform.seeding import seed_everything
from clplatform.strategies.base import StrategyContext, TrainSettings

from conftest import TINY_GLYPHS

TINY = [arg for k, v in TINY_GLYPHS.items() for arg in ("--stream-opt", f"{k}={v}")]


def test_ewc_importances_are_those_of_the_training_loss(pretrained_backbone):
    """Avalanche computes EWC's squared gradients in eval mode, where batch norm uses its
    frozen running statistics: the first convolution of vit-glyphs then gets importances
    of 155 here (1.1e4 after the README example's first experience, a penalty SGD cannot
    follow: that run diverged). clplatform's EWC
    measures the training-mode loss the penalty is added to, and leaves the running
    statistics as they were."""
    seed_everything(0)
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=3, batch_size=16, lr=0.01))
    strategy = create_strategy("ewc", ctx, ewc_lambda=0.5)
    strategy.train(bm.train_stream[0], eval_streams=[])
    plugin = [p for p in strategy.plugins if hasattr(p, "importances")][0]
    importances = {k: float(v.data.max()) for k, v in plugin.importances[0].items()}
    stem = "backbone.model.patch_embed.backbone.0.weight"
    assert 0 < importances[stem] < 2 and max(importances.values()) < 2, importances  # 0.2
    # the same pass in Avalanche's eval mode gives the stiff importances
    buffers = {k: v.clone() for k, v in strategy.model.named_buffers()}
    eval_mode = super(type(plugin), plugin).compute_importances(
        strategy.model, strategy._criterion, strategy.optimizer,
        bm.train_stream[0].dataset, "cpu", 16)
    # 155 vs 0.2 with one machine's pre-trained backbone, 14.7 vs 0.37 with another's
    # (README, Known problems): over an order of magnitude stiffer in eval mode
    assert float(eval_mode[stem].data.max()) > 10 * importances[stem]
    plugin.compute_importances(strategy.model, strategy._criterion, strategy.optimizer,
                               bm.train_stream[0].dataset, "cpu", 16)
    for k, v in strategy.model.named_buffers():  # running statistics untouched
        assert torch.equal(v, buffers[k]), k


def test_a_diverging_run_fails_with_experience_and_iteration(runs_dir, pretrained_backbone):
    """lr=100 (the largest accepted) blows naive fine-tuning up within the first experience:
    the run is recorded failed with the reason, the command ends with one line and exit 2,
    and no accuracy of a diverged model is recorded."""
    result = CliRunner().invoke(cli, ["run", "--strategy", "naive", *TINY, "--lr", "100",
                                      "--epochs", "1", "--quiet", "--out", str(runs_dir)],
                                prog_name="clplat")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("clplat: error: training diverged in experience 0 at "
                               "iteration "), lines
    [run_dir] = list(runs_dir.iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed"
    assert record["reason"].startswith("TrainingDiverged: training diverged in experience 0")
    accuracy = clplatform.load_run(run_dir).accuracy
    assert accuracy.empty or set(accuracy["train_exp"]) <= {-1}  # no diverged model's
    assert not (run_dir / "summary.json").exists()


def test_the_check_sees_non_finite_parameters_at_the_end_of_an_epoch(pretrained_backbone):
    """A parameter turned NaN outside the loss (here by hand, when the epoch ends) is caught
    by the check at the end of the epoch, naming the experience and iteration."""
    from avalanche.core import SupervisedPlugin

    from clplatform.divergence import divergence_check

    class Poison(SupervisedPlugin):
        def after_training_epoch(self, strategy, **kwargs):
            next(strategy.model.parameters()).data.view(-1)[0] = float("nan")

    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=1, batch_size=64, lr=0.01),
                          plugins=[Poison(), divergence_check()])
    strategy = create_strategy("naive", ctx)
    with pytest.raises(TrainingDiverged, match=r"experience 0 after iteration 2 \(end of an "
                                               r"epoch\): a parameter is not finite"):
        strategy.train(bm.train_stream[0], eval_streams=[])
