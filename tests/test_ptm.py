"""APER (adapters), RanPAC and EASE: the checks of ``shared/specs/ptm-comparators.md``
("Tests that prove it"), on the tiny ViT, bare tensors and a tiny stream."""
import hashlib

import pytest
import torch
import torch.nn.functional as F

from clplatform.data import dataset_tensors
from clplatform import create_backbone, create_strategy, create_stream
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
    from clplatform.strategies.ptm import RanPACOptions
    assert RanPACOptions().projection(768) == 10000 and RanPACOptions().projection(96) == 1250
    assert RanPACOptions(M=10000).projection(96) == 10000


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


def test_ranpac_ncm_head_is_the_class_means_argmax(pretrained_backbone):
    """head=ncm (the code's use_RP false), phase1 false (its 'ncm' row): no projection, no
    G; a class's score is the cosine to the mean of its training features."""
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy("ranpac", bm, head="ncm", phase1=False)
    model = strategy.model
    for exp in bm.train_stream[:2]:
        strategy.train(exp, eval_streams=[])
    assert model.M == 0 and model.G.numel() == 0 and model.W.numel() == 0
    assert not any(p.requires_grad for p in model.parameters())
    feats, labels = [], []
    with torch.no_grad():
        for exp in bm.train_stream[:2]:
            x, y = dataset_tensors(exp.dataset)
            feats.append(model.vit_features(x))       # phase1 false: the pre-trained ViT
            labels.append(y)
        feats, labels = torch.cat(feats), torch.cat(labels)
        classes = sorted(set(labels.tolist()))
        means = torch.stack([feats[labels == c].mean(0) for c in classes])
        xt, yt = dataset_tensors(bm.test_stream[1].dataset)
        logits = model(xt)
        query = model.vit_features(xt)
    expected = F.normalize(query, dim=1) @ F.normalize(means, dim=1).T
    assert torch.allclose(logits[:, classes], expected, atol=1e-5)
    assert torch.equal(logits.argmax(1), torch.tensor(classes)[expected.argmax(1)])
    assert (logits[:, [c for c in range(logits.shape[1]) if c not in classes]]
            == -1000.0).all()
    extras = strategy.experience_extras()
    assert extras["projection_width"] == 0 and "ridge" not in extras
    # a hand-sized problem through the same head: means (2, 0) and (0, 3)
    from clplatform.strategies.prototype_head import PrototypeHead
    head = PrototypeHead(2, 3)
    head.add(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]]),
             torch.tensor([0, 0, 1, 1]))
    assert torch.equal(head.prototypes[:2], torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    out = head(torch.tensor([[1.0, 1.1], [2.0, 0.5]]))
    assert out.argmax(1).tolist() == [1, 0] and float(out[0, 2]) == -1000.0


def test_ssf_at_init_std_0_is_the_identity_and_counts_its_parameters():
    from clplatform.strategies.ssf import ScaleShift, add_scale_shift, scale_shift_parameters
    backbone = create_backbone("vit-glyphs", pretrained=False).eval()
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        before = backbone(x)
        added = add_scale_shift(backbone.model, init_std=0.0)
        assert torch.equal(backbone(x), before)                 # exact identity
        vit = backbone.model
        assert len(added) == 2 + 6 * len(vit.blocks)
        ratio = vit.blocks[0].mlp.fc1.out_features / 96
        assert sum(p.numel() for m in added for p in m.parameters()) == \
            scale_shift_parameters(96, len(vit.blocks), ratio)
        assert vit.blocks[0].attn.qkv.ssf.scale.shape == (3 * 96,)
        assert vit.blocks[0].mlp.fc1.ssf.scale.shape == (vit.blocks[0].mlp.fc1.out_features,)
        assert vit.patch_embed.grid_size == vit.patch_embed.module.grid_size
        # shifting the final norm's output moves the features by exactly that shift
        vit.norm.ssf.shift.fill_(0.5)
        assert torch.allclose(backbone(x), before + 0.5, atol=1e-6)
    torch.manual_seed(0)
    near = ScaleShift(4000).requires_grad_(False)              # the code's N(1, .02) init
    assert abs(float(near.scale.mean()) - 1) < 2e-3 and abs(float(near.scale.std()) - 0.02) < 2e-3
    assert abs(float(near.shift.mean())) < 2e-3 and abs(float(near.shift.std()) - 0.02) < 2e-3
    assert scale_shift_parameters(768, 12) == 205824           # ViT-B/16


def test_ranpac_ssf_phase1_trains_only_the_scale_shift_parameters(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy("ranpac", bm, petl="ssf", M=200, epochs=2)
    model = strategy.model
    assert model.num_sets == 0 and len(model.ssf) == 2 + 6 * len(model.blocks)
    ssf_names = {n for n, _ in model.named_parameters() if ".ssf." in n}
    assert ssf_names and {n for n, p in model.named_parameters() if p.requires_grad} == \
        ssf_names
    before = _digest(model)
    strategy.train(bm.train_stream[0], eval_streams=[])
    after = _digest(model)
    params = {n for n, _ in model.named_parameters()}
    changed = {n for n in params if before[n] != after[n]}
    assert changed == ssf_names                   # every SSF site trained (the patch one too,
    assert "backbone.model.patch_embed.ssf.scale" in changed   # through the cached tokens)
    assert strategy.experience_extras()["trained_params"] == \
        sum(p.numel() for p in model.ssf.parameters())
    for exp in bm.train_stream[1:]:
        strategy.train(exp, eval_streams=[])
    assert {n: v for n, v in _digest(model).items() if n in params} == \
        {n: v for n, v in after.items() if n in params}        # frozen after phase 1
    x, _ = dataset_tensors(bm.test_stream[0].dataset)
    with torch.no_grad():                       # the cached path is the plain forward
        plain = model.backbone.model.forward_features(model.backbone.prepare(x))
        assert torch.allclose(model.backbone_features(model.embed(x)),
                              model.vit.forward_head(plain, pre_logits=True), atol=1e-5)


# ----------------------------------------------------------------------------- EASE
def test_ease_semantic_complement_by_hand():
    from clplatform.strategies.ptm.ease import semantic_complement
    torch.manual_seed(0)
    a_hat, a, b = torch.randn(3, 4), torch.randn(2, 4), torch.randn(2, 4)
    expected = torch.zeros(3, 4)
    for i in range(3):
        sims = torch.tensor([float(torch.cosine_similarity(a_hat[i], a[j], dim=0))
                             for j in range(2)])
        weights = sims.exp() / sims.exp().sum()
        expected[i] = weights[0] * b[0] + weights[1] * b[1]
    assert torch.allclose(semantic_complement(a_hat, a, b), expected, atol=1e-6)
    same = torch.randn(1, 4).expand(2, 4)
    assert torch.allclose(semantic_complement(a_hat, a, same), same[:1].expand(3, 4),
                          atol=1e-6)


def _ease_model(**opts):
    from clplatform.strategies.ptm import EASEOptions
    from clplatform.strategies.ptm.ease import EASEModel
    return EASEModel(create_backbone("vit-glyphs", pretrained=False), 6,
                     EASEOptions(**opts)).eval()


def test_ease_reweighted_logit_and_complement_in_the_model():
    torch.manual_seed(0)
    model = _ease_model()
    for _ in range(3):
        model.grow()
    model.class_exp.copy_(torch.tensor([0, 0, 1, 1, 2, -1]))
    for j, space in enumerate(model.subspaces):   # real prototypes of experiences >= j
        for c in range(5):
            if model.class_exp[c] >= j:
                space.add(torch.randn(2, 96), torch.tensor([c, c]))
    model.rebuild_prototypes()
    P = model.protos
    real = lambda c, j: model.subspaces[j].prototypes[c]  # noqa: E731
    # class 0 (experience 0) in subspace 2: complement over the classes of experiences 2..t
    from clplatform.strategies.ptm.ease import semantic_complement
    assert torch.allclose(P[0, 2], semantic_complement(real(0, 0)[None], real(4, 0)[None],
                                                       real(4, 2)[None])[0])
    assert torch.allclose(P[0, 2], real(4, 2))            # one newer class: its prototype
    # class 1 in subspace 1: over the classes of experiences 1..2 (2, 3, 4)
    newer = [2, 3, 4]
    assert torch.allclose(P[1, 1], semantic_complement(
        real(1, 0)[None], torch.stack([real(c, 0) for c in newer]),
        torch.stack([real(c, 1) for c in newer]))[0], atol=1e-6)
    assert torch.equal(P[2, 1], real(2, 1)) and torch.equal(P[4, 0], real(4, 0))
    # logit = own cosine + (alpha / t) * the other cosines (t = 2)
    features = torch.randn(4, 3, 96)
    logits = model.logits(features)
    for c in range(5):
        cos = [float(F.cosine_similarity(features[:, j], P[c, j][None], dim=1)[0])
               for j in range(3)]
        own = int(model.class_exp[c])
        expected = cos[own] + 0.1 / 2 * sum(v for j, v in enumerate(cos) if j != own)
        assert float(logits[0, c]) == pytest.approx(expected, abs=1e-5)
    assert float(logits[0, 5]) == -1000.0                    # unseen class masked


def test_ease_one_adapter_set_per_experience_t_plus_1_passes(pretrained_backbone, monkeypatch):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy("ease", bm, epochs=1)
    model = strategy.model
    strategy.train(bm.train_stream[0], eval_streams=[])
    old = _digest(torch.nn.ModuleList(model.adapter_set(0)))
    trained = []
    original = type(strategy).fit_tensors

    def spy(self, optimizer, *args, **kwargs):
        trained.append({id(p) for g in optimizer.param_groups for p in g["params"]})
        assert not any(p.requires_grad for a in model.adapter_set(0) for p in a.parameters())
        assert all(p.requires_grad for a in model.adapter_set(1) for p in a.parameters())
        original(self, optimizer, *args, **kwargs)
        grads = [p.grad for a in model.adapter_set(0) for p in a.parameters()]
        assert all(g is None for g in grads)                   # old set: no gradient
        assert any(p.grad is not None for a in model.adapter_set(1) for p in a.parameters())
    monkeypatch.setattr(type(strategy), "fit_tensors", spy)
    strategy.train(bm.train_stream[1], eval_streams=[])
    new = {id(p) for a in model.adapter_set(1) for p in a.parameters()}
    assert new <= trained[0] and len(trained[0]) == len(new) + 2   # + the cosine head (w, sigma)
    assert _digest(torch.nn.ModuleList(model.adapter_set(0))) == old
    assert model.num_sets == 2 and strategy.experience_extras()["adapter_sets"] == 2
    calls = []
    model.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    x, _ = dataset_tensors(bm.test_stream[0].dataset)
    with torch.no_grad():
        model(x[:3])
    assert len(calls) == 2                                      # t + 1 passes at t = 1


def test_ease_init_ptm_subspace_and_beta_by_hand():
    """use_init_ptm: a d-wide pre-trained block in front (real prototypes of every class,
    never complemented); logit of a class of experience i = beta cos_ptm + cos_own +
    (alpha / t) sum of the other adapter cosines (``linears.py`` forward_reweight)."""
    from clplatform.strategies.ptm.ease import semantic_complement
    torch.manual_seed(0)
    model = _ease_model(use_init_ptm=True, beta=0.7, alpha=0.3)
    assert model.protos.shape == (6, 1, 96)
    for _ in range(2):
        model.grow()
    assert model.protos.shape == (6, 3, 96) and model.passes == [None, 0, 1]
    model.class_exp.copy_(torch.tensor([0, 0, 1, 1, -1, -1]))
    for c in range(4):
        model.ptm_space.add(torch.randn(2, 96), torch.tensor([c, c]))
        for j, space in enumerate(model.subspaces):
            if model.class_exp[c] >= j:
                space.add(torch.randn(2, 96), torch.tensor([c, c]))
    model.rebuild_prototypes()
    P = model.protos
    assert torch.equal(P[:4, 0], model.ptm_space.prototypes[:4])       # real, all classes
    sub = [s.prototypes for s in model.subspaces]
    assert torch.allclose(P[0, 2], semantic_complement(sub[0][[0]], sub[0][[2, 3]],
                                                       sub[1][[2, 3]])[0])
    features = torch.randn(3, 3, 96)
    logits = model.logits(features)

    def cos(b, c, s):
        return float(F.cosine_similarity(features[b, s], P[c, s], dim=0))
    for b in range(3):
        for c in range(4):
            own = 1 + int(model.class_exp[c])
            other = 3 - own                       # the other adapter subspace (t = 1)
            expected = 0.7 * cos(b, c, 0) + cos(b, c, own) + 0.3 / 1 * cos(b, c, other)
            assert float(logits[b, c]) == pytest.approx(expected, abs=1e-5)
    assert (logits[:, 4:] == -1000.0).all()
    # beta 0: the pre-trained block no longer counts
    model.beta = 0.0
    only = model.logits(features)
    assert float(only[0, 2]) == pytest.approx(cos(0, 2, 2) + 0.3 * cos(0, 2, 1), abs=1e-5)
    # reweight false / moni_adam: one cosine over the concatenation
    model.plain_cosine = True
    flat = F.normalize(features.flatten(1), dim=1) @ F.normalize(P.flatten(1), dim=1).T
    assert torch.allclose(model.logits(features)[:, :4], flat[:, :4], atol=1e-6)


def test_ease_adapter_num_1_keeps_one_set_and_scores_like_aper(pretrained_backbone):
    """adapter_num = 1 (the code's moni_adam): one adapter set, trained in experience 1
    only; the pre-trained subspace in front; a class's score is the cosine between
    [pre-trained || adapted] and the class mean of those features, as APER's."""
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy("ease", bm, epochs=1, adapter_num=1)
    model = strategy.model
    trained = []
    for exp in bm.train_stream:
        strategy.train(exp, eval_streams=[])
        trained.append(strategy.experience_extras()["trained_params"])
    assert model.num_sets == 1 and model.passes == [None, 0]
    assert trained[0] > 0 and trained[1:] == [0, 0]
    assert strategy.experience_extras()["backbone_passes"] == 2
    x, y = dataset_tensors(bm.train_stream[2].dataset)
    xt, _ = dataset_tensors(bm.test_stream[2].dataset)
    with torch.no_grad():
        def concat(images):
            tokens = model.embed(images)
            return torch.cat([model.features_from_tokens(tokens, None),
                              model.features_from_tokens(tokens, 0)], dim=1)
        c = int(y[0])
        assert torch.allclose(model.protos[c].flatten(), concat(x[y == c]).mean(0), atol=1e-5)
        logits, feats = model(xt[:6]), concat(xt[:6])
    seen = model.class_exp >= 0
    expected = F.normalize(feats, dim=1) @ F.normalize(model.protos.flatten(1), dim=1).T
    assert torch.allclose(logits[:, seen], expected[:, seen], atol=1e-5)
    assert (logits[:, ~seen] == -1000.0).all()


@pytest.mark.slow
def test_ease_adapter_num_run_records_and_resumes(runs_dir, pretrained_backbone):
    """Records follow the cap (2 passes, no training after experience 1, constant FLOPs);
    stopped after experience 1 and resumed, the records are the uninterrupted ones."""
    import numpy as np

    import clplatform
    from conftest import stopped_after
    options = {"epochs": 1, "adapter_num": 1}
    reference = clplatform.run("ease", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                               out=runs_dir / "ref", strategy_options=options)
    exps = reference.experiences
    assert list(exps["ease.backbone_passes"]) == [2, 2, 2]
    assert list(exps["ease.adapter_sets"]) == [1, 1, 1]
    assert list(exps["ease.trained_params"])[1:] == [0, 0]
    flops = list(exps["inference_flops_per_sample"])
    assert flops[0] == flops[-1]
    with stopped_after(0):
        clplatform.run("ease", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                       out=runs_dir / "cut", strategy_options=options)
    (run_dir,) = (runs_dir / "cut").iterdir()
    resumed = clplatform.resume(run_dir)
    assert resumed.status == "complete"
    assert np.array_equal(resumed.accuracy["accuracy"], reference.accuracy["accuracy"])
    assert list(resumed.experiences["ease.feature_dim"]) == list(exps["ease.feature_dim"])


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("strategy, options", [
    ("aper", {"epochs": 2}), ("ranpac", {"epochs": 2, "M": 500}), ("ease", {"epochs": 2}),
    ("ranpac", {"epochs": 1, "M": 500, "petl": "ssf"}),
    ("ease", {"epochs": 1, "use_init_ptm": True})])
def test_end_to_end_on_a_tiny_stream(strategy, options, runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run(strategy, "glyphs", stream_options=TINY_GLYPHS, seed=0, out=runs_dir,
                         strategy_options=options)
    exps = run.experiences
    assert len(exps) == 3 and run.accuracy["accuracy"].notna().all()
    assert (exps["stored_bytes"] > 0).all() and (exps["params_added"] > 0).all()
    flops = list(exps["inference_flops_per_sample"])
    if strategy == "ease":   # t + 1 passes: one more ViT pass per experience
        ptm = int(options.get("use_init_ptm", False))   # and the pre-trained one in front
        assert list(exps["ease.backbone_passes"]) == [1 + ptm, 2 + ptm, 3 + ptm]
        assert list(exps["ease.feature_dim"]) == [96 * (t + ptm) for t in (1, 2, 3)]
        assert flops[2] - flops[1] == pytest.approx(flops[1] - flops[0], rel=1e-3)
        assert (1 + ptm) * (flops[1] - flops[0]) > 0.5 * flops[0]
    else:
        assert flops[0] == flops[-1]
    if strategy == "aper":   # two passes of the blocks from one embedding (the frozen conv
        # stem, computed once: exact); the blocks are ~57 % of a vit-glyphs pass
        base = clplatform.run("simplecil", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                              out=runs_dir).experiences["inference_flops_per_sample"][0]
        assert 1.5 < flops[0] / base < 2.0
        assert list(exps["aper.trained_params"])[1:] == [0, 0]
    if strategy == "ranpac":  # the projection is counted: d x M MACs more than the ViT
        assert list(exps["ranpac.projection_width"]) == [500] * 3


# ----------------------------------------------------------------------------- CPU preset
def test_sema_table1_cpu_preset_sets_5_epochs_for_the_slow_comparators_only():
    from clplatform.app.presets import PRESETS, preset_overrides, preset_strategies
    from clplatform.app.spec import make_spec, resolve
    from clplatform.app.sweep import plan
    from clplatform.errors import UserError
    assert preset_strategies("sema-table1-cpu") == preset_strategies("sema-table1")
    assert preset_strategies("sema-appendix-cpu") == preset_strategies("sema-appendix")
    assert preset_overrides(None) == {} and PRESETS["sema-table1"].overrides == {}
    names = preset_strategies("sema-table1-cpu")

    def epochs(cells):
        out = {}
        for cell in cells:
            resolved = resolve(cell.spec)
            hparams = getattr(resolved.hparams, "epochs", None)
            out[cell.spec.strategy] = hparams if hparams is not None else \
                resolved.settings().epochs
        return out
    cpu = epochs(plan(names, ["glyphs"], [0], {}, make_spec(),
                      preset_overrides("sema-table1-cpu")))
    official = epochs(plan(names, ["glyphs"], [0], {}, make_spec()))
    assert official["coda-prompt"] == official["inflora"] == official["aper"] == 20
    assert {k for k in names if cpu[k] != official[k]} == {"coda-prompt", "inflora", "aper"}
    assert cpu["coda-prompt"] == cpu["inflora"] == cpu["aper"] == 5
    # the command line wins over the preset: --epochs (training setting), --set (aper's)
    mine = epochs(plan(names, ["glyphs"], [0], {},
                       make_spec(epochs="3", strategy_options={"epochs": "2"}),
                       preset_overrides("sema-table1-cpu")))
    assert mine["inflora"] == 3 and mine["aper"] == 2
    appendix = epochs(plan(preset_strategies("sema-appendix-cpu"), ["glyphs"], [0], {},
                           make_spec(), preset_overrides("sema-appendix-cpu")))
    assert appendix["ease"] == appendix["ranpac"] == 5
    with pytest.raises(UserError, match="unknown preset"):
        preset_overrides("sema-table1-gpu")
