"""CODA-Prompt (``shared/specs/prompt-comparators.md``, "Tests that prove it" 3 and 4): the
component weights, the prefix the composed prompt becomes, Gram-Schmidt initialisation,
frozen old components, the orthogonality penalty, the code's cosine schedule and loader, and
the strategy end to end."""
import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from clplatform import create_backbone, create_stream
from clplatform.strategies.base import StrategyContext, TrainSettings, masked_cross_entropy
from clplatform.strategies.coda import (CODAModel, CODAOptions, CODAPrompt, cosine_factor,
                                        ortho_penalty, orthogonal_rows)

from conftest import TINY_GLYPHS


def _model(classes: int = 62, **opts) -> CODAModel:
    return CODAModel(create_backbone("vit-glyphs", pretrained=False), classes,
                     CODAOptions(**opts))


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def test_alpha_is_the_cosine_of_the_attended_query_and_the_key():
    model = _model()
    assert model.layers == 5 and len(model.attentions) == 5  # blocks 0-4 of 6
    assert _model(layers=9).layers == 6                          # capped at the depth
    chunk = model.grow(3)
    d = model.dim
    e1, e2 = torch.eye(d)[0], torch.eye(d)[1]
    with torch.no_grad():
        chunk.a[:] = e1 + e2
        chunk.k[:, 0], chunk.k[:, 1] = e1, e2
        chunk.k[:, 2] = -3 * e1  # negative weights stay (no softmax)
    alphas = model.alphas(e1[None])
    assert alphas.shape == (5, 1, 3)
    assert torch.allclose(alphas[:, 0], torch.tensor([1.0, 0.0, -1.0]).expand(5, 3), atol=1e-6)
    # random values: the code's einsum formula, normalise(q * A) . normalise(K)
    with torch.no_grad():
        for t in (chunk.a, chunk.k):
            t.normal_()
    q = torch.randn(4, d)
    expected = torch.einsum("lbmd,lmd->lbm", F.normalize(q[None, :, None] * chunk.a[:, None],
                                                         dim=-1),
                            F.normalize(chunk.k, dim=-1))
    assert torch.allclose(model.alphas(q), expected, atol=1e-5)
    # ablation without attention vectors: cos(q, K)
    plain = _model(attention=False)
    plain.grow(3).k.data.copy_(chunk.k)
    assert torch.allclose(plain.alphas(q), torch.einsum(
        "bd,lmd->lbm", F.normalize(q, dim=-1), F.normalize(chunk.k, dim=-1)), atol=1e-5)


def test_composed_rows_reach_prefix_attention_as_four_keys_then_four_values():
    model = _model().eval()
    chunk = model.grow(4)
    with torch.no_grad():
        for t in (chunk.p, chunk.k, chunk.a):
            t.normal_()
    seen = {}

    def record(layer):
        def hook(module, args):
            if module.prefix is not None:  # the prompted pass (the query pass has none)
                seen[layer] = module.prefix.clone()
        return hook
    handles = [attn.register_forward_pre_hook(record(i))
               for i, attn in enumerate(model.attentions)]
    x = torch.rand(3, 1, 32, 32)
    model(x)
    for h in handles:
        h.remove()
    q = model.query(model.embed(x))
    alphas = model.alphas(q)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    for layer in range(5):
        prompt = torch.einsum("bm,mld->bld", alphas[layer], chunk.p[layer])   # [B, 8, d]
        assert seen[layer].shape == (3, 2, 4, model.dim)
        assert torch.allclose(seen[layer][:, 0], prompt[:, :4], atol=1e-5)     # keys
        assert torch.allclose(seen[layer][:, 1], prompt[:, 4:], atol=1e-5)     # values
    assert all(attn.prefix is None for attn in model.attentions)  # reset after the pass
    assert model.blocks[5].attn.__class__.__name__ != "PrefixAttention"


@pytest.mark.parametrize("mode", ["span", "code"])
def test_gram_schmidt_rows_are_unit_and_orthogonal_to_every_earlier_row(mode):
    torch.manual_seed(0)
    orthonormal = torch.linalg.qr(torch.randn(40, 6))[0].T                 # 6 x 40
    trained = orthonormal + 0.3 * torch.randn(6, 40)                       # drifted
    for old in ([orthonormal] if mode == "code" else [orthonormal, trained]):
        new, exhausted = orthogonal_rows(old, 5, mode)
        assert exhausted == 0 and new.shape == (5, 40)
        assert torch.allclose(new.norm(dim=1), torch.ones(5), atol=1e-6)
        assert (new @ old.T).abs().max() < 1e-5
        gram = new @ new.T
        assert (gram - torch.eye(5)).abs().max() < 1e-5
    # the space runs out: rows beyond the dimension are unit draws, counted
    new, exhausted = orthogonal_rows(torch.linalg.qr(torch.randn(8, 6))[0].T, 4, mode)
    assert exhausted == 2 and torch.allclose(new.norm(dim=1), torch.ones(4), atol=1e-6)


def test_ortho_penalty_values():
    assert float(ortho_penalty(torch.eye(3))) == pytest.approx(0.0)
    assert float(ortho_penalty(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))) == pytest.approx(0.5)


def test_vit_b_geometry_stores_the_spec_counts():
    """ViT-B/16 on CIFAR-100 (10 tasks): 3,916,900 values (spec, SEMA's deployment count)."""
    assert CODAOptions().parameters_added(768, 12, 100) == 3_916_900
    assert 5 * 10 * (8 * 768 + 2 * 768) == 384_000  # per experience


def test_cosine_schedule_of_the_code():
    assert cosine_factor(0, 20, "formula") == 1.0
    assert cosine_factor(19, 20, "formula") == pytest.approx(0.0157, abs=5e-5)
    # the code's scheduler is one epoch late: epochs 0 and 1 at lr, the last at 0.098 lr
    assert cosine_factor(0, 20) == cosine_factor(1, 20) == 1.0
    assert cosine_factor(2, 20) == pytest.approx(math.cos(99 * math.pi / 3800))
    assert cosine_factor(19, 20) == pytest.approx(math.cos(99 * math.pi * 18 / 3800))
    assert cosine_factor(19, 20) == pytest.approx(0.0975, abs=5e-4)
    assert cosine_factor(0, 1) == cosine_factor(5, 20, "constant") == 1.0


def test_old_head_rows_get_zero_gradient():
    model = _model(classes=6)
    features = torch.randn(5, model.dim)
    current = torch.tensor([False, False, False, True, True, True])
    masked_cross_entropy(model.logits(features), torch.tensor([3, 4, 5, 3, 4]),
                         current).backward()
    assert torch.equal(model.head.weight.grad[:3], torch.zeros(3, model.dim))
    assert torch.equal(model.head.bias.grad[:3], torch.zeros(3))
    assert model.head.weight.grad[3:].abs().sum() > 0


class _LearningRates(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.epochs: list[list[float]] = []

    def before_training_epoch(self, strategy, **kwargs):
        self.epochs.append([])

    def before_training_iteration(self, strategy, **kwargs):
        self.epochs[-1].append(strategy.optimizer.param_groups[0]["lr"])


def test_training_freezes_old_components_and_follows_the_schedule(pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    rates = _LearningRates()
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=3, batch_size=16, lr=0.01), plugins=[rates])
    strategy = CODAPrompt(ctx, CODAOptions())
    model = strategy.coda
    first, second = bm.train_stream[0], bm.train_stream[1]
    strategy.train(first, eval_streams=[])
    # 100 / 3 experiences -> 33 components; the loader drops the last incomplete batch
    n = len(first.dataset)
    assert model.component_count == 33 and n % 16
    assert [len(e) for e in rates.epochs] == [n // 16] * 3
    assert all(len(set(e)) == 1 for e in rates.epochs)  # stepped once per epoch
    assert [e[0] for e in rates.epochs] == pytest.approx(
        [0.01, 0.01, 0.01 * math.cos(99 * math.pi / 400)])
    old = {name: getattr(model.components[0], name).detach().clone() for name in "pka"}
    before = _digest(old.values())
    assert not any(p.requires_grad for p in model.components[0].parameters())
    strategy.train(second, eval_streams=[])
    # the first experience's rows are bitwise unchanged after training the second
    assert model.component_count == 66
    assert _digest(getattr(model.components[0], name) for name in "pka") == before
    # the initialisation against trained (no longer orthonormal) rows: 10 more components
    model.add_experience(10)
    assert model.exhausted == 0
    for layer in range(model.layers):
        for name in "kap":
            rows = model.rows(name, layer).flatten(1)  # P flattened: 8 x 96 values
            earlier, latest = rows[:66], rows[66:]
            assert (earlier @ earlier.T - torch.eye(66)).abs().max() > 1e-3  # trained
            assert torch.allclose(latest.norm(dim=1), torch.ones(10), atol=1e-5)
            assert (latest @ earlier.T).abs().max() < 1e-5
            assert (latest @ latest.T - torch.eye(10)).abs().max() < 1e-5


def test_end_to_end_records(runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run("coda-prompt", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                         out=runs_dir, epochs=2, batch_size=16)
    assert run.status == "complete"
    exps, summary = run.experiences, run.summary
    assert list(exps["coda-prompt.components"]) == [33, 66, 99]
    assert list(exps["modules_added"]) == [1, 2, 3]
    per_experience = 5 * 33 * (8 * 96 + 2 * 96)
    assert list(exps["coda-prompt.values_per_experience"]) == [per_experience] * 3
    assert (exps["stored_bytes"] == 4 * (exps["coda-prompt.component_values"]
                                         + exps["coda-prompt.head_values"])).all()
    assert 0 <= summary["final_task_selection_accuracy"] <= 1
    assert exps["coda-prompt.alpha_current"].notna().all()
    # two passes per image: the un-prompted query pass and the prompted pass
    frozen = clplatform.run("simplecil", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                            out=runs_dir)
    ratio = (summary["inference_flops_per_sample"]
             / frozen.summary["inference_flops_per_sample"])
    assert 1.4 < ratio < 2.2  # the embedding (conv stem) runs once for both passes


@pytest.mark.parametrize("flags", [
    {"init": "orthogonal-start", "ortho_weight": 0.1},   # the beta release / paper
    {"orthogonalise": "code", "lr_schedule": "formula", "drop_last": False},
    {"attention": False, "layers": 1, "length": 4, "components_per_experience": 3},
])
def test_flags_train_and_restore_from_checkpoint_state(flags, pretrained_backbone):
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)

    def build():
        ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                              TrainSettings(epochs=1, batch_size=16, lr=0.01))
        return CODAPrompt(ctx, CODAOptions(**flags))
    strategy = build()
    model = strategy.coda
    strategy.train(bm.train_stream[0], eval_streams=[])
    if flags.get("init") == "orthogonal-start":
        # all M rows orthonormal at the start (P flattened; K, A: 100 rows in 96-d have
        # orthonormal columns instead); experience 1 starts from rows 33..65
        p = model.reserve_p[0].flatten(1)
        assert (p @ p.T - torch.eye(100)).abs().max() < 1e-5
        reserve = model.reserve_k[:, 33:66].clone()
        strategy.train(bm.train_stream[1], eval_streams=[])
        assert torch.equal(model.reserve_k[:, 33:66], reserve)
        assert not torch.equal(model.components[1].k, reserve)  # trained from there
    else:
        strategy.train(bm.train_stream[1], eval_streams=[])
    count = flags.get("components_per_experience", 33)
    assert [c.count for c in model.components] == [count, count]
    assert model.layers == flags.get("layers", 5)
    # a resume: the checkpoint state regrows the model, the weights load into it
    other = build()
    other.restore_checkpoint_state(strategy.checkpoint_state(), list(bm.train_stream[:2]))
    other.model.load_state_dict(strategy.model.state_dict())
    x = torch.rand(4, 1, 32, 32)
    model.eval(), other.model.eval()
    assert torch.equal(model(x), other.model(x))
    assert strategy.experience_extras() == other.experience_extras()
    assert not any(p.requires_grad for p in other.coda.components.parameters())
