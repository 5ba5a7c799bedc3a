"""RMM (spec section 4): the closed-form basis on synthetic LoRAs (spec test 5), the model's
routing and merged passes, and the strategy on a tiny stream."""
import hashlib
import inspect
import math

import pytest
import torch

from clplatform import create_backbone, create_strategy, create_stream
from clplatform.strategies.base import StrategyContext, TrainSettings
from clplatform.strategies.rmm import RMMModel, RMMOptions
from clplatform.strategies.rmm import basis as rb

from conftest import TINY_GLYPHS


def _digest(t):
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _loras(n=5, out=24, inp=8, r=4, seed=0):
    """n synthetic LoRAs (up: out x r, down: r x in) as position matrices."""
    g = torch.Generator().manual_seed(seed)
    ups = torch.randn(n, out, r, generator=g, dtype=torch.float64)
    downs = torch.randn(n, r, inp, generator=g, dtype=torch.float64)
    return ups, downs


def _rel(stack, fb):
    return float(torch.linalg.norm(stack - fb.reconstruct_all()) / torch.linalg.norm(stack))


@pytest.mark.parametrize("center", [False, True])
def test_full_basis_is_exact(center):
    ups, downs = _loras()
    n, r = 5, 4
    for stack in (ups, downs.transpose(1, 2)):
        layer = rb.fit(stack, n, "layer", center)
        assert _rel(stack, layer) <= 1e-5 and layer.size == n and layer.tasks == n
        position = rb.fit(stack, min(r, n), "position", center)
        assert _rel(stack, position) <= 1e-5 and position.size == min(r, n)
    # the rebuilt dense update of each task equals its own
    up_fb, down_fb = rb.fit(ups, n), rb.fit(downs.transpose(1, 2), n)
    for t in range(n):
        delta_hat = up_fb.reconstruct(t) @ down_fb.reconstruct(t).T
        assert torch.allclose(delta_hat, ups[t] @ downs[t], atol=1e-10)


@pytest.mark.parametrize("coeff", ["layer", "position"])
@pytest.mark.parametrize("center", [False, True])
def test_error_falls_with_the_basis_and_equals_the_discarded_singular_values(coeff, center):
    ups, _ = _loras(n=5, r=6)
    n, p, r = ups.shape
    if coeff == "layer":
        x = ups.reshape(n, p * r).T
        x = x - x.mean(1, keepdim=True) if center else x
        sigma2 = torch.linalg.svdvals(x).pow(2)
        expected = [float(sigma2[k:].sum().sqrt()) for k in range(1, n + 1)]
    else:
        x = ups.permute(1, 2, 0)
        x = x - x.mean(2, keepdim=True) if center else x
        sigma2 = torch.linalg.svdvals(x).pow(2)                       # P x min(r, n)
        expected = [float(sigma2[:, k:].sum().sqrt()) for k in range(1, n + 1)]
    errors = []
    for k in range(1, n + 1):
        fb = rb.fit(ups, k, coeff, center)
        err = float(torch.linalg.norm(ups - fb.reconstruct_all()))
        assert err == pytest.approx(fb.discarded, abs=1e-6)
        assert err == pytest.approx(expected[k - 1], abs=1e-6)
        errors.append(err)
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:]))
    assert errors[0] > errors[-1]
    assert errors[-1] < 1e-6


def test_fit_takes_no_data_and_stores_less_than_every_lora():
    assert list(inspect.signature(rb.fit).parameters) == ["factors", "k", "coeff", "center"]
    ups, _ = _loras(n=5, out=24, r=4)
    layer = rb.fit(ups, 2, "layer")
    assert layer.stored_values() == 24 * 4 * 2 + 2 * 5 < 5 * 24 * 4
    position = rb.fit(ups, 2, "position")
    assert position.stored_values() == 24 * (4 * 2 + 2 * 5)
    restored = rb.FactorBasis.from_state(layer.state())
    assert torch.equal(restored.reconstruct(3), layer.reconstruct(3))
    with pytest.raises(ValueError, match="coeff"):
        rb.fit(ups, 2, "rows")


# ---- the model -------------------------------------------------------------------------
def _model_with_tasks(opts, n=3, seed=0):
    """A vit-glyphs RMMModel with n synthetic tasks (random LoRAs, heads, prototypes)."""
    torch.manual_seed(seed)
    model = RMMModel(create_backbone("vit-glyphs"), 12, opts).eval()
    originals = []
    for t in range(n):
        classes = list(range(4 * t, 4 * t + 4))
        branches = model.add_experience(classes)
        with torch.no_grad():
            for b in branches:
                b.up.normal_(std=0.05)
            model.prototypes.add(torch.randn(8, model.dim),
                                 torch.tensor(classes).repeat(2))
        originals.append(model.take_branches())
    return model, originals


def _set_basis(model, originals, k, coeff="layer"):
    model.bases = [tuple(rb.fit(torch.stack([f[layer][i] if i == 0 else f[layer][i].T
                                             for f in originals]), k, coeff)
                         for i in (0, 1)) for layer in range(len(model.wrappers))]


def test_merged_pass_equals_the_task_lora_and_oracle_routing(pretrained_backbone):
    """With the full basis, the second pass of task t (W_0 + rebuilt delta, merged) gives the
    logits of the unmerged LoRA branch of task t (1e-5), with the oracle's task ids; with
    the prototype routing the sample goes where its nearest prototype's experience is."""
    model, originals = _model_with_tasks(RMMOptions(rank=4, alpha=4), n=3)
    _set_basis(model, originals, 3)
    x = torch.rand(6, 1, 32, 32)
    tasks = torch.tensor([0, 1, 2, 2, 1, 0])
    with torch.no_grad():
        out = model(x, tasks=tasks)
        assert torch.equal(model.last_selected, tasks)
        for t in range(3):
            for w, (up, down) in zip(model.wrappers, originals[t]):
                b = w.add_branch(0, w.out_features, 4, model.scale)
                b.up.copy_(up)
                b.down.copy_(down)
            rows = tasks == t
            ref = model.heads[t](model.features(model.embed(x[rows])))
            model.take_branches()
            assert (out[rows][:, model.head_classes[t]] - ref).abs().max() <= 1e-5
            others = [c for c in range(12) if c not in model.head_classes[t]]
            assert (out[rows][:, others] == -1000).all()
        routed = model(x)
        f0 = model.features(model.embed(x))
    expected = model.class_task[model.prototypes(f0).argmax(1)]
    assert torch.equal(model.last_selected, expected)
    assert torch.allclose(routed, model(x, tasks=expected))
    # W_0 is never written
    assert all(w.base.weight.data_ptr() == w0.data_ptr() for w, w0 in
               zip(model.wrappers, [w.base.weight for w in model.wrappers]))


def test_merge_mean_is_one_pass_with_all_heads(pretrained_backbone):
    from clplatform.compute import FlopCount
    model, originals = _model_with_tasks(RMMOptions(rank=4, alpha=4, merge="mean"), n=2)
    _set_basis(model, originals, 2)
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad(), FlopCount() as one:
        out = model(x)
    assert model.last_selected is None and (out[:, :8] > -1000).all()
    model.opts.merge = "rmm"
    with torch.no_grad(), FlopCount() as two:
        model(x, tasks=torch.tensor([0, 0, 0, 0]))
    with torch.no_grad(), FlopCount() as routed:
        model(x)
    with torch.no_grad(), FlopCount() as embed:
        model.embed(x)
    # the embedding (the convolutional stem) is shared; the blocks run twice
    blocks = one.total - embed.total
    assert routed.total == pytest.approx(one.total + blocks, rel=0.03)
    assert two.total == pytest.approx(one.total, rel=0.03)     # the oracle skips pass 1


# ---- the strategy -----------------------------------------------------------------------
def _strategy(bm, epochs=2, lr=3e-3, **opts):
    from clplatform.seeding import seed_everything
    seed_everything(0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=epochs, lr=lr, batch_size=32))
    return create_strategy("rmm", ctx, **opts)


def test_refit_keeps_old_parts_and_full_basis_is_exact(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy(bm, basis=3)
    strategy.train(bm.train_stream[0], eval_streams=[])
    model = strategy.model
    first = sorted(bm.train_stream[0].classes_in_this_experience)
    old = {"head": _digest(model.heads[0].weight),
           "w0": _digest(model.wrappers[0].base.weight),
           "prototypes": _digest(model.prototypes.sums[first])}
    assert strategy.experience_extras()["logit_gap"] <= 1e-5       # merged = unmerged
    for exp in bm.train_stream[1:]:
        strategy.train(exp, eval_streams=[])
        assert strategy.experience_extras()["logit_gap"] <= 1e-5
    assert old == {"head": _digest(model.heads[0].weight),          # frozen, not moved
                   "w0": _digest(model.wrappers[0].base.weight),
                   "prototypes": _digest(model.prototypes.sums[first])}
    assert all(len(w.branches) == 0 for w in model.wrappers)
    assert model.bases[0][0].size == 3
    assert max(strategy.task_error(t) for t in range(3)) < 1e-6
    extras = strategy.experience_extras()
    assert extras["basis_size"] == 3 and extras["max_task_error"] < 1e-6
    lora = 6 * 8 * (96 + 3 * 96)                                # the spec: 18,432
    assert extras["lora_params"] == lora
    assert extras["basis_values"] == 3 * lora and extras["coeff_values"] == 12 * 3 * 3


def test_end_to_end_records(runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run("rmm", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                         out=runs_dir, epochs=6, lr=3e-3,
                         strategy_options={"rank": 4, "alpha": 4})
    exps = run.experiences
    assert list(exps["rmm.basis_size"]) == [1, 2, 2]
    assert list(exps["rmm.tasks"]) == [1, 2, 3]
    errors = [[float(e) for e in s.split(";")] for s in exps["rmm.task_errors"]]
    assert [len(e) for e in errors] == [1, 2, 3]
    assert max(errors[0] + errors[1]) < 1e-6                    # k = t: exact
    assert max(errors[2]) > 0                                   # k = 2 < 3 tasks
    gaps = list(exps["rmm.logit_gap"])
    assert max(gaps[:2]) <= 1e-5 and gaps[2] > 1e-5             # merged = unmerged while exact
    stored, every = list(exps["stored_bytes"]), list(exps["rmm.every_lora_bytes"])
    assert stored[2] < every[2]                                 # the saving is real
    assert list(exps["rmm.backbone_passes"]) == [2, 2, 2]
    flops = list(exps["inference_flops_per_sample"])
    assert "task_selection_accuracy" in exps.columns
    assert run.summary["final_accuracy"] > 0.2
    acc = run.accuracy
    assert (acc[(acc["train_exp"] >= 0) & ~acc["seen"]]["accuracy"] == 0).all()
    assert all(f > 0 for f in flops)


def test_refit_from_originals_is_the_fit_of_the_trained_factors(pretrained_backbone):
    """``refit=originals``: the basis after every experience is the closed-form fit of the
    trained factors themselves (position coefficients, centred), and it stores every LoRA
    besides; ``reconstructed`` drops them."""
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    runs = {}
    for refit in ("originals", "reconstructed"):
        strategy = _strategy(bm, epochs=1, basis=1, coeff="position", center=True,
                             refit=refit)
        for exp in bm.train_stream:
            strategy.train(exp, eval_streams=[])
        runs[refit] = strategy
    s = runs["originals"]
    for layer, (up_fb, down_fb) in enumerate(s.model.bases):
        ups = torch.stack([task[layer][0] for task in s.originals])
        assert torch.allclose(up_fb.reconstruct_all(),
                              rb.fit(ups, 1, "position", True).reconstruct_all())
        assert up_fb.mean is not None and up_fb.size == 1
    lora = 6 * 8 * (96 + 3 * 96)
    assert s.experience_extras()["stored_bytes"] > 4 * 3 * lora     # keeps every LoRA
    assert runs["reconstructed"].experience_extras()["stored_bytes"] < \
        s.experience_extras()["stored_bytes"] - 4 * 2 * lora
    assert all(e > 0 for e in (s.task_error(t) for t in range(3)))
