"""The mergeable methods (``shared/specs/low-rank-and-mergeable.md``, "Tests that prove it"):
the shared re-parameterisation (merge, undo, deploy), linear-adapter, lora, comp-lora and
consolidator on bare tensors, a tiny timm ViT and a tiny stream."""
import hashlib

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from clplatform import create_backbone, create_strategy, create_stream
from clplatform.strategies.base import StrategyContext, TrainSettings
from clplatform.strategies.lora import LoRALinear, LowRankBranch
from clplatform.strategies.peft.layers import (AdaptedLinear, ConsolidatorLinear,
                                               GroupedBranch, LinearAdapter, ProjectedBranch,
                                               protected_directions)
from clplatform.strategies.reparam import (Affine, Delta, LinearUpdate, deploy, fold,
                                           merge_linear, unmerge_linear, wrappers)

from conftest import TINY_GLYPHS


def _randomize(module: nn.Module, seed: int = 1, std: float = 0.1) -> None:
    """Random non-zero values in every parameter (not the module's init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def _flops(fn, x) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops()


def _digest(tensors: dict) -> dict:
    return {k: hashlib.sha256(v.detach().cpu().numpy().tobytes()).hexdigest()
            for k, v in tensors.items()}


# ------------------------------------------------------------------ the shared operation
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_fold_of_pre_post_and_deltas_is_the_composition(bias, dtype, tol):
    torch.manual_seed(0)
    lin = nn.Linear(6, 5, bias=bias).to(dtype)
    m, c = torch.randn(6, 6, dtype=dtype), torch.randn(6, dtype=dtype)
    n, e = torch.randn(5, 5, dtype=dtype), torch.randn(5, dtype=dtype)
    d1, db1 = torch.randn(5, 6, dtype=dtype), torch.randn(5, dtype=dtype)
    d2 = torch.randn(2, 6, dtype=dtype)                       # rows 3:5 only
    update = LinearUpdate(pre=Affine(m, c), deltas=[Delta(d1, db1), Delta(d2, None, 3)],
                          post=Affine(n, e))
    x = torch.randn(4, 6, dtype=dtype)
    w = lin.weight + d1
    w[3:] += d2
    b = (lin.bias if bias else 0) + db1
    expected = (((x @ m.T + c) @ w.T) + b) @ n.T + e
    weight, b2 = fold(lin.weight, lin.bias, update)
    assert (x @ weight.T + b2 - expected).abs().max() <= tol
    original = {k: v.clone() for k, v in lin.state_dict().items()}
    merge_linear(lin, update)
    assert lin.bias is not None                               # a bias-less target gets one
    assert (lin(x) - expected).abs().max() <= tol
    with pytest.raises(RuntimeError, match="merged already"):
        merge_linear(lin, update)
    unmerge_linear(lin)                                       # exact: nothing subtracted
    assert (lin.bias is None) == (not bias)
    assert all(torch.equal(lin.state_dict()[k], v) for k, v in original.items())


def test_lora_merge_goes_through_the_shared_operation_bit_identically():
    torch.manual_seed(0)
    base = nn.Linear(8, 24)
    wrapper = LoRALinear(base)
    for start, end in [(8, 24), (0, 8), (8, 24)]:
        branch = wrapper.add_branch(start, end, rank=2, scale=0.5)
        with torch.no_grad():
            branch.up.normal_()
    expected = base.weight.detach().clone()                   # in place, one after the other
    for branch, (start, end) in zip(wrapper.branches, wrapper.slices):
        expected[start:end] += branch.delta_weight().detach()
    wrapper.merge()
    assert torch.equal(base.weight, expected) and len(wrapper.branches) == 0


# ------------------------------------------------------------------ linear-adapter
@pytest.mark.parametrize("side", ["pre", "post", "both"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_adapter_merges_exactly_before_and_after_a_linear(side, bias):
    torch.manual_seed(0)
    lin = nn.Linear(16, 12, bias=bias)
    pre = LinearAdapter(16, 4) if side in ("pre", "both") else None
    post = LinearAdapter(12, 3) if side in ("post", "both") else None
    wrapper = AdaptedLinear(lin, pre, post).eval()
    x = torch.randn(5, 7, 16)
    assert torch.equal(wrapper(x), lin(x))                    # a new adapter: exact no-op
    for a in (pre, post):
        if a is not None:
            _randomize(a)
    unmerged = wrapper(x)
    assert (unmerged - lin(x)).abs().max() > 1e-2
    plain = wrapper.folded()
    assert type(plain) is nn.Linear and plain.bias is not None
    assert (plain(x) - unmerged).abs().max() <= 1e-5
    wrapper.fold_in()
    assert (wrapper(x) - unmerged).abs().max() <= 1e-5
    wrapper.fold_out()
    assert torch.equal(wrapper(x), unmerged) and (lin.bias is None) == (not bias)


def test_linear_adapter_dropout_trains_only_and_affine_is_the_eval_map():
    torch.manual_seed(0)
    a = LinearAdapter(8, 2, scale=0.5, dropout=0.5)
    _randomize(a)
    x = torch.randn(3, 8)
    m, c = a.eval().affine()
    assert torch.allclose(a(x).double(), x.double() @ m.T + c, atol=1e-6)
    a.train()
    assert not torch.allclose(a(x), a.eval()(x))


def _tiny_vit(qkv_bias: bool):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=8, in_chans=1, embed_dim=24, depth=2,
                             num_heads=2, qkv_bias=qkv_bias, num_classes=5).eval()


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_every_module_kind_on_a_vit_deploys_to_the_backbone_structure_and_flops(qkv_bias):
    vit = _tiny_vit(qkv_bias)
    x = torch.rand(3, 1, 16, 16)
    backbone_flops = _flops(vit, x)
    plain_state = {k: v.shape for k, v in vit.state_dict().items()}
    b0, b1 = vit.blocks
    b0.attn.qkv = AdaptedLinear(b0.attn.qkv, pre=LinearAdapter(24, 6))
    b0.attn.proj = AdaptedLinear(b0.attn.proj, post=LinearAdapter(24, 6))
    b0.mlp.fc1 = ConsolidatorLinear(b0.mlp.fc1, [12, 6], drop=0.5, shuffle=True)
    b1.attn.qkv = ConsolidatorLinear(b1.attn.qkv, [12], drop=0.0, shuffle=True)
    lora = LoRALinear(b1.mlp.fc2)
    lora.add_branch(0, 24, rank=2, scale=2.0)
    b1.mlp.fc2 = lora
    left, _right, _k = protected_directions(b1.attn.proj.weight, 0.25, "left")
    comp = LoRALinear(b1.attn.proj)
    comp.branches.append(ProjectedBranch(24, 24, 2, 1.0, left, None))
    comp.slices.append((0, 24))
    b1.attn.proj = comp
    for _n, w in wrappers(vit):
        _randomize(nn.ModuleList(m for n, m in w.named_children() if n != "base"), std=0.05)
    vit.eval()
    unmerged = vit(x)
    assert _flops(vit, x) > backbone_flops
    deployed = deploy(vit)
    assert not wrappers(deployed) and wrappers(vit)           # a copy: the original is kept
    assert (deployed(x) - unmerged).abs().max() <= 1e-5
    assert _flops(deployed, x) == backbone_flops              # exactly the backbone's
    shapes = {k: v.shape for k, v in deployed.state_dict().items()}
    if qkv_bias:
        assert shapes == plain_state
    else:  # merging gave the bias-less qkv Linears the bias their branches carry
        assert set(shapes) - set(plain_state) == {"blocks.0.attn.qkv.bias",
                                                   "blocks.1.attn.qkv.bias"}
    deploy(vit, inplace=True)
    assert (vit(x) - unmerged).abs().max() <= 1e-5 and not wrappers(vit)


def test_parameter_counts_of_the_spec():
    vit_b = 48 * sum(p.numel() for p in LinearAdapter(768, 192).parameters())
    assert vit_b == 14_201_856
    assert 24 * sum(p.numel() for p in LinearAdapter(96, 24).parameters()) == 113_472
    assert 12 * sum(p.numel() for p in LowRankBranch(768, 3 * 768, 8).parameters()) == 294_912
    assert 6 * sum(p.numel() for p in LowRankBranch(96, 3 * 96, 8).parameters()) == 18_432

    def consolidator(d):
        shapes = [(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)]
        return sum(p.numel() for i, o in shapes for p in
                   GroupedBranch(i, o, d // 2, 0.5, True).parameters())
    assert 12 * consolidator(768) == 304_128 and 6 * consolidator(96) == 19_008


def test_consolidator_shuffle_and_stored_union_support():
    torch.manual_seed(0)
    lin = nn.Linear(12, 6, bias=False)
    wrapper = ConsolidatorLinear(lin, [6, 3], drop=0.0, shuffle=True).eval()
    x = torch.randn(4, 12)
    # the official ChannelShuffle1d: (g, C/g) -> transpose -> flatten
    branch = wrapper.branches[0]
    shuffled = x.view(4, 6, 2).transpose(1, 2).reshape(4, 12)
    by_hand = torch.cat([shuffled[:, 2 * i:2 * i + 2] @ branch.weight[i].T for i in range(6)],
                        1) + branch.bias
    assert torch.allclose(branch(x), by_hand, atol=1e-7)
    weight, bias = wrapper.consolidated()
    union = wrapper.union_support()
    assert int((weight != 0).sum()) == int(union.sum())        # nonzeros = the union support
    assert not weight[~union].any()                            # and lie on it
    assert int(union.sum()) < sum(int(b.support().sum()) for b in wrapper.branches)
    assert torch.allclose(lin(x) + x @ weight.T + bias, wrapper(x), atol=1e-6)
    wrapper.train()                                            # DropPath: per sample
    out = wrapper(torch.randn(64, 3, 12)) - 0
    assert out.shape == (64, 3, 6)


def test_consolidator_init_is_a_small_nonzero_change():
    backbone = create_backbone("vit-glyphs", pretrained=False)
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    ctx = StrategyContext(backbone, bm.info, TrainSettings())
    strategy = create_strategy("consolidator", ctx)
    model = strategy.model.eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        before = model.vit_features(x)
        strategy.install()
        after = model.vit_features(x)
    change = float((after - before).norm() / before.norm())
    assert 0 < change < 0.05


# ------------------------------------------------------------------ comp-lora
def _sgd_steps(branch: nn.Module, base: nn.Linear, steps: int = 20):
    g = torch.Generator().manual_seed(3)
    opt = torch.optim.SGD(branch.parameters(), lr=0.1)
    target = nn.Linear(base.in_features, base.out_features)
    for _ in range(steps):
        x = torch.randn(32, base.in_features, generator=g)
        loss = ((base(x) + branch(x) - target(x).detach()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return branch.delta_weight().detach().double()


@pytest.mark.parametrize("side", ["left", "both"])
def test_comp_lora_update_has_no_component_along_the_protected_directions(side):
    torch.manual_seed(0)
    base = nn.Linear(32, 48).requires_grad_(False)
    left, right, k = protected_directions(base.weight, 0.25, side)
    assert k == 8
    torch.manual_seed(1)
    comp = _sgd_steps(ProjectedBranch(32, 48, 4, 1.0, left, right), base)
    u, s, vh = torch.linalg.svd(base.weight.double())
    uk = u[:, :k]
    assert (uk.T @ comp).norm() / comp.norm() <= 1e-6
    torch.manual_seed(1)
    plain = _sgd_steps(LowRankBranch(32, 48, 4, 1.0), base)
    assert (uk.T @ plain).norm() / plain.norm() >= 1e-2
    if side == "both":
        assert (comp @ vh[:k].T).norm() / comp.norm() <= 1e-6
        s_after = torch.linalg.svdvals(base.weight.double() + comp)
        assert torch.allclose(s_after[:k], s[:k], atol=1e-5)   # top-k triples preserved


def test_comp_lora_with_protect_0_is_lora(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    states = []
    for name, opts in [("lora", {}), ("comp-lora", {"protect": 0.0})]:
        torch.manual_seed(0)
        ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings(epochs=1))
        strategy = create_strategy(name, ctx, **opts)
        torch.manual_seed(0)
        strategy.train(bm.train_stream[0], eval_streams=[])
        states.append(strategy.model.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# ------------------------------------------------------------------ the strategies
@pytest.mark.parametrize("name", ["linear-adapter", "lora", "comp-lora", "consolidator"])
def test_adapt_first_trains_once_merges_and_freezes(name, pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    torch.manual_seed(0)
    backbone = create_backbone("vit-glyphs")
    pretrained = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    ctx = StrategyContext(backbone, bm.info, TrainSettings(epochs=1))
    strategy = create_strategy(name, ctx)
    model = strategy.model
    strategy.train(bm.train_stream[0], eval_streams=[])
    extras = strategy.experience_extras()
    assert extras["merged"] == 1 and extras["inference_extra_params"] == 0
    assert extras["flops_ratio"] == 1.0 and extras["unmerged_flops_ratio"] > 1.0
    assert extras["merge_gap"] <= 1e-5
    assert not wrappers(model)                              # plain Linears only
    vit = model.vit.state_dict()
    changed = [k for k in pretrained if not torch.equal(pretrained[k], vit[k])]
    assert any(".qkv.weight" in k for k in changed)         # the update was merged
    frozen = _digest({k: v for k, v in model.state_dict().items()
                      if not k.startswith("prototypes.") and k != "seen"})
    for exp in bm.train_stream[1:]:
        strategy.train(exp, eval_streams=[])
    assert strategy.experience_extras()["module_params"] == 0
    assert _digest({k: v for k, v in model.state_dict().items()
                    if not k.startswith("prototypes.") and k != "seen"}) == frozen
    assert not any(p.requires_grad for p in model.parameters())


def test_adapt_every_merges_a_fresh_module_each_experience(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    torch.manual_seed(0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings(epochs=1))
    strategy = create_strategy("consolidator", ctx, adapt="every")
    totals = []
    for exp in bm.train_stream:
        strategy.train(exp, eval_streams=[])
        extras = strategy.experience_extras()
        assert extras["merged"] == 1 and extras["modules"] == 24
        assert extras["merge_gap"] <= 1e-5
        totals.append(extras["factor_params_total"])
    assert totals == [19_008, 38_016, 57_024]
    assert strategy.model.head_kind == "linear"


@pytest.mark.parametrize("strategy", ["linear-adapter", "lora", "comp-lora", "consolidator"])
def test_end_to_end_on_a_tiny_stream(strategy, runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run(strategy, "glyphs", stream_options=TINY_GLYPHS, seed=0, out=runs_dir,
                         epochs=1)
    exps = run.experiences
    assert len(exps) == 3 and run.accuracy["accuracy"].notna().all()
    assert (exps["stored_bytes"] > 0).all() and (exps["params_added"] > 0).all()
    assert list(exps[f"{strategy}.merged"]) == [1, 1, 1]
    # deployed: the same inference FLOPs as SimpleCIL (backbone + the same prototype head)
    base = clplatform.run("simplecil", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                          out=runs_dir).experiences["inference_flops_per_sample"]
    assert list(exps["inference_flops_per_sample"]) == list(base)
    # the report section: merged against unmerged inference cost
    from click.testing import CliRunner

    from clplatform.app.cli import cli
    from clplatform.contract import StrategyRecords
    from clplatform.reports import load_runs
    from clplatform.reports.plots import group_colors
    from clplatform.strategies.peft.report import SECTION
    runs = load_runs([runs_dir])
    only = runs.experiences[runs.experiences["strategy"] == strategy]
    records = StrategyRecords(
        stream="glyphs", strategies=(strategy,), runs=runs.table, accuracy=runs.accuracy,
        experiences=only, rounds=runs.rounds, configs={r.path.name: r.config for r in runs.runs},
        group_by="label", colors=group_colors(runs.table["label"]))
    items = SECTION.build(records)
    table = items[1].table
    assert len(items) == 2 and len(table) == 1
    assert float(table["flops_ratio"].iloc[0]) == 1.0
    assert float(table["unmerged_flops"].iloc[0]) > float(table["deployed_flops"].iloc[0])
    if strategy != "lora":   # the HTML report once (it takes seconds)
        return
    out = runs_dir / "report.html"
    result = CliRunner().invoke(cli, ["compare", str(runs_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert SECTION.title in text and "could not be drawn" not in text


def test_linear_adapter_unmerged_ablation_shows_the_flops_price(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    torch.manual_seed(0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings(epochs=1))
    strategy = create_strategy("linear-adapter", ctx, merge=False)
    strategy.train(bm.train_stream[0], eval_streams=[])
    extras = strategy.experience_extras()
    # later experiences train nothing and keep the side branches (the template's placeholder
    # optimizer is not regrouped: Avalanche failed on the kept modules' parameters)
    strategy.train(bm.train_stream[1], eval_streams=[])
    assert strategy.experience_extras()["inference_extra_params"] == 113_472
    assert extras["merged"] == 0 and extras["inference_extra_params"] == 113_472
    assert extras["flops_ratio"] > 1.0 and len(wrappers(strategy.model)) == 24
    model = strategy.model.eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        kept = model(x)
        deployed = deploy(model)(x)
    assert (kept - deployed).abs().max() <= 1e-5
    with pytest.raises(Exception, match="adapt=first"):
        create_strategy("linear-adapter", StrategyContext(
            create_backbone("vit-glyphs"), bm.info, TrainSettings()), merge=False,
            adapt="every")


def test_bad_options_are_one_clear_error():
    from clplatform.errors import UserError
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    ctx = StrategyContext(create_backbone("vit-glyphs", pretrained=False), bm.info,
                          TrainSettings())
    with pytest.raises(UserError, match="do not divide"):
        create_strategy("consolidator", ctx, group_divisor="5")
    with pytest.raises(UserError, match="places"):
        create_strategy("linear-adapter", ctx, places="qkv_in,nowhere")


def test_comp_lora_accumulate_also_protects_earlier_updates(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    torch.manual_seed(0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings(epochs=1))
    strategy = create_strategy("comp-lora", ctx, adapt="every", subspace="accumulate")
    strategy.train(bm.train_stream[0], eval_streams=[])
    first = strategy.experience_extras()
    earlier = {k: v.clone() for k, v in strategy.accumulated.items()}
    assert first["protected"] == 6 * 24 and all(v.shape[1] == 8 for v in earlier.values())
    deltas = {}
    original = strategy.before_merge

    def capture(installed):
        for (name, _), w in zip(strategy.targets(("attn.qkv",)), installed):
            deltas[name] = w.branches[0].delta_weight().detach().double()
        return original(installed)
    strategy.before_merge = capture
    strategy.train(bm.train_stream[1], eval_streams=[])
    second = strategy.experience_extras()
    assert second["protected"] == 6 * (24 + 8) and second["leak"] <= 1e-6
    for name, delta in deltas.items():
        assert (earlier[name].double().T @ delta).norm() / delta.norm() <= 1e-6
    assert set(strategy.checkpoint_state()["method"]["accumulated"]) == set(earlier)
