"""APER (adapters), RanPAC and EASE: the checks of ``shared/specs/ptm-comparators.md``
("Tests that prove it"), on the tiny ViT, bare tensors and a tiny stream."""
import hashlib

import pytest
import torch
import torch.nn.functional as F

from clplatform.data import dataset_tensors
from clplatform.registry import create_backbone, create_strategy, create_stream
from clplatform.strategies.base import StrategyContext, TrainSettings
from clplatform.strategies.sema.layer import Adapter

from conftest import TINY_GLYPHS

FAST = {"epochs": 2}


def _digest(module) -> dict:
    return {k: hashlib.sha256(v.detach().cpu().numpy().tobytes()).hexdigest()
            for k, v in module.state_dict().items()}


def _strategy(name, bm, **opts):
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings())
    return create_strategy(name, ctx, **opts)


# ----------------------------------------------------------------------------- the adapter
def test_adapter_defaults_are_semas_and_adaptformer_scales_and_drops():
    torch.manual_seed(0)
    adapter = Adapter(8, 2)
    with torch.no_grad():
        adapter.up.weight.normal_()
        adapter.up.bias.normal_()
    x = torch.randn(3, 5, 8)
    plain = adapter.up(F.relu(adapter.down(x)))
    assert torch.equal(adapter(x), plain)                      # SEMA: bit-identical
    adapt = Adapter(8, 2, scale=0.1, dropout=0.1)
    adapt.load_state_dict(adapter.state_dict())
    adapt.eval()
    assert torch.allclose(adapt(x), 0.1 * plain)               # eval: no dropout
    adapt.train()
    torch.manual_seed(1)
    hidden = F.relu(adapt.down(x))
    mask = F.dropout(torch.ones_like(hidden), p=0.1, training=True)
    torch.manual_seed(1)
    assert torch.allclose(adapt(x), 0.1 * adapt.up(hidden * mask))
    assert torch.equal(Adapter(8, 2, 0.1, 0.1)(x), torch.zeros(3, 5, 8))  # fresh: a no-op


def test_vit_b_adapter_set_has_1189632_parameters():
    """99,136 per block, 1,189,632 per set of 12 on ViT-B (r = d / 12 = 64)."""
    from clplatform.strategies.ptm.config import adapter_parameters, bottleneck
    assert bottleneck(None, 768) == 64 and bottleneck(None, 96) == 8
    assert adapter_parameters(768, 64, 1) == 99136
    assert adapter_parameters(768, 64, 12) == 1189632


# ----------------------------------------------------------------------------- APER
def test_aper_zero_init_adapters_give_the_pretrained_features():
    from clplatform.strategies.ptm import APEROptions
    from clplatform.strategies.ptm.aper import APERModel
    model = APERModel(create_backbone("vit-glyphs", pretrained=False), 10,
                      APEROptions()).eval()
    x = torch.rand(4, 1, 32, 32)
    tokens = model.embed(x)
    ptm = model.features_from_tokens(tokens, None)
    assert torch.equal(ptm, model.features_from_tokens(tokens, 0))
    assert torch.equal(ptm, model.vit_features(x))
    features = model.features(x)
    assert features.shape == (4, 2 * 96)
    assert torch.equal(features, torch.cat([ptm, ptm], dim=1))


def test_aper_trains_once_then_prototypes_of_concatenated_features(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy("aper", bm, **FAST)
    model = strategy.model
    before = _digest(model.backbone.model.blocks[0].block)
    strategy.train(bm.train_stream[0], eval_streams=[])
    # the adapters trained, the backbone did not
    assert _digest(model.backbone.model.blocks[0].block) == before
    assert any(float(a.up.weight.abs().sum()) > 0 for a in model.adapter_set(0))
    frozen = {k: v for k, v in _digest(model).items() if not k.startswith("head.")}
    rows0 = model.head.prototypes.clone()
    classes0 = sorted(bm.train_stream[0].classes_in_this_experience)
    for exp in bm.train_stream[1:]:
        strategy.train(exp, eval_streams=[])
    # no gradient step after experience 1: every parameter keeps its hash
    assert {k: v for k, v in _digest(model).items() if not k.startswith("head.")} == frozen
    assert not any(p.requires_grad for p in model.parameters())
    # old rows bit-identical after later experiences
    assert torch.equal(model.head.prototypes[classes0], rows0[classes0])
    # a row is the mean of the concatenated (pre-trained first) features of the class
    last = bm.train_stream[2]
    x, y = dataset_tensors(last.dataset)
    model.eval()
    with torch.no_grad():
        tokens = model.embed(x)
        feats = torch.cat([model.features_from_tokens(tokens, None),
                           model.features_from_tokens(tokens, 0)], dim=1)
    c = int(y[0])
    assert feats.shape[1] == 2 * 96
    assert torch.allclose(model.head.prototypes[c], feats[y == c].mean(0), atol=1e-5)
    # prediction: argmax cosine over the classes seen
    with torch.no_grad():
        logits = model(x[:5])
    expected = F.normalize(feats[:5], dim=1) @ F.normalize(model.head.prototypes, dim=1).T
    seen = model.head.counts > 0
    assert torch.allclose(logits[:, seen], expected[:, seen], atol=1e-5)
    assert torch.equal(logits.argmax(1), expected.masked_fill(~seen, -1e3).argmax(1))


# ----------------------------------------------------------------------------- RanPAC
def _ranpac_model(M=40, classes=5):
    from clplatform.strategies.ptm import RanPACOptions
    from clplatform.strategies.ptm.ranpac import RanPACModel
    return RanPACModel(create_backbone("vit-glyphs", pretrained=False), classes,
                       RanPACOptions(M=M)).double()


def test_ranpac_accumulated_head_is_one_ridge_fit_and_order_free():
    torch.manual_seed(0)
    parts = [(torch.relu(torch.randn(30, 40, dtype=torch.float64)),
              torch.randint(0, 5, (30,))) for _ in range(3)]
    H = torch.cat([h for h, _ in parts])
    Y = F.one_hot(torch.cat([y for _, y in parts]), 5).double()
    direct = (torch.linalg.inv(H.T @ H + 0.5 * torch.eye(40, dtype=torch.float64))
              @ H.T @ Y).T
    heads = []
    for order in ([0, 1, 2], [2, 0, 1]):
        model = _ranpac_model()
        for i in order:
            model.accumulate(*parts[i])
        model.solve(0.5)
        heads.append(model.weight.clone())
    assert torch.allclose(heads[0], direct, atol=1e-4)
    assert torch.allclose(heads[1], direct, atol=1e-4)
    # a huge ridge: the head is ~ Q / lambda, the prediction the class-sum dot product
    model = _ranpac_model()
    for part in parts:
        model.accumulate(*part)
    model.solve(1e8)
    Q = H.T @ Y
    assert torch.allclose(model.weight, Q.T / 1e8, rtol=1e-3, atol=1e-12)
    assert torch.equal((H @ model.weight.T).argmax(1), (H @ Q).argmax(1))


def test_ranpac_ridge_search_picks_the_best_of_the_80_20_split():
    from clplatform.strategies.ptm.ranpac import RIDGES, search_ridge
    torch.manual_seed(1)
    n, m, c = 60, 20, 4
    H = torch.randn(n, m, dtype=torch.float64)
    truth = torch.randn(m, c, dtype=torch.float64)
    Y = H @ truth + 4.0 * torch.randn(n, c, dtype=torch.float64)  # noisy: some ridge helps
    k = int(0.8 * n)
    brute = []
    for ridge in RIDGES:
        w = torch.linalg.solve(H[:k].T @ H[:k] + ridge * torch.eye(m, dtype=torch.float64),
                               H[:k].T @ Y[:k])
        brute.append(float(((H[k:] @ w - Y[k:]) ** 2).mean()))
    best = RIDGES[min(range(len(RIDGES)), key=brute.__getitem__)]
    assert best not in (RIDGES[0], RIDGES[-1])           # an interior optimum
    for method in ("dual", "primal"):
        ridge, losses = search_ridge(H, Y, method)
        assert ridge == best
        assert losses == pytest.approx(brute, rel=1e-6)


def test_ranpac_backbone_and_projection_fixed_after_phase_1(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy("ranpac", bm, M=300, **FAST)
    model = strategy.model
    strategy.train(bm.train_stream[0], eval_streams=[])
    assert model.W.abs().sum() > 0 and model.W.shape == (96, 300)
    fixed = {k: v for k, v in _digest(model).items()
             if not k.startswith(("G", "stats.", "weight"))}
    G0 = model.G.clone()
    for exp in bm.train_stream[1:]:
        strategy.train(exp, eval_streams=[])
    assert {k: v for k, v in _digest(model).items()
            if not k.startswith(("G", "stats.", "weight"))} == fixed
    assert not torch.equal(model.G, G0)
    x, y = dataset_tensors(bm.test_stream[0].dataset)
    model.eval()
    with torch.no_grad():
        h = torch.relu(model.backbone_features(model.embed(x)) @ model.W)
        logits = model(x)
    seen = model.stats.counts > 0
    assert torch.allclose(logits[:, seen], (h @ model.weight.T)[:, seen], atol=1e-4)
    assert strategy.experience_extras()["projection_width"] == 300
