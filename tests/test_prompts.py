"""Prompt strategies: the quantizer, prefix attention, storage accounting, frozen prompts,
and every ablation flag end to end on the tiny stream."""
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clplatform import create_backbone, create_strategy, create_stream
from clplatform.strategies.base import StrategyContext, TrainSettings
from clplatform.strategies.prompts import PrefixAttention, TensorQuantizer, kmeans_1d, stored_bits
from clplatform.strategies.prompts.quantizer import assign, kl_divergence, uniform_levels

from conftest import TINY_GLYPHS


@pytest.mark.parametrize("k", [2, 4, 16])
def test_kmeans_matches_scikit_learn(k):
    from sklearn.cluster import KMeans
    gen = torch.Generator().manual_seed(k)
    data = torch.cat([torch.randn(300, generator=gen) * 0.3 + m for m in (-3.0, 0.0, 1.0, 4.0)])
    ours = kmeans_1d(data, k)
    init = torch.quantile(data, (torch.arange(k) + 0.5) / k).numpy().reshape(-1, 1)
    theirs = KMeans(n_clusters=k, init=init, n_init=1, max_iter=300, tol=0).fit(
        data.numpy().reshape(-1, 1).astype(np.float64))
    np.testing.assert_allclose(ours.numpy(), np.sort(theirs.cluster_centers_.ravel()),
                               atol=1e-4)
    # deterministic, sorted, and every value goes to its nearest centroid
    assert torch.equal(ours, kmeans_1d(data, k)) and torch.equal(ours, ours.sort().values)
    nearest = (data[:, None] - ours[None]).abs().argmin(dim=1)
    assert torch.equal(assign(data, ours), nearest)


def test_uniform_levels_and_kl():
    assert torch.allclose(uniform_levels(torch.tensor([-1.0, 3.0, 0.5]), 5),
                          torch.tensor([-1.0, 0.0, 1.0, 2.0, 3.0]))
    p = torch.tensor([0.5, 0.5])
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-6)
    assert kl_divergence(torch.tensor([0.9, 0.1]), p) == pytest.approx(
        0.9 * np.log(1.8) + 0.1 * np.log(0.2), rel=1e-4)


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("method", ["kmeans", "uniform"])
def test_quantizer_forward_values_and_straight_through_gradient(bits, method):
    q = TensorQuantizer(bits=bits, method=method)
    w = torch.randn(2, 5, 16, requires_grad=True)
    out = q(w)
    assert len(out.detach().unique()) <= 2 ** bits
    assert not torch.equal(out, w)
    upstream = torch.randn_like(w)
    (out * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)  # identity gradient
    assert q.codebook.grad is None and not q.codebook.requires_grad
    # the stored form: b-bit indices + fp16 codebook, decoding to what the forward used
    stored = q.freeze(w)
    assert stored.indices.dtype == torch.uint8 and stored.values.dtype == torch.float16
    assert torch.allclose(stored.dequantize(), out.detach(), atol=1e-2)
    assert stored.stored_bits == bits * w.numel() + 16 * 2 ** bits


def test_standardisation_is_per_tensor():
    w = torch.randn(200) * 5 + 10
    plain = TensorQuantizer(bits=2, standardize=False)
    scaled = TensorQuantizer(bits=2, standardize=True)
    plain(w), scaled(w)
    assert scaled.codebook.abs().max() < 3 < plain.codebook.abs().max()
    assert torch.allclose(plain.codebook, scaled.codebook * w.std() + w.mean(), atol=1e-3)


def test_cac_refits_only_when_both_conditions_hold():
    q = TensorQuantizer(bits=2, refit="cac", min_interval=3, kl_threshold=0.05)
    base = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    skewed = torch.where(base > 0, base * 4, base)  # reshapes the standardised distribution
    q(base)
    assert (q.fits, q.refits) == (1, 0)                      # always fit at the start
    q(skewed)
    q(skewed)
    assert q.refits == 0                                      # drifted, but too soon
    for _ in range(5):
        q(base)
    assert q.refits == 0                                      # interval passed, no drift
    q(skewed)
    assert q.refits == 1 and q.steps_since_fit == 0           # both hold: re-fit
    every = TensorQuantizer(bits=2, refit="every")
    for _ in range(4):
        every(base)
    assert every.refits == 3
    q.eval()
    q(skewed * 3)
    assert q.fits == 2                                        # inference never re-fits


def test_stored_bits_formula_and_the_spec_example():
    # 10 experiences, E-prompts in 3 blocks + G-prompt in 2, length 5, d = 768 (k and v)
    tensors = 10 * 3 + 2
    numel = 2 * 5 * 768
    assert tensors * stored_bits(numel, None) / 8 == 491520        # 491.5 KB at fp16
    assert tensors * stored_bits(numel, 2) / 8 == pytest.approx(61.7e3, rel=2e-3)
    assert tensors * stored_bits(numel, 1) / 8 == pytest.approx(30.8e3, rel=2e-3)


def test_prefix_attention_equals_attention_over_concatenated_keys():
    import timm
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                            img_size=32, patch_size=8).eval()
    attn = vit.blocks[0].attn
    wrapped = PrefixAttention(attn)
    x = torch.randn(2, 17, 192)
    assert torch.equal(wrapped(x), attn(x))  # no prefix: timm's own forward
    prefix = torch.randn(2, 2, 4, 192)
    wrapped.prefix = prefix
    out = wrapped(x)
    # by hand: keys/values of the prefix in front, per head
    q, k, v = attn.qkv(x).reshape(2, 17, 3, 3, 64).permute(2, 0, 3, 1, 4)
    pk, pv = (prefix[:, i].reshape(2, 4, 3, 64).transpose(1, 2) for i in (0, 1))
    k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
    weights = (q @ k.transpose(-2, -1) / 8.0).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 17, 192))
    assert torch.allclose(out, expected, atol=1e-5)


def _strategy(bm, name="qprompt", **opts):
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=2, batch_size=16, lr=0.01))
    return create_strategy(name, ctx, **opts)


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def test_finished_prompts_never_change(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy(bm, quantize_head=True)
    model = strategy.model
    first = bm.train_stream[0]
    strategy.train(first, eval_streams=[])
    model.eval()
    frozen = [*model.e_prompts[0], model.keys[0]]
    before = _digest([t() for t in frozen])
    classes = model.head_rows[0].classes
    head_before = _digest([model.head.weight[classes], model.head.bias[classes]])
    g_before = _digest([t.latent for t in model.g_prompts])
    for exp in bm.train_stream[1:]:
        strategy.train(exp, eval_streams=[])
    model.eval()
    assert _digest([t() for t in frozen]) == before
    assert _digest([model.head.weight[classes], model.head.bias[classes]]) == head_before
    assert _digest([t.latent for t in model.g_prompts]) != g_before  # G keeps training
    assert all(not t.latent.requires_grad for e in model.e_prompts for t in e)
    # inference uses exactly the stored tensors: at most 2^b values per E-prompt tensor
    for e in model.e_prompts:
        for t in e:
            assert len(t().unique()) <= 4 and t.stored.indices.dtype == torch.uint8


def test_task_selection_is_recorded(pretrained_backbone):
    from clplatform.evaluator import evaluate

    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    strategy = _strategy(bm, name="prompt")
    strategy.train(bm.train_stream[0], eval_streams=[])
    from clplatform.data import dataset_tensors
    x, y = dataset_tensors(bm.test_stream[0].dataset)
    row = evaluate(strategy.model, x, y, 64, "cpu", 62, experience=0,
                   selection=strategy.selected_experiences)
    assert row["task_selection_accuracy"] == 1.0  # one key: always experience 0
    row = evaluate(strategy.model, x, y, 64, "cpu", 62, experience=1,
                   selection=strategy.selected_experiences)
    assert row["task_selection_accuracy"] == 0.0


FLAGS = [
    ("prompt", {}),
    ("prompt", {"noise": 0.01}),
    ("qprompt", {}),
    ("qprompt", {"bits": 1}),
    ("qprompt", {"bits": 4}),
    ("qprompt", {"schedule": "ptq"}),
    ("qprompt", {"refit": "every"}),
    ("qprompt", {"standardize": False}),
    ("qprompt", {"quantizer": "uniform"}),
    ("qprompt", {"quantize_keys": True, "quantize_head": True, "min_interval": 2}),
]


@pytest.mark.parametrize("name, flags", FLAGS)
def test_end_to_end_for_every_flag(name, flags, runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run(name, "glyphs", stream_options=TINY_GLYPHS, seed=0, out=runs_dir,
                         epochs=2, strategy_options=flags)
    assert run.status == "complete"
    assert all(run.config["strategy"][k] == v for k, v in flags.items())
    exps, summary = run.experiences, run.summary
    assert summary["final_accuracy"] > 0.2
    assert 0 <= summary["final_task_selection_accuracy"] <= 1
    assert list(exps["modules_added"]) == [2, 3, 4]  # G-prompt + one E-prompt per experience
    # storage accounting from the formula: (g_layers + e_layers x experiences) tensors
    quantized = run.config["strategy"]["quantizer"] != "none"
    bits = run.config["strategy"]["bits"] if quantized else None
    tensors = 2 + 3 * (exps["train_exp"] + 1)
    expected = tensors * stored_bits(2 * 5 * 96, bits) / 8
    assert list(exps[f"{name}.prompt_bytes"]) == list(expected)
    keys = (exps["train_exp"] + 1) * stored_bits(96, bits if flags.get("quantize_keys")
                                                 else None) / 8
    assert list(exps[f"{name}.key_bytes"]) == list(keys)
    assert (exps["stored_bytes"] == exps[f"{name}.prompt_bytes"] + exps[f"{name}.key_bytes"]
            + exps[f"{name}.head_bytes"]).all()
    if quantized and run.config["strategy"]["schedule"] == "qat":
        assert exps[f"{name}.kmeans_fits"].iloc[0] >= 5  # 2 G + 3 E tensors fitted at start
    if flags.get("refit") == "every":
        assert exps[f"{name}.kmeans_refits"].iloc[0] > 10
    if not quantized:
        assert exps[f"{name}.kmeans_fits"].sum() == 0


def test_two_forward_passes_are_counted(runs_dir, pretrained_backbone):
    """Inference cost is honest: the query pass and the prompted pass are both counted."""
    import clplatform
    kwargs = dict(stream_options=TINY_GLYPHS, seed=0, out=runs_dir, epochs=1)
    prompt = clplatform.run("prompt", "glyphs", **kwargs)
    frozen = clplatform.run("simplecil", "glyphs", **kwargs)
    ratio = (prompt.summary["inference_flops_per_sample"]
             / frozen.summary["inference_flops_per_sample"])
    assert 1.3 < ratio < 2.2
