"""InfLoRA (liangyanshuo/InfLoRA): the shared low-rank branch, the subspace design and DualGPM
memory on bare tensors, and the strategy on a tiny stream."""
import hashlib
import math

import pytest
import torch

from clplatform import create_backbone, create_strategy, create_stream
from clplatform.strategies.base import StrategyContext, TrainSettings
from clplatform.strategies.inflora import InfLoRAModel, InfLoRAOptions, cosine_factor
from clplatform.strategies.inflora import memory as gpm
from clplatform.strategies.lora import LoRALinear, LowRankBranch

from conftest import TINY_GLYPHS


def _orthonormal(d, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q[:, :k]


def _cov_with_spectrum(values, seed=0):
    """A covariance U diag(values) U^T with random orthonormal U (its singular values)."""
    u = _orthonormal(len(values), len(values), seed)
    return u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ u.T


# ---- the shared low-rank branch -----------------------------------------------------------
def test_new_branch_is_a_no_op_and_merge_reproduces_the_branch_forward():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 24)
    wrapper = LoRALinear(base)
    x = torch.randn(3, 5, 8)
    before = base(x)
    kv = wrapper.add_branch(8, 24, rank=2)
    assert torch.equal(wrapper(x), before)           # zero up: exact no-op
    q = wrapper.add_branch(0, 8, rank=3, scale=0.5)
    kv2 = wrapper.add_branch(8, 24, rank=2)
    with torch.no_grad():
        for b in (kv, q, kv2):
            b.up.normal_()
    out = wrapper(x)
    expected = before.clone()
    expected[..., 8:] += kv(x) + kv2(x)
    expected[..., :8] += 0.5 * (x @ q.down.T) @ q.up.T
    assert torch.allclose(out, expected, atol=1e-6)
    wrapper.merge(1)                                 # the first branch only
    assert len(wrapper.branches) == 2 and wrapper.slices == [(0, 8), (8, 24)]
    assert torch.allclose(wrapper(x), out, atol=1e-5)
    wrapper.merge()
    assert len(wrapper.branches) == 0
    assert torch.allclose(wrapper(x), out, atol=1e-5)
    assert torch.allclose(base(x), out, atol=1e-5)   # folded into the wrapped weight
    with pytest.raises(ValueError, match="outside"):
        wrapper.add_branch(20, 30, 2)


def test_branch_shapes():
    b = LowRankBranch(96, 192, 2)
    assert b.down.shape == (2, 96) and b.up.shape == (192, 2) and b.rank == 2
    assert torch.equal(b.up, torch.zeros(192, 2))
    assert b.delta_weight().shape == (192, 96)


# ---- design and memory --------------------------------------------------------------------
def test_design_avoids_a_stored_basis_and_is_interference_free():
    d, k, r = 16, 5, 3
    m = _orthonormal(d, k, seed=1)
    mem = gpm.LayerMemory(m, gpm.BASIS)
    cov = _cov_with_spectrum([float(2 ** -i) for i in range(d)], seed=2)
    down = gpm.design_down(cov, mem, r, 1 / math.sqrt(3))
    assert down.shape == (r, d)
    assert torch.linalg.norm(down @ m) < 1e-5
    # rows are orthonormal / sqrt 3
    assert torch.allclose(down @ down.T, torch.eye(r, dtype=torch.float64) / 3, atol=1e-10)
    x = m @ torch.randn(k, 7, dtype=torch.float64)       # inputs in the old subspace
    for seed in range(3):
        up = torch.randn(2 * d, r, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
        assert torch.linalg.norm(up @ down @ x) < 1e-5   # the update never touches them


def test_design_inside_a_stored_complement():
    d, r = 16, 3
    b = _orthonormal(d, 6, seed=3)                       # complement of a 10-dim M
    mem = gpm.LayerMemory(b, gpm.COMPLEMENT)
    cov = _cov_with_spectrum([float(i + 1) for i in range(d)], seed=4)
    down = gpm.design_down(cov, mem, r, 1.0)
    assert torch.allclose(down, down @ b @ b.T, atol=1e-10)
    assert mem.dim == 10


@pytest.mark.parametrize("eps", [0.8, 0.95, 0.99])
def test_first_memory_keeps_the_directions_below_the_energy_threshold(eps):
    spectrum = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625] + [0.01] * 24
    cov = _cov_with_spectrum(spectrum, seed=5)
    s2 = torch.tensor(spectrum, dtype=torch.float64) ** 2
    expected = max(int((torch.cumsum(s2 / s2.sum(), 0) < eps).sum()), 1)
    mem = gpm.update(cov, None, eps)
    assert mem.kind == gpm.BASIS and mem.basis.shape == (32, expected)
    top = _orthonormal(32, 32, seed=5)[:, :expected]     # the eigenvectors of cov
    assert torch.allclose((mem.basis @ mem.basis.T), top @ top.T, atol=1e-8)


def test_memory_grows_then_flips_to_the_complement_past_half_the_width():
    d = 16
    g = torch.Generator().manual_seed(6)
    first = _cov_with_spectrum([10.0] * 5 + [1e-3] * 11, seed=7)
    mem = gpm.update(first, None, 0.99)  # cumulative energy 0.2 ... 0.8 < 0.99: 4 kept
    assert mem.kind == gpm.BASIS and mem.dim == 4
    # new inputs in 6 fresh directions: the basis grows to 10 > d/2 -> complement of width 6
    fresh = torch.randn(d, d, generator=g, dtype=torch.float64)
    fresh = fresh - mem.projector() @ fresh
    q, _ = torch.linalg.qr(fresh)
    new_dirs = q[:, :6]
    cov = mem.basis @ mem.basis.T * 10 + new_dirs @ new_dirs.T * 10 + 1e-6 * torch.eye(d)
    old_basis = mem.basis
    mem = gpm.update(cov, mem, 0.99)
    assert mem.kind == gpm.COMPLEMENT and mem.basis.shape == (d, 6) and mem.dim == 10
    # the complement is orthogonal to everything stored
    assert torch.linalg.norm(mem.basis.T @ old_basis) < 1e-8
    assert torch.linalg.norm(mem.basis.T @ new_dirs) < 1e-8
    # a complement shrinks when new energy falls in it
    inside = mem.basis[:, :2]
    cov = torch.eye(d, dtype=torch.float64) * 1e-6 + inside @ inside.T * 10
    mem2 = gpm.update(cov, mem, 0.95)
    assert mem2.kind == gpm.COMPLEMENT and mem2.basis.shape[1] < 6
    assert torch.linalg.norm(mem2.basis.T @ inside) < 1e-6
    # nothing new: the memory is unchanged (the code skips the layer)
    same = gpm.update(old_basis @ old_basis.T, gpm.LayerMemory(old_basis, gpm.BASIS), 0.9)
    assert torch.equal(same.basis, old_basis)


def test_gpm_memory_of_inflora_b5_keeps_the_basis_past_half_the_width():
    """dual=False (methods/inflorab5.py update_GPM): the same growth, never the complement;
    the basis is capped at d columns."""
    d = 16
    g = torch.Generator().manual_seed(6)
    first = _cov_with_spectrum([10.0] * 5 + [1e-3] * 11, seed=7)
    mem = gpm.update(first, None, 0.99, dual=False)
    assert mem.kind == gpm.BASIS and mem.dim == 4
    fresh = torch.randn(d, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(fresh - mem.projector() @ fresh)
    new_dirs = q[:, :6]
    cov = mem.basis @ mem.basis.T * 10 + new_dirs @ new_dirs.T * 10 + 1e-6 * torch.eye(d)
    grown = gpm.update(cov, mem, 0.99, dual=False)
    assert grown.kind == gpm.BASIS and grown.basis.shape == (d, 10)     # > d/2, kept
    assert torch.equal(grown.basis[:, :4], mem.basis)                    # appended
    assert torch.allclose(grown.basis.T @ grown.basis, torch.eye(10, dtype=torch.float64),
                          atol=1e-8)
    dual = gpm.update(cov, mem, 0.99)
    assert dual.kind == gpm.COMPLEMENT and dual.dim == grown.dim == 10  # same subspace
    assert torch.allclose(dual.basis.T @ grown.basis, torch.zeros(6, 10, dtype=torch.float64),
                          atol=1e-8)
    full = gpm.update(torch.eye(d, dtype=torch.float64), grown, 1.0, dual=False)
    assert full.basis.shape == (d, d)                                    # capped at d
    opts = InfLoRAOptions(blocks=5)
    assert opts.resolved_memory() == "gpm" and InfLoRAOptions().resolved_memory() == "dualgpm"
    assert InfLoRAOptions(blocks=5, memory="dualgpm").resolved_memory() == "dualgpm"


def test_eps_schedule_is_linear_and_the_lr_factor_follows_the_code():
    assert [gpm.threshold(t, 10, 0.95) for t in (0, 5, 10)] == pytest.approx([0.95, 0.975, 1])
    assert gpm.threshold(3, 4, 0.98, 0.98) == 0.98                  # constant (paper)
    code = [cosine_factor(e, 20, "code") for e in range(20)]
    assert code[0] == code[1] == 1.0
    assert code[-1] == pytest.approx(math.cos(99 * math.pi * 18 / 3800))  # ~0.098
    formula = [cosine_factor(e, 20, "formula") for e in range(20)]
    assert formula[-1] == pytest.approx(math.cos(99 * math.pi / 200))     # ~0.016
    assert cosine_factor(0, 1) == 1.0 and cosine_factor(7, 20, "constant") == 1.0


# ---- the model and the strategy -----------------------------------------------------------
def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().numpy().tobytes()).hexdigest()


def test_model_wraps_every_qkv_and_new_branches_leave_outputs_unchanged(pretrained_backbone):
    backbone = create_backbone("vit-glyphs")
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        reference = backbone.eval()(x)
    model = InfLoRAModel(backbone, 62, InfLoRAOptions()).eval()
    assert model.rank == 2 and len(model.wrappers) == 6
    model.add_experience([3, 5, 7])
    with torch.no_grad():
        assert torch.equal(model.features(x), reference)
        logits = model(x)
    assert (logits[:, [3, 5, 7]] > -1000).all() and (logits[:, 0] == -1000).all()
    b5 = InfLoRAModel(create_backbone("vit-glyphs"), 62, InfLoRAOptions(blocks=5))
    assert len(b5.wrappers) == 5
    # exactly the first 5 blocks: the 6th keeps its plain qkv Linear
    assert [isinstance(b.attn.qkv, LoRALinear) for b in b5.blocks] == [True] * 5 + [False]
    b5.add_experience([3, 5, 7])
    assert sum(p.numel() for p in b5.parameters() if p.requires_grad) == \
        5 * (2 * 96 * 2) + 97 * 3                      # U_k, U_v (r = 2) in 5 blocks + head


def _strategy(bm, epochs=4, lr=0.005, **opts):
    from clplatform.seeding import seed_everything
    seed_everything(0)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=epochs, lr=lr, batch_size=32))
    return create_strategy("inflora", ctx, **opts)


def test_updates_lie_outside_the_old_subspace_and_old_parts_keep_their_hashes(
        pretrained_backbone):
    """Unmerged, on a tiny stream: the second experience's k/v update U D maps the first
    experience's stored input subspace to ~0; the first branch, its head and every
    backbone weight are bit-identical afterwards; only U_t and head_t were optimised."""
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy(bm, merge=False)
    strategy.train(bm.train_stream[0], eval_streams=[])
    model = strategy.model
    old = {n: _digest(p) for n, p in model.named_parameters()}
    memory = [m for m in strategy.memory]
    assert all(m is not None and m.kind == gpm.BASIS for m in memory)
    strategy.train(bm.train_stream[1], eval_streams=[])
    new = {n: _digest(p) for n, p in model.named_parameters()}
    assert all(new[n] == h for n, h in old.items())                  # nothing old moved
    assert {id(p) for g in strategy.optimizer.param_groups for p in g["params"]} == \
        {id(w.branches[1].up) for w in model.wrappers} | {id(p) for p in
                                                          model.heads[1].parameters()}
    for w, m in zip(model.wrappers, memory):
        delta = w.branches[1].delta_weight().double()
        assert delta.abs().max() > 0                                 # it did train
        assert torch.linalg.norm(delta @ m.basis) < 1e-5 * max(1.0, float(delta.norm()))


def test_inflora_b5_trains_and_remembers_the_first_5_blocks_only(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy(bm, epochs=1, blocks=5)
    model = strategy.model
    last = _digest(model.blocks[5].attn.qkv.weight)
    for exp in bm.train_stream[:2]:
        strategy.train(exp, eval_streams=[])
    assert len(strategy.memory) == 5 and all(m.kind == gpm.BASIS for m in strategy.memory)
    assert _digest(model.blocks[5].attn.qkv.weight) == last
    extras = strategy.experience_extras()
    assert len(extras["subspace_dims"].split(";")) == 5
    assert extras["trained_params"] == 2 * 5 * (2 * 96 * 2)


def test_classifier_alignment_keeps_class_statistics_and_retrains_only_the_heads(
        pretrained_backbone):
    """InfLoRA+CA: per class the mean and covariance + 1e-4 I of its features; after the
    second experience every head (the first one's too) moves, nothing else does; the
    alignment logits are divided by the mean per-head norm and by 0.1."""
    from clplatform.data import dataset_tensors
    from clplatform.strategies.inflora.strategy import aligned_logits
    outs = [torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 1.0, 0.0]])]   # norms 5 and 1
    assert torch.allclose(aligned_logits(outs, 0.1),
                          torch.tensor([[3.0, 4.0, 0.0, 1.0, 0.0]]) / 3.0 / 0.1, atol=1e-6)
    assert torch.equal(aligned_logits(outs, 0.0), torch.cat(outs, dim=1))
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy(bm, epochs=1, classifier_alignment=True, ca_epochs=2,
                         ca_samples=16)
    model = strategy.model
    strategy.train(bm.train_stream[0], eval_streams=[])
    x, y = dataset_tensors(bm.train_stream[0].dataset)
    with torch.no_grad():
        f = model.features(x).double()
    c = int(y[0])
    mean, cov = strategy.class_stats[c]
    assert torch.allclose(mean, f[y == c].mean(0), atol=1e-5)
    hand = torch.cov(f[y == c].T) + 1e-4 * torch.eye(96, dtype=torch.float64)
    assert torch.allclose(cov.double(), hand, atol=1e-5)
    assert set(strategy.class_stats) == set(y.tolist())
    calls = []
    original = strategy.align_classifiers

    def spy():
        before = {n: _digest(p) for n, p in model.named_parameters()}
        original()
        after = {n: _digest(p) for n, p in model.named_parameters()}
        calls.append({n for n in before if before[n] != after[n]})
    strategy.align_classifiers = spy
    strategy.train(bm.train_stream[1], eval_streams=[])
    (moved,) = calls
    assert moved == {n for n, _ in model.named_parameters() if n.startswith("heads.")}
    assert {"heads.0.weight", "heads.1.weight"} <= moved
    assert not any(p.requires_grad for p in model.parameters())
    assert len(strategy.class_stats) == len(model.head_classes[0]) + len(model.head_classes[1])


def test_merged_equals_unmerged(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    runs = {}
    for merge in (True, False):
        strategy = _strategy(bm, merge=merge)
        for exp in bm.train_stream[:2]:
            strategy.train(exp, eval_streams=[])
        runs[merge] = strategy
    assert [len(w.branches) for w in runs[True].model.wrappers] == [0] * 6
    assert [len(w.branches) for w in runs[False].model.wrappers] == [2] * 6
    from clplatform.data import dataset_tensors
    x, _ = dataset_tensors(bm.test_stream[1].dataset)
    with torch.no_grad():
        merged, unmerged = (runs[m].model.eval()(x) for m in (True, False))
    assert torch.allclose(merged, unmerged, atol=1e-4)
    assert torch.equal(merged.argmax(1), unmerged.argmax(1))


def test_end_to_end_records(runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run("inflora", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                         out=runs_dir, epochs=6, lr=0.005)
    exps = run.experiences
    assert list(exps["inflora.eps"]) == pytest.approx([0.95, 0.95 + 0.05 / 3,
                                                       0.95 + 0.1 / 3])
    dims = [[int(v) for v in s.split(";")] for s in exps["inflora.subspace_dims"]]
    assert all(len(d) == 6 for d in dims)
    assert all(a <= b for d0, d1 in zip(dims, dims[1:]) for a, b in zip(d0, d1))
    assert set(";".join(exps["inflora.memory_stored"]).split(";")) <= {"basis", "complement"}
    per_exp = 6 * (2 * 96 * 2 + 2 * 96)                             # U_k, U_v, D per block
    assert list(exps["inflora.trained_params"] + exps["inflora.designed_params"]) == \
        [per_exp, 2 * per_exp, 3 * per_exp]
    assert list(exps["inflora.live_branch_params"]) == [0, 0, 0]     # merged
    # merged: one ViT pass at inference, the same FLOPs every experience but the heads
    flops = list(exps["inference_flops_per_sample"])
    assert max(flops) - min(flops) < 2 * 96 * 62
    assert run.summary["final_accuracy"] > 0.2
    acc = run.accuracy
    assert (acc[(acc["train_exp"] >= 0) & ~acc["seen"]]["accuracy"] == 0).all()


def test_repeated_classes_are_refused(pretrained_backbone):
    from clplatform.errors import UserError
    bm = create_stream("glyphs-domains", domains=("sans", "mono"), samples_per_class=1,
                       test_samples_per_class=1, seed=0)
    strategy = _strategy(bm, epochs=1)
    strategy.train(bm.train_stream[0], eval_streams=[])
    with pytest.raises(UserError, match="repeats class"):
        strategy.train(bm.train_stream[1], eval_streams=[])


@pytest.mark.slow  # two runs and a resume: about 25 s on 2 idle cores
def test_classifier_alignment_resumes_to_the_same_records(runs_dir, pretrained_backbone):
    """The class statistics are checkpoint state: stopped after experience 1 and resumed,
    the run's records are the uninterrupted run's."""
    import numpy as np

    import clplatform
    from conftest import stopped_after
    kwargs = dict(stream_options=TINY_GLYPHS, seed=0, epochs=1, lr=0.005,
                  strategy_options={"classifier_alignment": True, "ca_epochs": 1,
                                    "ca_samples": 8})
    reference = clplatform.run("inflora", "glyphs", out=runs_dir / "ref", **kwargs)
    with stopped_after(1):
        clplatform.run("inflora", "glyphs", out=runs_dir / "cut", **kwargs)
    (run_dir,) = (runs_dir / "cut").iterdir()
    resumed = clplatform.resume(run_dir)
    assert resumed.status == "complete"
    assert np.array_equal(resumed.accuracy["accuracy"], reference.accuracy["accuracy"])
    stored = list(reference.experiences["stored_bytes"])
    assert list(resumed.experiences["stored_bytes"]) == stored
    assert stored[1] - stored[0] > 4 * 96 * 96 * 10            # a covariance per class
