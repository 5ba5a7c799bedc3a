"""SEMA's building blocks and its expansion behaviour on small data."""
import hashlib

import pytest
import torch
import torch.nn.functional as F

from clplatform import create_backbone, create_strategy, create_stream
from clplatform.strategies.base import StrategyContext, TrainSettings
from clplatform.strategies.sema import SEMAModel, SEMAOptions, SoftRouter
from clplatform.strategies.sema.layer import Adapter, LossStatistics
from clplatform.strategies.base import masked_cross_entropy

from conftest import TINY_GLYPHS

FAST = {"functional_epochs": 2, "rd_epochs": 4}


def _model(**opts):
    backbone = create_backbone("vit-glyphs", pretrained=False)
    return SEMAModel(backbone, 62, SEMAOptions(**opts))


def test_vit_b_adapter_has_25360_parameters():
    """The paper's count for ViT-B/16 (d = 768, r = 16), on the architecture without weights."""
    import timm

    from clplatform.backbones import Backbone
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    model = SEMAModel(Backbone(vit, name="vit-b", in_chans=3, img_size=224, mean=(0.5,) * 3,
                               std=(0.5,) * 3), 100, SEMAOptions())
    block = model.blocks[-1]
    params = block.add_adapter()
    assert sum(p.numel() for p in block.adapters[0].parameters()) == 25360
    assert block.bottleneck == 16 and len(params) == 4  # first adapter: no router column


def test_new_adapter_is_an_exact_no_op():
    model = _model().eval()
    x = torch.rand(4, 1, 32, 32)
    before = model.pool(model.run_blocks(model.embed(x)))
    for block in model.blocks:
        block.add_adapter()
    for block in model.expandable:
        block.add_adapter()  # a second one: router of two, still a no-op
    with pytest.raises(RuntimeError, match="exactly one adapter"):
        model.blocks[0].add_adapter()
    after = model.pool(model.run_blocks(model.embed(x)))
    assert torch.equal(before, after)
    adapter = Adapter(8, 2)
    assert torch.equal(adapter(torch.randn(3, 5, 8)), torch.zeros(3, 5, 8))


def test_router_weights_sum_to_one():
    router = SoftRouter(16)
    for _ in range(3):
        router.add_column()
    mean = torch.randn(5, 16)
    weights = router(mean, 3)
    assert weights.shape == (5, 3) and torch.allclose(weights.sum(1), torch.ones(5))
    assert not torch.allclose(weights[:, 0], weights[:, 1])
    assert torch.equal(SoftRouter(16)(mean, 1), torch.ones(5, 1))
    assert [p.requires_grad for p in router.frozen.parameters()] == [False, False]
    assert router.new is not None and router.new.weight.requires_grad


def test_per_token_router_variant():
    """Paper variant: weights per token (sum to one), differing across the tokens of an image;
    still an exact no-op while the adapters are new."""
    model = _model(router="token").eval()
    block = model.expandable[0]
    for _ in range(2):
        block.add_adapter()
    with torch.no_grad():
        for adapter in block.adapters:
            adapter.up.weight.normal_()
    tokens = torch.randn(2, 5, 96)
    weights = block.router(tokens, 2)
    assert weights.shape == (2, 5, 2) and torch.allclose(weights.sum(-1), torch.ones(2, 5))
    assert not torch.allclose(weights[0, 0], weights[0, 1])
    image = _model().expandable[0]
    for _ in range(2):
        image.add_adapter()
    image.load_state_dict(block.state_dict())
    assert not torch.allclose(block(tokens), image(tokens))  # same modules, other routing


@pytest.mark.parametrize("running", [False, True])
def test_loss_statistics_window_and_running(running):
    stats = LossStatistics(size=4, running=running)
    assert float(stats.z_scores(torch.tensor([5.0]))) == 0.0  # too few values yet
    values = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 3.0])
    stats.add(values[:2])
    stats.add(values[2:])
    kept = values if running else values[-4:]
    assert stats.count == len(kept)
    assert stats.mean == pytest.approx(float(kept.mean()))
    assert stats.std == pytest.approx(float(kept.std(unbiased=True)))
    z = stats.z_scores(torch.tensor([0.0]), signed=True)
    assert float(z) == pytest.approx(-float(kept.mean() / kept.std(unbiased=True)), rel=1e-5)
    stats.frozen = True
    stats.add(torch.tensor([100.0]))
    assert stats.count == len(kept)


def test_masked_cross_entropy_ignores_old_classes():
    logits = torch.tensor([[9.0, 1.0, 2.0, 0.5]], requires_grad=True)
    current = torch.tensor([False, False, True, True])
    loss = masked_cross_entropy(logits, torch.tensor([2]), current)
    expected = F.cross_entropy(torch.tensor([[2.0, 0.5]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert torch.equal(logits.grad[0, :2], torch.zeros(2))


def _strategy(bm, **opts):
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings(epochs=1, lr=0.01))
    return create_strategy("sema", ctx, **{**FAST, **opts})


def _digest(tensors) -> dict:
    return {k: hashlib.sha256(v.detach().cpu().numpy().tobytes()).hexdigest()
            for k, v in tensors.items()}


def test_old_parameters_never_change_and_optimizer_holds_the_new_ones(pretrained_backbone,
                                                                        monkeypatch):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy(bm, expand="every")
    strategy.train(bm.train_stream[0], eval_streams=[])
    frozen = {k: v.clone() for k, v in strategy.model.state_dict().items()
              if not k.startswith("head.") and k != "seen"}
    before = _digest(frozen)
    phases, trainable_at_phase = [], []
    original_fit = type(strategy)._fit

    def spy(self, params, *args, **kwargs):
        phases.append({id(p) for p in params})
        blocks = self.model.expandable
        trainable_at_phase.append(
            {id(p) for b in blocks for p in b.adapters[-1].parameters()}
            | {id(p) for b in blocks if b.router.new is not None
               for p in b.router.new.parameters()})
        original_fit(self, params, *args, **kwargs)
        assert {id(p) for g in self.optimizer.param_groups for p in g["params"]} == \
            {id(p) for p in params}
    monkeypatch.setattr(type(strategy), "_fit", spy)
    strategy.train(bm.train_stream[1], eval_streams=[])
    after = strategy.model.state_dict()
    # merged router columns grow: the rows that existed must be unchanged
    assert _digest({k: after[k][:len(v)] if v.dim() else after[k]
                    for k, v in frozen.items()}) == before
    # functional phase: the 3 new adapters (4 tensors each), 3 new router columns (2 each)
    # and the head; the optimizer was rebuilt on exactly these
    expandable = strategy.model.expandable
    head = {id(p) for p in strategy.model.head.parameters()}
    assert phases[0] == trainable_at_phase[0] | head
    assert len(phases[0]) == 3 * 4 + 3 * 2 + 2
    assert [len(b.adapters) for b in expandable] == [2, 2, 2]
    # afterwards the router columns are merged and frozen, the adapters frozen
    assert all(b.router.new is None and not b.router.frozen.weight.requires_grad
               for b in expandable)
    assert not any(p.requires_grad for b in expandable for p in b.adapters.parameters())
    # descriptor phase: only the 3 new descriptors
    assert phases[1] == {id(p) for b in expandable for p in b.descriptors[-1].parameters()}


def test_shift_triggers_expansion_and_a_repeat_does_not(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy(bm)
    first = bm.train_stream[0]
    strategy.train(first, eval_streams=[])
    from clplatform.data import dataset_tensors
    x, _ = dataset_tensors(first.dataset)
    with torch.no_grad():
        same, inverted = strategy.model.embed(x), strategy.model.embed(1.0 - x)
    assert strategy._scan(same, set(), 0) is None             # the same data: nothing novel
    layer, score = strategy._scan(inverted, set(), 0)         # inverted images: novel
    assert layer >= strategy.model.first_expandable and score > 2.0
    assert strategy._scan(inverted, {3, 4, 5}, 0) is None     # every layer expanded already
    # from a later block's cached input (the experience's prefix): the same decision
    at = strategy.model.first_expandable
    with torch.no_grad():
        prefix = strategy.model.run_blocks(inverted, 0, at)
    assert strategy._scan(prefix, set(), at)[0] == layer


def test_expansion_shows_up_in_the_records(runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run("sema", "glyphs", stream_options=TINY_GLYPHS, seed=0, out=runs_dir,
                         strategy_options={**FAST, "expand": "every"})
    exps = run.experiences
    assert list(exps["modules_added"]) == [6, 9, 12]
    assert list(exps["sema.adapters_per_layer"]) == ["1;1;1", "2;2;2", "3;3;3"]
    adapter = 2 * 96 * 2 + 2 + 96  # d=96, r=2
    assert list(exps["sema.adapter_params"]) == [6 * adapter, 9 * adapter, 12 * adapter]
    never = clplatform.run("sema", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                           out=runs_dir, strategy_options={**FAST, "expand": "never"})
    assert list(never.experiences["modules_added"]) == [6, 6, 6]


def test_prototype_head_variant(runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run("sema", "glyphs", stream_options=TINY_GLYPHS, seed=0, out=runs_dir,
                         strategy_options={**FAST, "head": "prototype"})
    assert run.config["strategy"]["head"] == "prototype"
    acc = run.accuracy
    assert (acc[(acc["train_exp"] >= 0) & ~acc["seen"]]["accuracy"] == 0).all()
    assert run.summary["final_accuracy"] > 0.3  # prototypes of pre-trained features


def test_paper_variants_end_to_end(runs_dir, pretrained_backbone):
    """Signed per-sample z, running statistics and per-token routing together, on the tiny
    stream: the run completes, learns, and the records say which variant ran."""
    import clplatform
    variant = {"z_mode": "signed", "statistics": "running", "router": "token"}
    run = clplatform.run("sema", "glyphs", stream_options=TINY_GLYPHS, seed=0, out=runs_dir,
                         strategy_options={**FAST, **variant, "expand": "every",
                                           "functional_epochs": 4, "lr": 0.05})
    assert {k: run.config["strategy"][k] for k in variant} == variant
    assert list(run.experiences["sema.adapters_per_layer"]) == ["1;1;1", "2;2;2", "3;3;3"]
    exps = run.experiences
    assert run.summary["final_accuracy"] > 0.2
    assert int(exps["sema.router_params"].iloc[-1]) == 3 * 3 * 97


# ---- Avalanche plugins on a strategy trained from cached tensors -------------------------
TRAINING_HOOKS = ("before_training_epoch", "after_training_epoch",
                  "before_training_iteration", "after_training_iteration",
                  "before_forward", "after_forward", "before_backward", "after_backward",
                  "before_update", "after_update")


def _plugin_probe():
    """A plugin that counts the calls of every training hook and, in ``before_backward``,
    records what the plugins before it added to the loss (``loss - mb_output``: in
    ``fit_tensors`` ``mb_output`` is the batch's own loss)."""
    from avalanche.core import SupervisedPlugin

    class Probe(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.calls = dict.fromkeys(TRAINING_HOOKS, 0)
            self.added: list[tuple[int, float]] = []

    def counter(name):
        def hook(self, strategy, **kwargs):
            self.calls[name] += 1
            if name == "before_backward":
                self.added.append((strategy.clock.train_exp_counter,
                                   float((strategy.loss - strategy.mb_output).detach())))
        return hook
    for name in TRAINING_HOOKS:
        setattr(Probe, name, counter(name))
    return Probe()


def _sema_with_plugins(bm, plugins, experiences=2, **opts):
    from clplatform.seeding import seed_everything
    seed_everything(0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings(),
                          plugins=plugins)
    strategy = create_strategy("sema", ctx, **{**FAST, "expand": "every", **opts})
    for experience in bm.train_stream[:experiences]:
        strategy.train(experience, eval_streams=[])
    return strategy


def test_every_training_hook_fires_on_cached_tensors(pretrained_backbone):
    """SEMA trains from cached tokens through the template's own epoch loop: each hook fires
    once per iteration (per epoch), as many times as the phases have mini-batches."""
    import math
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    probe = _plugin_probe()
    strategy = _sema_with_plugins(bm, [probe], experiences=1)
    n = len(bm.train_stream[0].dataset)
    epochs = FAST["functional_epochs"] + FAST["rd_epochs"]  # functional + descriptor phase
    iterations = epochs * math.ceil(n / strategy.opts.batch_size)
    assert probe.calls == {h: epochs if "epoch" in h else iterations for h in TRAINING_HOOKS}
    assert probe.added == [(0, 0.0)] * iterations  # nothing added to the loss


def test_ewc_plugin_on_sema_changes_the_result(pretrained_backbone):
    """Avalanche's EWC attached through the context: its penalty is added to the loss SEMA
    trains in the second experience (not in the first), and the weights differ from a run
    without it; two runs without it are identical. On a domain stream, where the second
    experience trains the head rows of the first one's classes (in a class-incremental
    stream SEMA trains only new rows and new adapters, and freezes the old ones)."""
    from avalanche.training.plugins import EWCPlugin
    bm = create_stream("glyphs-domains", domains=("sans", "mono"), samples_per_class=2,
                       test_samples_per_class=1, seed=0)
    plain = [_sema_with_plugins(bm, []) for _ in range(2)]
    probe = _plugin_probe()
    ewc = _sema_with_plugins(bm, [EWCPlugin(ewc_lambda=100.0), probe])
    penalties = {exp: [v for e, v in probe.added if e == exp] for exp in (0, 1)}
    assert penalties[0] and all(v == 0.0 for v in penalties[0])
    # the second experience starts at the weights EWC saved, then moves away from them
    assert penalties[1][0] == 0.0 and max(penalties[1]) > 0.0
    same = [torch.equal(a, b) for a, b in zip(plain[0].model.state_dict().values(),
                                               plain[1].model.state_dict().values())]
    assert all(same)
    head = [s.model.head.weight for s in (plain[0], ewc)]
    assert not torch.equal(*head)
    new_adapter = [s.model.blocks[-1].adapters[-1].down.weight for s in (plain[0], ewc)]
    assert not torch.equal(*new_adapter)


def test_plugins_that_rerun_the_model_on_inputs_are_refused(pretrained_backbone):
    """LwF runs the previous model on the batch's inputs; SEMA's are cached tokens: an error
    naming it, not a silently wrong penalty."""
    from avalanche.training.plugins import LwFPlugin

    from clplatform.errors import UserError
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    with pytest.raises(UserError, match="LwFPlugin cannot be used with SEMA"):
        _sema_with_plugins(bm, [LwFPlugin()], experiences=1)


# ---- the released code's recipe (issue 18) and the flags that restore the earlier one -----
EARLIER = {"scan_order": "sequential", "lr_schedule": "iteration", "head_bias": "uniform"}
# low threshold, small scan batches: the tiny stream expands after experience 0
EXPANDING = {**FAST, "threshold": 1.0, "scan_batch_size": 8}


def _records(runs_dir, **opts):
    import clplatform
    run = clplatform.run("sema", "glyphs", stream_options=TINY_GLYPHS, seed=0, out=runs_dir,
                         strategy_options={**EXPANDING, **opts})
    exps = run.experiences
    return {"modules_added": list(exps["modules_added"]),
            "layers_expanded": [str(v) for v in exps["sema.layers_expanded"]],
            "z_scores": [str(v) for v in exps["sema.z_scores"]],
            "accuracy": [round(v, 6) for v in run.accuracy["accuracy"]]}


@pytest.mark.slow  # 12 s; records pinned on the 2-thread backbone
def test_earlier_behaviour_flags_reproduce_the_earlier_records(runs_dir, pretrained_backbone):
    """scan_order=sequential, lr_schedule=iteration, head_bias=uniform: the records of the
    code before issue 18 (measured with it on this tiny stream, seed 0); the released-code
    defaults give other records (more expansions with unshuffled, class-sorted scans).
    Pinned with the backbone a 2-thread machine pre-trains (88.64 %); a backbone pre-trained
    with another thread count has other weights (README, Known problems)."""
    if pretrained_backbone[1] != pytest.approx(0.8864285945892334, abs=1e-9):
        pytest.skip("records pinned with the 2-thread pre-trained backbone (88.64 %); "
                    f"this one reached {pretrained_backbone[1]:.4%}")
    earlier = _records(runs_dir, **EARLIER)
    assert earlier == {
        "modules_added": [6, 9, 10],
        "layers_expanded": ["0;1;2;3;4;5", "3;4;5", "5"],
        "z_scores": ["nan", "1.1155;2.7931;2.5454", "1.1777"],
        "accuracy": [round(v, 6) for v in (
            0.0476190485060215, 0.0, 0.0, 0.0793650820851326, 0.0, 0.0, 0.0476190485060215,
            0.1587301641702652, 0.0, 0.01587301678955555, 0.1111111119389534,
            0.0833333358168602)]}
    released = _records(runs_dir)
    assert released["layers_expanded"] != earlier["layers_expanded"]
    assert released["accuracy"] != earlier["accuracy"]


@pytest.mark.parametrize("order", ["shuffled", "sequential"])
def test_expansion_scan_order(order, pretrained_backbone):
    """The scan sees every sample once per pass: in a fresh random order (released code's
    shuffled DataLoader), or in stream order (earlier behaviour)."""
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy(bm, scan_order=order, scan_batch_size=8)
    from clplatform.data import dataset_tensors
    from clplatform.strategies.vit import FrozenRows
    x, _ = dataset_tensors(bm.train_stream[0].dataset)
    seen = []
    embed = strategy.model.embed
    tokens = FrozenRows(lambda b: seen.append(b.clone()) or embed(b), x, "cpu")
    passes = []
    for _ in range(2):
        strategy._scan(tokens, set(), 0)
        passes.append(torch.cat(seen))
        seen.clear()
    for scanned in passes:
        assert len(scanned) == len(x)
        assert torch.equal(scanned.flatten(1).sum(1).sort().values,
                           x.flatten(1).sum(1).sort().values)
    if order == "sequential":
        assert all(torch.equal(p, x) for p in passes)
    else:
        assert not torch.equal(passes[0], x) and not torch.equal(passes[0], passes[1])


def test_cosine_steps_once_per_epoch_and_head_bias_starts_at_zero(pretrained_backbone):
    """Released code: CosineAnnealingLR(T_max = epochs, eta_min = 0) stepped after each
    epoch, in both phases; the head's bias is zero, its weight PyTorch's default."""
    import math

    from avalanche.core import SupervisedPlugin

    class LR(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.lrs = []

        def before_training_iteration(self, strategy, **kwargs):
            self.lrs.append(strategy.optimizer.param_groups[0]["lr"])
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    probe = LR()
    from clplatform.seeding import seed_everything
    seed_everything(0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings(),
                          plugins=[probe])
    strategy = create_strategy("sema", ctx, **FAST)
    assert torch.equal(strategy.model.head.bias, torch.zeros(62))
    strategy.train(bm.train_stream[0], eval_streams=[])
    steps = math.ceil(len(bm.train_stream[0].dataset) / strategy.opts.batch_size)
    expected = []
    for epochs, lr in ((FAST["functional_epochs"], 0.005), (FAST["rd_epochs"], 0.01)):
        expected += [lr * (1 + math.cos(math.pi * e / epochs)) / 2
                     for e in range(epochs) for _ in range(steps)]
    assert probe.lrs == pytest.approx(expected, rel=1e-9)
    assert not torch.equal(
        create_strategy("sema", ctx, **FAST, head_bias="uniform").model.head.bias,
        torch.zeros(62))
