"""``rlp`` (re-parameterised low-rank prompts, spec low-rank-and-mergeable.md section 5 and its
test 6): the factor init, the stored count formula, the r = L control equal to ``prompt``'s
init, inference FLOPs equal to ``prompt``'s, frozen factors, and the flags end to end."""
import hashlib

import pytest
import torch

from clplatform import create_backbone, create_strategy, create_stream
from clplatform.compute import inference_flops_per_sample
from clplatform.errors import UserError
from clplatform.strategies.base import StrategyContext, TrainSettings
from clplatform.strategies.prompts.quantizer import stored_bits
from clplatform.strategies.prompts.rlp import FactoredPrompt, factor_init, factoring_saves

from conftest import TINY_GLYPHS


def _strategy(bm, name="rlp", seed=0, **opts):
    torch.manual_seed(seed)
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=1, batch_size=16, lr=0.01))
    return create_strategy(name, ctx, **opts)


@pytest.fixture(scope="module")
def stream():
    return create_stream("glyphs", **TINY_GLYPHS, seed=0)


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("rank", [1, 2, 3, 5])
def test_svd_init_is_the_truncated_svd_split_evenly(rank):
    dense = torch.empty(2, 5, 96).uniform_(-1, 1)
    a, b = factor_init(dense, rank, "svd")
    assert a.shape == (2, 5, rank) and b.shape == (2, rank, 96)
    u, s, vh = torch.linalg.svd(dense.double(), full_matrices=False)
    best = (u[..., :rank] * s[..., None, :rank]) @ vh[..., :rank, :]  # Eckart-Young
    assert torch.allclose((a.double() @ b.double()), best, atol=1e-6)
    # the even split: A^T A = B B^T = S_r (both Gram matrices the singular values)
    for i in range(2):
        assert torch.allclose(a[i].T @ a[i], torch.diag(s[i, :rank]).float(), atol=1e-5)
        assert torch.allclose(b[i] @ b[i].T, torch.diag(s[i, :rank]).float(), atol=1e-5)
    if rank == 5:
        assert torch.allclose(a @ b, dense, atol=1e-5)


def test_random_init_has_the_draws_variance():
    torch.manual_seed(0)
    a, b = factor_init(torch.zeros(2, 200, 400), 4, "random")
    assert (a @ b).var().item() == pytest.approx(1 / 3, rel=0.05)


def test_factoring_saves_below_the_rank_limit():
    # spec: L.d / (L + d) = 4.97 (ViT-B, L = 5, d = 768) and 4.75 (vit-glyphs, d = 96)
    assert [factoring_saves(r, 5, 768) for r in (1, 4, 5)] == [True, True, False]
    assert [factoring_saves(r, 5, 96) for r in (1, 4, 5)] == [True, True, False]
    # the spec's counts per experience (E-prompts, 3 layers, k and v)
    assert 2 * 3 * 1 * (5 + 768) == 4638 and 2 * 3 * 5 * 768 == 23040
    assert 2 * 3 * 1 * (5 + 96) == 606 and 2 * 3 * 5 * 96 == 2880


def test_rank_above_the_prompt_length_is_refused(stream):
    with pytest.raises(UserError, match="rank 6 exceeds"):
        _strategy(stream, rank=6)
    _strategy(stream, rank=6, g_length=6, e_length=6)  # r = L allowed


@pytest.mark.parametrize("rank", [1, 2, 4])
@pytest.mark.parametrize("factor_g", [True, False])
def test_stored_count_formula(stream, rank, factor_g):
    strategy = _strategy(stream, rank=rank, factor_g=factor_g)
    model = strategy.model
    for experience in range(3):
        model.add_experience()
        model.finish_experience()
        e_values = sum(t.values for t in model.e_prompts[-1])
        assert e_values == 2 * 3 * rank * (5 + 96)                   # 2.e_layers.r.(L + d)
        assert sum(t.stored_bits for t in model.e_prompts[-1]) == 16 * e_values
        extras = strategy.experience_extras()
        g = 2 * 2 * rank * (5 + 96) if factor_g else 2 * 2 * 5 * 96
        assert extras["prompt_bytes"] == 2 * (g + (experience + 1) * 2 * 3 * rank * (5 + 96))
        assert extras["prompt_bytes_if_dense"] == 2 * (2 + 3 * (experience + 1)) * 2 * 5 * 96
        assert extras["e_prompt_stored_bytes_per_experience"] == 2 * 606 * rank
        assert extras["rank"] == rank and extras["factoring_saves"] and extras["merged"]
        assert extras["prompt_compression"] == pytest.approx(
            extras["prompt_bytes_if_dense"] / extras["prompt_bytes"])
        # inference uses the multiplied-out fp16 prompt, of rank r up to fp16 rounding
        for t in model.e_prompts[-1]:
            assert t.dense.values.dtype == torch.float16 and t.dense.values.shape == (2, 5, 96)
            sv = torch.linalg.svdvals(t())
            assert (sv[:, rank:] < 1e-2 * sv[:, :1]).all()


def test_quantized_factors_use_the_qprompt_storage(stream):
    strategy = _strategy(stream, rank=2, quantizer="kmeans", bits=2)
    model = strategy.model
    model.add_experience()
    model.finish_experience()
    for t in model.e_prompts[0]:
        assert t.a.stored.indices.dtype == torch.uint8 and len(t.a().unique()) <= 4
        assert t.stored_bits == stored_bits(2 * 5 * 2, 2) + stored_bits(2 * 2 * 96, 2)
        # the stored prompt is the product of the de-quantized factors
        assert torch.allclose(t(), t.a.stored.dequantize() @ t.b.stored.dequantize(),
                              atol=2e-2)


def test_full_rank_init_equals_prompt(stream):
    """At r = L the initial prompts equal ``prompt``'s (same seed): the same random draw,
    factorised and multiplied back (float rounding only); keys and head identical."""
    prompt, rlp = _strategy(stream, "prompt"), _strategy(stream, rank=5)
    for s in (prompt, rlp):
        torch.manual_seed(1)
        s.model.add_experience()
    pairs = [*zip(prompt.model.g_prompts, rlp.model.g_prompts),
             *zip(prompt.model.e_prompts[0], rlp.model.e_prompts[0])]
    assert len(pairs) == 5 and all(isinstance(r, FactoredPrompt) for _, r in pairs)
    for p, r in pairs:
        assert torch.allclose(p(), r(), atol=1e-6, rtol=0)
    assert torch.equal(prompt.model.keys[0].latent, rlp.model.keys[0].latent)
    assert torch.equal(prompt.model.head.weight, rlp.model.head.weight)


def test_inference_flops_equal_prompts(stream):
    from clplatform.data import dataset_tensors
    x, _ = dataset_tensors(stream.test_stream[0].dataset)
    flops = []
    for name, opts in [("prompt", {}), ("rlp", {}), ("rlp", {"rank": 4, "factor_g": False})]:
        model = _strategy(stream, name, **opts).model
        for _ in range(2):
            model.add_experience()
            model.finish_experience()
        model.seen[:] = True
        flops.append(inference_flops_per_sample(model, x[:4], "cpu"))
    assert flops[0] > 0 and flops[1] == flops[0] and flops[2] == flops[0]


def test_finished_factors_never_change(stream, pretrained_backbone):
    strategy = _strategy(stream, rank=2)
    model = strategy.model
    strategy.train(stream.train_stream[0], eval_streams=[])
    model.eval()
    first = model.e_prompts[0]
    stored = _digest([s for t in first for s in (t.a.stored.values, t.b.stored.values,
                                                  t.dense.values)])
    used = _digest([t() for t in first])
    g_before = _digest([p for t in model.g_prompts for p in t.trainable()])
    for exp in stream.train_stream[1:]:
        strategy.train(exp, eval_streams=[])
    model.eval()
    assert _digest([s for t in first for s in (t.a.stored.values, t.b.stored.values,
                                                t.dense.values)]) == stored
    assert _digest([t() for t in first]) == used
    assert _digest([p for t in model.g_prompts for p in t.trainable()]) != g_before
    assert all(not p.requires_grad for e in model.e_prompts for t in e for p in t.trainable())


FLAGS = [{}, {"rank": 2, "factor_g": False}, {"init": "random"},
         {"rank": 5}, {"quantizer": "kmeans", "bits": 2, "min_interval": 2}]


@pytest.mark.parametrize("flags", FLAGS)
def test_end_to_end(flags, runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run("rlp", "glyphs", stream_options=TINY_GLYPHS, seed=0, out=runs_dir,
                         epochs=2, strategy_options=flags)
    assert run.status == "complete"
    exps, summary = run.experiences, run.summary
    assert summary["final_accuracy"] > (0.2 if not flags else 0.1)  # chance: 1/62
    assert list(exps["modules_added"]) == [2, 3, 4]
    rank = flags.get("rank", 1)
    factor = rank * (5 + 96)
    g = 2 * 2 * (factor if flags.get("factor_g", True) else 5 * 96)
    e = 2 * 3 * factor * (exps["train_exp"] + 1)
    if "quantizer" in flags:
        per_tensor = stored_bits(2 * 5 * rank, 2) + stored_bits(2 * rank * 96, 2)  # A, B
        expected = per_tensor * (2 + 3 * (exps["train_exp"] + 1)) / 8
    else:
        expected = 2 * (g + e)
    assert list(exps["rlp.prompt_bytes"]) == list(expected)
    assert list(exps["rlp.rank"]) == [rank] * 3
    assert (exps["stored_bytes"] == exps["rlp.prompt_bytes"] + exps["rlp.key_bytes"]
            + exps["rlp.head_bytes"]).all()
