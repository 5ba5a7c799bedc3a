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
    assert strategy._scan(x, set()) is None                 # the same data: nothing novel
    layer, score = strategy._scan(1.0 - x, set())          # inverted images: novel
    assert layer >= strategy.model.first_expandable and score > 2.0
    assert strategy._scan(1.0 - x, {3, 4, 5}) is None       # every layer expanded already


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
