"""Every strategy end to end on a tiny stream, with the real (pre-trained) default backbone."""
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import clplatform
from clplatform.registry import STRATEGIES

from conftest import TINY_GLYPHS, stopped_after

BASELINES = ["naive", "ewc", "lwf", "si", "replay", "agem", "cumulative", "joint",
             "linear-probe", "simplecil", "sema", "prompt", "qprompt", "coda-prompt",
             "dualprompt", "l2p", "inflora"]


def test_every_registered_strategy_is_tested_here():
    # lftl needs a domain stream: tests/test_lftl.py runs it end to end; aper, ease and
    # ranpac run end to end in tests/test_ptm.py (test_end_to_end_on_a_tiny_stream); the
    # mergeable methods in tests/test_peft.py (test_end_to_end_on_a_tiny_stream); rmm in
    # tests/test_rmm.py (test_end_to_end_records); rlp in tests/test_rlp.py (test_end_to_end)
    assert set(STRATEGIES.names()) == set(BASELINES) | {"lftl", "aper", "ease", "ranpac"} | {
        "linear-adapter", "lora", "comp-lora", "consolidator", "rmm", "rlp"}


def _tiny(strategy, runs_dir, **kw):
    return clplatform.run(strategy, "glyphs", stream_options=TINY_GLYPHS, epochs=1, seed=0,
                          out=runs_dir, **kw)


@pytest.mark.parametrize("strategy", BASELINES)
def test_baseline_end_to_end(strategy, runs_dir, pretrained_backbone):
    run = _tiny(strategy, runs_dir)
    assert run.status == "complete"
    acc = run.accuracy
    n_exp = 3
    trained = [-1, 2] if strategy == "joint" else [-1, 0, 1, 2]
    assert sorted(acc["train_exp"].unique()) == trained
    assert len(acc) == len(trained) * n_exp
    assert acc["accuracy"].between(0, 1).all() and acc["class_mean_accuracy"].between(0, 1).all()
    # restricting the argmax to the experience's classes can only help
    assert (acc["task_accuracy"] >= acc["accuracy"]).all()
    assert run.summary["final_task_accuracy"] >= run.summary["final_accuracy"]
    assert (acc["seen"] == (acc["train_exp"] >= acc["eval_exp"])).all()
    assert (acc.groupby("train_exp")["n_samples"].sum() == 62 * TINY_GLYPHS["test_samples_per_class"]).all()
    exps = run.experiences
    assert list(exps["train_exp"]) == trained[1:]
    assert (exps["train_seconds"] > 0).all() and (exps["eval_seconds"] > 0).all()
    assert (exps["params_total"] >= exps["params_trainable"]).all()
    # a class-incremental model predicts nothing it has not seen yet
    unseen = acc[(acc["train_exp"] >= 0) & ~acc["seen"]]
    assert (unseen["accuracy"] == 0).all()


def test_frozen_backbone_strategies_do_not_touch_the_backbone(runs_dir, pretrained_backbone):
    run = _tiny("linear-probe", runs_dir)
    exps = run.experiences
    head_params = exps["params_trainable"]
    # only the head trains: it grows with the classes (d + 1 parameters per class)
    per_class = 96 + 1
    classes = [21, 21, 20]  # 62 classes over 3 experiences
    assert list(head_params) == [per_class * sum(classes[:i + 1]) for i in range(3)]
    run = _tiny("simplecil", runs_dir)
    assert (run.experiences["params_trainable"] == 0).all()


@pytest.mark.slow  # 49 s: the default suite keeps to its 15 minutes
def test_naive_forgets_and_joint_does_not(runs_dir, pretrained_backbone):
    """On the default stream: naive fine-tuning forgets, the joint upper bound does not."""
    naive = clplatform.run("naive", "glyphs", seed=0, out=runs_dir)
    joint = clplatform.run("joint", "glyphs", seed=0, out=runs_dir)
    print(f"glyphs: naive {naive.summary}, joint {joint.summary}")
    assert naive.summary["plasticity"] > 0.5      # each experience is learned ...
    assert naive.summary["forgetting"] > 0.5      # ... and forgotten
    last = naive.accuracy[naive.accuracy["train_exp"] == 9]
    assert last.loc[last["eval_exp"] < 9, "accuracy"].max() < 0.1  # only the last classes
    assert joint.summary["final_accuracy"] > naive.summary["final_accuracy"] + 0.4
    assert joint.summary["forgetting"] is None    # undefined: trained once (NaN -> null)


def test_hyper_parameters_reach_the_avalanche_strategy(runs_dir, pretrained_backbone):
    run = _tiny("replay", runs_dir, strategy_options={"mem_size": 31})
    assert run.config["strategy"] == {"name": "replay", "mem_size": 31}
    from clplatform.strategies.base import StrategyContext
    # build the same strategy directly and inspect the Avalanche object
    from clplatform import create_backbone, create_strategy, create_stream
    from clplatform.strategies.base import TrainSettings
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings(epochs=1, lr=0.01))
    strategy = create_strategy("ewc", ctx, ewc_lambda="7.5")
    from avalanche.training.plugins import EWCPlugin
    ewc_plugin = [p for p in strategy.plugins if isinstance(p, EWCPlugin)][0]
    assert ewc_plugin.ewc_lambda == 7.5


@pytest.mark.slow  # 12 s; the default suite keeps test_reliability's same-seed checks
def test_same_seed_gives_identical_records(runs_dir, pretrained_backbone):
    a = _tiny("naive", runs_dir)
    b = _tiny("naive", runs_dir)
    assert a.path != b.path
    pd.testing.assert_frame_equal(a.accuracy, b.accuracy)
    c = clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, epochs=1, seed=1,
                       out=runs_dir)
    assert not a.accuracy["accuracy"].equals(c.accuracy["accuracy"])


@pytest.mark.slow  # 45 s; the default suite keeps the linear-probe form (test_pretrain_mini)
def test_pretraining_transfers_simplecil_beats_random_backbone(runs_dir, pretrained_backbone):
    """vit-glyphs must beat a random backbone by >= 20 points with SimpleCIL on glyphs."""
    path, pretrain_accuracy = pretrained_backbone
    assert pretrain_accuracy > 0.7
    pre = clplatform.run("simplecil", "glyphs", seed=0, out=runs_dir)
    rand = clplatform.run("simplecil", "glyphs", seed=0, out=runs_dir,
                          backbone_options={"pretrained": False})
    print(f"SimpleCIL on glyphs: vit-glyphs {pre.summary['final_accuracy']:.3f}, "
          f"random {rand.summary['final_accuracy']:.3f}")
    assert pre.summary["final_accuracy"] >= rand.summary["final_accuracy"] + 0.20
    assert pre.config["backbone"]["pretrained"] is True
    assert rand.config["backbone"]["pretrained"] is False


def test_training_changes_only_what_the_strategy_trains(pretrained_backbone):
    from clplatform import create_backbone, create_strategy, create_stream
    from clplatform.strategies.base import StrategyContext, TrainSettings
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings(epochs=1, lr=0.01))
    before = {k: v.clone() for k, v in ctx.backbone.state_dict().items()}
    strategy = create_strategy("linear-probe", ctx)
    strategy.train(bm.train_stream[0], eval_streams=[])
    after = ctx.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    strategy = create_strategy("naive", StrategyContext(ctx.backbone, bm.info,
                                                        TrainSettings(epochs=1, lr=0.01)))
    strategy.train(bm.train_stream[0], eval_streams=[])
    assert not all(torch.equal(before[k], ctx.backbone.state_dict()[k]) for k in before)


def test_si_importances_are_not_zero_on_cpu(pretrained_backbone):
    """Avalanche 0.6's SI keeps snapshots that alias the parameters on a CPU (all importances
    0, no penalty); clplatform's SI copies them: after one experience the importances are
    positive and the penalty pulls towards the parameters of the experience's end."""
    from clplatform import create_backbone, create_strategy, create_stream
    from clplatform.strategies.base import StrategyContext, TrainSettings
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=2, lr=0.05))
    strategy = create_strategy("si", ctx, si_lambda=1.0)
    plugin = [p for p in strategy.plugins if hasattr(p, "syn_data")][0]
    strategy.train(bm.train_stream[0], eval_streams=[])
    importance = torch.cat([d.data for d in plugin.ewc_data[1].values()])
    assert importance.max() > 0 and (importance > 0).float().mean() > 0.1
    anchor = {k: d.data.clone() for k, d in plugin.ewc_data[0].items()}
    named = dict(strategy.model.named_parameters())
    assert all(torch.equal(anchor[k], named[k].detach().flatten()) for k in anchor)
    assert all(a.data_ptr() != named[k].data_ptr() for k, a in
               ((k, d.data) for k, d in plugin.ewc_data[0].items()))
    with torch.no_grad():  # move the parameters: the penalty must see it
        for p in strategy.model.parameters():
            p.add_(0.01)
    penalty = plugin.compute_ewc_loss(strategy.model, plugin.ewc_data,
                                      plugin.excluded_parameters, "cpu", lambd=1.0)
    assert penalty > 0


# ---- a new strategy written as the README shows: one Strategy class -------------------
EXAMPLE_STRATEGY = (Path(__file__).resolve().parents[1] / "examples" / "plugin" /
                    "clplat_example" / "partial.py")


@pytest.fixture
def example_strategy(tmp_path, monkeypatch):
    """The example plugin's strategy module, imported from a copy in a temporary folder
    (registers ``partial-finetune``); unregistered afterwards."""
    import importlib
    import shutil
    shutil.copy(EXAMPLE_STRATEGY, tmp_path / "readme_strategy.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "readme_strategy", raising=False)
    module = importlib.import_module("readme_strategy")
    yield module
    STRATEGIES._entries.pop("partial-finetune", None)
    sys.modules.pop("readme_strategy", None)


def test_a_strategy_class_from_the_readme_runs_resumes_and_is_listed(
        example_strategy, tmp_path, pretrained_backbone):
    """One class deriving from clplatform.Strategy: listed with its options, its records
    get its extra columns, its training FLOPs are counted, and a run stopped after the
    first experience resumes to the same records (its checkpoint state included)."""
    import json

    from click.testing import CliRunner

    from clplatform.app.cli import cli
    assert issubclass(example_strategy.PartialFinetune, clplatform.Strategy)
    entry = STRATEGIES.get("partial-finetune")
    assert entry.traits.resumable and entry.builder is example_strategy.PartialFinetune
    listed = CliRunner().invoke(cli, ["list", "strategies", "-v"], prog_name="clplat")
    assert "partial-finetune" in listed.output and "blocks" in listed.output

    def run(out):
        return clplatform.run("partial-finetune", "glyphs", stream_options=TINY_GLYPHS,
                              epochs=1, seed=0, out=out, strategy_options={"blocks": 1})
    reference = run(tmp_path / "ref")
    exps = reference.experiences
    sizes = list(exps["experience_size"])
    assert list(exps["partial-finetune.samples_seen"]) == [sum(sizes[:i + 1])
                                                          for i in range(3)]
    assert (exps["train_flops"] > 0).all()
    assert exps["params_trainable"].iloc[0] > 100_000  # one block trains, not only the head

    with stopped_after(0):
        run(tmp_path / "stopped")
    run_dir = next((tmp_path / "stopped").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    done = CliRunner().invoke(cli, ["run", "--resume", str(run_dir), "--quiet"],
                              prog_name="clplat")
    assert done.exit_code == 0, (done.output, done.exception)
    resumed = clplatform.load_run(run_dir)
    assert resumed.status == "complete"
    pd.testing.assert_frame_equal(resumed.accuracy, reference.accuracy)
    keep = [c for c in exps.columns if not any(t in c for t in ("seconds", "memory"))]
    pd.testing.assert_frame_equal(resumed.experiences[keep], exps[keep])


# ---- the shared ViT toolkit and the tensor data loader ---------------------------------
def test_vit_pieces_compute_what_timm_computes():
    """embed -> blocks i..j -> blocks j.. -> pool is timm's forward, to the bit; the frozen
    part of the backbone stays in eval mode in training, the blocks from frozen_blocks on
    follow the model; a backbone that is not a ViT is a one-line error naming the strategy."""
    from clplatform.errors import UserError
    from clplatform import create_backbone
    from clplatform.strategies.vit import ViTPieces, map_batches, require_vit
    torch.manual_seed(0)
    backbone = create_backbone("vit-glyphs", pretrained=False)
    pieces = ViTPieces(backbone).eval()
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        whole = backbone(x)
        split = pieces.pool(pieces.run_blocks(pieces.run_blocks(pieces.embed(x), 0, 2), 2))
        assert torch.equal(pieces.vit_features(x), whole) and torch.equal(split, whole)
    # in batches of 2 (float sums in another order)
    assert torch.allclose(map_batches(pieces.vit_features, x, "cpu", batch_size=2), whole,
                          atol=1e-5)
    pieces.frozen_blocks = 2
    pieces.train()
    blocks = list(backbone.model.blocks)
    assert not backbone.training and not any(b.training for b in blocks[:2])
    assert all(b.training and all(m.training for m in b.modules()) for b in blocks[2:])
    pieces.frozen_blocks = None
    assert pieces.train().backbone.training
    resnet = create_backbone("timm", model_name="resnet18", pretrained=False)
    with pytest.raises(UserError, match="sema works on timm VisionTransformer backbones"):
        require_vit(resnet, "sema")


def test_tensor_batches_draw_one_permutation_per_pass():
    """One torch.randperm(n) per pass, drawn when the pass starts: the random draws of the
    loops written before it (records stay identical)."""
    from clplatform.strategies.base import TensorBatches
    x, y = torch.arange(10) * 10, torch.arange(10)
    loader = TensorBatches(x, y, batch_size=4)
    assert len(loader) == 3
    torch.manual_seed(3)
    passes = [list(loader), list(loader)]
    torch.manual_seed(3)
    orders = [torch.randperm(10), torch.randperm(10)]
    for batches, order in zip(passes, orders):
        assert [len(b[0]) for b in batches] == [4, 4, 2]
        assert torch.equal(torch.cat([b[1] for b in batches]), order)
        assert torch.equal(torch.cat([b[0] for b in batches]), order * 10)
        assert all(len(b[2]) == 0 for b in batches)  # no task labels
    unlabelled = list(TensorBatches(x, None, batch_size=4, shuffle=False))
    assert torch.equal(unlabelled[0][0], x[:4]) and len(unlabelled[0][1]) == 0
