"""Token merging (ToMe) and PYRA as backbone options (``shared/specs/compute-reduction.md`` A,
tests 1-7): vit-glyphs with random weights, 17 tokens (16 patches + CLS), d=96, 3 heads."""
import hashlib

import pytest
import torch

from clplatform import create_backbone
from clplatform.compute import FlopCount
from clplatform.models import TokenMergingOptions, tome

from conftest import TINY_GLYPHS

D, HEADS, MLP = 96, 3, 4


def _backbone(seed=0, **opts):
    torch.manual_seed(seed)
    return create_backbone("vit-glyphs", pretrained=False, **opts).eval()


def _images(n=4, seed=1):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


def _flops(model, x):
    with torch.no_grad(), FlopCount() as counter:
        out = model(x)
    return out, counter.total


def _sizes_per_block(backbone, x):
    """Sizes [B, N] after every block's merge (forward hooks on the blocks)."""
    seen = []
    state = backbone.model.merge_state
    hooks = [b.register_forward_hook(lambda *_: seen.append(state.size[..., 0].clone()))
             for b in backbone.model.blocks]
    with torch.no_grad():
        backbone(x)
    for h in hooks:
        h.remove()
    return seen


# ------------------------------------------------------------------ 1. R = 0 is the plain model
@pytest.mark.parametrize("value", ["0", "0,0,0"])
def test_zero_leaves_the_backbone_untouched(value):
    from timm.models.vision_transformer import Block, VisionTransformer
    plain, zero = _backbone(), _backbone(merge_tokens=value)
    assert type(zero.model) is VisionTransformer and not hasattr(zero.model, "merge_state")
    assert all(type(b) is Block for b in zero.model.blocks)
    x = _images()
    (a, fa), (b, fb) = _flops(plain, x), _flops(zero, x)
    assert torch.equal(a, b) and fa == fb


def _sema(**backbone_opts):
    from clplatform.strategies.sema import SEMAModel, SEMAOptions
    model = SEMAModel(_backbone(**backbone_opts), 10, SEMAOptions())
    torch.manual_seed(5)
    for block in model.blocks:
        block.add_adapter()
        block.add_adapter() if block.expandable else None
        for p in block.adapters.parameters():  # adapters start as exact no-ops: perturb
            p.data.normal_(0, 0.1)
    model.seen[:] = True
    return model.eval()


def _prompted(**backbone_opts):
    from clplatform.strategies.prompts import PromptOptions
    from clplatform.strategies.prompts.model import PromptModel
    model = PromptModel(_backbone(**backbone_opts), 10, PromptOptions())
    torch.manual_seed(5)
    model.add_experience()
    model.add_experience()
    model.seen[:] = True
    return model.eval()


@pytest.mark.parametrize("build", [_sema, _prompted], ids=["sema", "prompt"])
def test_zero_gives_the_unmerged_strategy_model(build):
    x = _images()
    (a, fa), (b, fb) = _flops(build(), x), _flops(build(merge_tokens="0"), x)
    assert torch.allclose(a, b, atol=1e-6) and fa == fb
    # and merging runs through the strategy's own block wrapper / prefix attention
    merged = build(merge_tokens="2")
    out, flops = _flops(merged, x)
    assert out.shape == a.shape and flops < 0.9 * fa
    assert merged.vit.merge_state.tokens_per_block == [17, 15, 13, 11, 9, 7]


def test_explicit_attention_equals_timms():
    vit = _backbone().model
    attn = vit.blocks[0].attn
    x = torch.randn(2, 17, D)
    out, metric = tome.attention(attn, x, None)
    assert torch.allclose(out, attn(x), atol=1e-6)
    assert metric.shape == (2, 17, D // HEADS)
    # sizes of 1 are plain attention too
    assert torch.allclose(tome.attention(attn, x, torch.ones(2, 17, 1))[0], out, atol=1e-6)


# ------------------------------------------------------------------ 2. tokens per block
@pytest.mark.parametrize("r, tokens, last", [(2, [17, 15, 13, 11, 9, 7], 5),
                                             (8, [17, 9, 5, 3, 2, 2], 2)])
def test_tokens_per_block_follow_the_schedule(r, tokens, last):
    backbone = _backbone(merge_tokens=str(r))
    sizes = _sizes_per_block(backbone, _images())
    assert backbone.model.merge_state.tokens_per_block == tokens
    assert sizes[-1].shape[1] == last
    for s in sizes:  # CLS: index 0, size 1, in every block
        assert torch.equal(s[:, 0], torch.ones(len(s)))


def test_schedules():
    options = TokenMergingOptions(merge_tokens=(4,), merge_schedule="decreasing")
    assert tome.schedule(options, 6) == [8, 6, 4, 3, 1, 0]  # ToMe's parse_r((4, -1))
    assert tome.schedule(TokenMergingOptions(merge_tokens=(2, 1)), 4) == [2, 1, 0, 0]
    backbone = _backbone(merge_tokens="3,0,2")
    _sizes_per_block(backbone, _images())
    assert backbone.model.merge_state.tokens_per_block == [17, 14, 14, 12, 12, 12]


# ------------------------------------------------------------------ 3. sizes
def test_sizes_are_integers_summing_to_the_patches_and_means_are_kept():
    backbone = _backbone(merge_tokens="2")
    for s in _sizes_per_block(backbone, _images()):
        assert torch.equal(s, s.round()) and torch.equal(s.sum(1), torch.full((4,), 17.0))
    block = backbone.model.blocks[1]
    state = backbone.model.merge_state
    x = torch.randn(3, 15, D)
    state.size = torch.randint(1, 4, (3, 15, 1)).float()
    state.size[:, 0] = 1
    before = tome.token_mean(x, block)
    merged = tome.merge(block, x, torch.randn(3, 15, 32))
    assert merged.shape == (3, 13, D)
    assert torch.allclose(tome.token_mean(merged, block), before, atol=1e-5)
    plain = torch.randn(3, 15, D)
    state.size = None
    assert torch.allclose(tome.token_mean(tome.merge(block, plain, torch.randn(3, 15, 32)),
                                          block), plain.mean(1), atol=1e-5)


# ------------------------------------------------------------------ 4. proportional attention
def test_a_size_two_token_attends_like_two_copies():
    attn = _backbone().model.blocks[0].attn
    x = torch.randn(1, 4, D)
    copies = torch.cat([x[:, :2], x[:, 1:2], x[:, 2:]], dim=1)      # token 1 twice
    size = torch.tensor([1.0, 2.0, 1.0, 1.0])[None, :, None]
    merged = tome.attention(attn, x, size)[0]
    expected = tome.attention(attn, copies, None)[0][:, [0, 1, 3, 4]]
    assert torch.allclose(merged, expected, atol=1e-5)
    without = tome.attention(attn, x, None)[0]                      # prop_attn=false
    assert not torch.allclose(without, expected, atol=1e-3)


# ------------------------------------------------------------------ 5. PYRA
def test_pyra_starts_as_tome_and_trains_only_its_parameters():
    x = _images()
    plain = _backbone(merge_tokens="2")
    pyra = _backbone(merge_tokens="2", pyra="true")
    state = {k: v for k, v in pyra.model.state_dict().items() if ".pyra." not in k}
    assert state.keys() == plain.model.state_dict().keys()
    pyra.model.load_state_dict({**pyra.model.state_dict(), **plain.model.state_dict()})
    with torch.no_grad():
        assert torch.allclose(pyra(x), plain(x), atol=1e-6)
    params = tome.pyra_parameters(pyra.model)
    assert sum(p.numel() for p in params) == 6 * (2 + 3 * D)          # 1,740 (spec)

    def digest():
        h = hashlib.sha256()
        for k, v in pyra.model.named_parameters():
            if ".pyra." not in k:
                h.update(v.detach().numpy().tobytes())
        return h.hexdigest()
    frozen = digest()
    pyra.requires_grad_(False)
    trained = tome.pyra_to_train(pyra.model, 0)
    assert [id(p) for p in trained] == [id(p) for p in params]
    assert all(p.requires_grad for p in params)
    start = {id(p): p.detach().clone() for p in params}
    optimizer = torch.optim.SGD(trained, lr=0.5)
    for _ in range(2):  # b starts at 0: a and the LN get gradients from the second step on
        optimizer.zero_grad()
        pyra(x).pow(2).sum().backward()
        optimizer.step()
    block = pyra.model.blocks[0].pyra
    changed = {n for n, p in block.named_parameters()
               if not torch.equal(p, start[id(p)])}
    assert changed == {"a", "b", "norm.weight", "norm.bias"}
    assert digest() == frozen
    assert tome.pyra_to_train(pyra.model, 1) == [] and not any(p.requires_grad for p in params)


# ------------------------------------------------------------------ 6. FLOPs
def _block_flops(n: int, r: int) -> int:
    attention = 2 * (4 * n * D * D + 2 * n * n * D)
    match = 2 * ((n + 1) // 2) * (n // 2) * D // HEADS if r else 0
    return attention + 4 * MLP * (n - r) * D * D + match


@pytest.mark.parametrize("r", [0, 1, 2])
def test_flop_count_matches_the_analytic_sum(r):
    backbone = _backbone(merge_tokens=str(r))
    x = _images(2)
    vit = backbone.model
    with torch.no_grad(), FlopCount() as stem:
        vit._pos_embed(vit.patch_embed(backbone.prepare(x)))
    n, analytic = 17, stem.total
    for _ in vit.blocks:
        cut = min(r, (n - 1) // 2)
        analytic += 2 * _block_flops(n, cut)  # two samples
        n -= cut
    counted = _flops(backbone, x)[1]
    assert abs(counted - analytic) / analytic < 0.01
    if r:
        assert counted < _flops(_backbone(), x)[1]


# ------------------------------------------------------------------ 7. determinism
def test_merge_indices_are_deterministic_also_on_equal_background_tokens():
    x = torch.cat([_images(2), torch.zeros(1, 1, 32, 32)])  # a blank image: equal tokens
    runs = []
    for _ in range(2):
        backbone = _backbone(merge_tokens="2")
        with torch.no_grad():
            backbone(x)
        runs.append([s.clone() for s in backbone.model.merge_state.sources])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    # exactly equal tokens (a glyph's background): the stable sort merges the first A
    # tokens after CLS, every time
    block = backbone.model.blocks[0]
    for _ in range(2):
        backbone.model.merge_state.reset()
        tome.merge(block, torch.randn(1, 17, D), torch.ones(1, 17, 32))
        assert backbone.model.merge_state.sources[0].tolist() == [[1, 2]]


# ------------------------------------------------------------------ strategies
def test_cached_tokens_keep_their_sizes():
    model = _sema(merge_tokens="2")
    x = _images()
    with torch.no_grad():
        whole = model(x)
        cached = model.run_blocks(model.embed(x), 0, 3)
        assert cached.shape == (4, 11, D + 1)
        model(_images(3))  # another batch size in between
        assert model.run_blocks(model.embed(x), 0, 0).shape == (4, 17, D + 1)  # no block
        resumed = model.logits(model.pool(model.run_blocks(cached, 3)))
    assert torch.allclose(resumed, whole, atol=1e-5)


def test_sema_router_mean_is_size_weighted():
    model = _sema(merge_tokens="2")
    state = model.vit.merge_state
    with torch.no_grad():
        tokens = model.embed(_images())
        for block in model.blocks[:3]:
            tokens = block(tokens)
        size = state.size.clone()
        model.blocks[3](tokens)
        got = model.blocks[3].last_mean
        state.size = size  # block 3 again, by the shared steps
        inner = model.blocks[3].block
        attended, metric = tome.attend(inner, tokens)
        x_mid = tome.merge(inner, tokens + attended, metric)
    assert x_mid.shape[1] == 9 and not torch.all(state.size == 1)
    expected = (x_mid * state.size).sum(1) / state.size.sum(1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, x_mid.mean(1), atol=1e-4)


def test_sema_with_pyra_trains_it_in_the_first_experience_only():
    from clplatform import create_stream, create_strategy
    from clplatform.strategies.base import StrategyContext, TrainSettings
    bm = create_stream("glyphs", **TINY_GLYPHS)
    ctx = StrategyContext(_backbone(merge_tokens="2", pyra="true"), bm.info,
                          TrainSettings(epochs=1, batch_size=16, lr=0.01))
    strategy = create_strategy("sema", ctx, functional_epochs=1, rd_epochs=1, expand="every")
    vit = strategy.model.vit
    params = tome.pyra_parameters(vit)
    values = []
    for experience in bm.train_stream[:2]:
        values.append(torch.cat([p.detach().flatten().clone() for p in params]))
        strategy.train(experience)
    values.append(torch.cat([p.detach().flatten() for p in params]))
    assert not torch.equal(values[0], values[1])   # trained in experience 1
    assert torch.equal(values[1], values[2])       # frozen afterwards


# ------------------------------------------------------------------ command line
@pytest.mark.parametrize("args, message", [
    (["--backbone-opt", "merge_tokens=-1"], "invalid value -1 for merge_tokens"),
    (["--backbone-opt", "merge_schedule=fast"], "choose from constant, decreasing"),
    (["--backbone-opt", "merge_tokens=2,2", "--backbone-opt", "merge_schedule=decreasing"],
     "merge_schedule=decreasing takes one merge_tokens value"),
    (["--backbone-opt", "pyra=true"], "pyra=true needs merge_tokens > 0"),
    # a strategy that trains no adapters or prompts would silently run plain ToMe
    (["--backbone-opt", "merge_tokens=2", "--backbone-opt", "pyra=true"],
     "strategy 'simplecil' does not train PYRA (backbone option pyra=true); the strategies "
     "that do: aper, coda-prompt, dualprompt, ease, l2p, prompt, qprompt, ranpac, rlp, sema"),
    (["--backbone-opt", "merge_tokens=1,1,1,1,1,1,1"], "merge_tokens lists 7 blocks but the "
                                                       "backbone has 6"),
    (["--backbone", "timm:resnet18", "--backbone-opt", "pretrained=false",
      "--backbone-opt", "merge_tokens=2"],
     "token merging works on timm VisionTransformer backbones only"),
])
def test_bad_merge_options_one_line_exit_2(args, message, runs_dir):
    from click.testing import CliRunner

    from clplatform.app.cli import cli
    result = CliRunner().invoke(cli, ["run", "--strategy", "simplecil", *args, "--backbone-opt",
                                      "pretrained=false", "--out", str(runs_dir), "--quiet"]
                                if "timm:" not in " ".join(args) else
                                ["run", "--strategy", "simplecil", *args, "--out",
                                 str(runs_dir), "--quiet"], prog_name="clplat")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


@pytest.mark.slow
def test_run_with_merged_tokens_records_lower_inference_flops(runs_dir):
    from click.testing import CliRunner

    from clplatform.app.cli import cli
    from clplatform.store import load_run
    tiny = [a for k, v in TINY_GLYPHS.items() for a in ("--stream-opt", f"{k}={v}")]
    flops = {}
    for r in ("0", "2"):
        out = runs_dir / r
        result = CliRunner().invoke(cli, ["run", "--strategy", "simplecil", *tiny,
                                          "--backbone-opt", "pretrained=false",
                                          "--backbone-opt", f"merge_tokens={r}",
                                          "--out", str(out), "--quiet"], prog_name="clplat")
        assert result.exit_code == 0, result.output
        run = load_run(next(out.iterdir()))
        assert run.config["backbone"]["merge_tokens"] == [int(r)]
        flops[r] = run.experiences["inference_flops_per_sample"].iloc[-1]
    assert flops["2"] < 0.85 * flops["0"]


def test_l2p_prompt_tokens_are_never_merged():
    from clplatform.strategies.l2p.config import L2POptions
    from clplatform.strategies.l2p.model import L2PModel
    options = L2POptions()
    model = L2PModel(_backbone(merge_tokens="2"), 10, options).eval()
    n = options.top_k * options.length
    state = model.vit.merge_state
    sizes = []
    hooks = [b.register_forward_hook(lambda *_: sizes.append(state.size[..., 0].clone()))
             for b in model.vit.blocks]
    with torch.no_grad():
        tokens = model.frozen_tokens(_images(2))
        model.prompted(tokens, torch.zeros(2, options.top_k, dtype=torch.long))
    assert state.tokens_per_block == [17 + n - 2 * i for i in range(6)]
    assert all(torch.equal(s[:, :1 + n], torch.ones(2, 1 + n)) for s in sizes)
    assert state.extra_protected == 0  # only inside the prompted pass


def test_adapter_methods_merge_through_their_block_wrapper():
    from clplatform.strategies.ptm.config import AdapterTraining
    from clplatform.strategies.ptm.model import AdapterViT
    x = _images()
    outputs = []
    for value in ("0", "2"):
        model = AdapterViT(_backbone(merge_tokens=value), AdapterTraining(), "aper").eval()
        model.add_adapter_set()
        for block in model.blocks:
            block.active = 0
        with torch.no_grad():
            outputs.append(model.vit_features(x))
    assert model.vit.merge_state.tokens_per_block == [17, 15, 13, 11, 9, 7]
    assert outputs[1].shape == outputs[0].shape


@pytest.mark.parametrize("name, options", [
    pytest.param("prompt", {}, marks=pytest.mark.slow), ("l2p", {}), ("coda-prompt", {}),
    ("aper", {"epochs": 1}),
])
def test_strategies_that_train_prompts_or_adapters_train_pyra_first(name, options):
    from clplatform import create_stream, create_strategy
    from clplatform.strategies.base import StrategyContext, TrainSettings
    bm = create_stream("glyphs", **TINY_GLYPHS)
    ctx = StrategyContext(_backbone(merge_tokens="1", pyra="true"), bm.info,
                          TrainSettings(epochs=1, batch_size=16, lr=0.01))
    strategy = create_strategy(name, ctx, **options)
    params = tome.pyra_parameters(strategy.model)
    assert sum(p.numel() for p in params) == 6 * (1 + 3 * D)
    before = torch.cat([p.detach().flatten().clone() for p in params])
    strategy.train(bm.train_stream[0])
    assert not torch.equal(before, torch.cat([p.detach().flatten() for p in params]))


@pytest.mark.parametrize("option", ["merge_metric=x", "merge_match=random", "merge_op=drop",
                                    "prop_attn=false"])
def test_ablations_change_the_output_not_the_token_counts(option):
    key, value = option.split("=")
    x = _images()
    reference = _backbone(merge_tokens="2")
    variant = _backbone(merge_tokens="2", **{key: value})
    with torch.no_grad():
        a, b = reference(x), variant(x)
    state = variant.model.merge_state
    assert state.tokens_per_block == [17, 15, 13, 11, 9, 7]
    assert not torch.allclose(a, b, atol=1e-4)
    total = state.size.sum(1)[:, 0]
    if key == "merge_op":  # dropped tokens take their patches with them
        assert torch.equal(total, torch.full((4,), 17.0 - 12))
    else:
        assert torch.equal(total, torch.full((4,), 17.0))
