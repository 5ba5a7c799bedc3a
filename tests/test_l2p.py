"""L2P (shared/specs/prompt-comparators.md, "Tests that prove it" 1): the prompted sequence,
the head input, top-N selection, the batch vote, the pull term; end to end."""
import pytest
import torch
import torch.nn.functional as F

from clplatform import create_backbone
from clplatform.strategies.l2p import L2PModel, L2POptions

from conftest import TINY_GLYPHS


def _model(**opts) -> L2PModel:
    torch.manual_seed(0)
    backbone = create_backbone("vit-glyphs", pretrained=False)
    return L2PModel(backbone, 10, L2POptions(**opts)).eval()


def test_defaults_are_the_ports():
    from clplatform.registry import STRATEGIES
    o = L2POptions()
    assert (o.pool_size, o.length, o.top_k, o.pull_weight, o.head_type, o.grad_clip) == \
        (10, 5, 5, 0.1, "prompt", 1.0)
    defaults = STRATEGIES.get("l2p").traits.train_defaults
    assert (defaults.batch_size, defaults.epochs) == (16, 5)
    assert defaults.lr == pytest.approx(1.875e-3)


def test_more_prompts_than_the_pool_is_a_user_error():
    from clplatform.errors import UserError
    with pytest.raises(UserError, match="top_k = 11"):
        _model(top_k=11)


def test_no_prompt_is_the_plain_vit():
    model = _model(top_k=0, head_type="token")
    x = torch.rand(3, 1, 32, 32)
    tokens = model.frozen_tokens(x)
    idx = model.select(model.query(tokens))
    assert idx.shape == (3, 0)
    assert torch.allclose(model.prompted(tokens, idx), model.vit_features(x), atol=1e-6)
    assert torch.allclose(model.query(tokens), model.vit_features(x), atol=1e-6)


def test_prompt_tokens_sit_after_cls_with_its_position_embedding():
    model = _model()
    x = torch.rand(2, 1, 32, 32)
    tokens = model.frozen_tokens(x)
    idx = torch.tensor([[3, 1, 4, 0, 9], [2, 7, 1, 8, 5]])
    seq = model.sequence(tokens, idx)
    n = 5 * 5
    assert seq.shape[1] == tokens.shape[1] + n
    assert torch.equal(seq[:, 0], tokens[:, 0])
    assert torch.equal(seq[:, 1 + n:], tokens[:, 1:])
    pos0 = model.vit.pos_embed[0, 0]
    expected = model.prompts[idx].reshape(2, n, model.dim) + pos0
    assert torch.equal(seq[:, 1:1 + n], expected)
    # head input: mean of output positions 1..N*L after the final norm
    out = model.vit.norm(model.vit.blocks(model.vit.norm_pre(seq)))
    assert torch.allclose(model.features(seq), out[:, 1:1 + n].mean(1), atol=1e-6)


def test_top_n_by_cosine_batch_vote_and_pull_term():
    model = _model(pool_size=6, top_k=2)
    d = model.dim
    with torch.no_grad():
        model.keys.zero_()
        for i in range(6):
            model.keys[i, i] = 1.0
    q = torch.zeros(4, d)
    q[0, [0, 1, 2]] = torch.tensor([3.0, 2.0, 1.0])   # top-2: 0, 1
    q[1, [1, 4]] = torch.tensor([1.0, 2.0])           # 4, 1
    q[2, [5, 0]] = torch.tensor([2.0, 1.0])           # 5, 0
    q[3, [3, 5]] = torch.tensor([1.0, 2.0])           # 5, 3
    idx = model.select(q)
    assert idx.tolist() == [[0, 1], [4, 1], [5, 0], [5, 3]]
    # votes: 0:2, 1:2, 3:1, 4:1, 5:2 -> 0, 1 (ties to the lower id)
    assert model.select(q, batchwise=True).tolist() == [[0, 1]] * 4
    cos = F.normalize(q, dim=1)
    by_hand = (cos[0, 0] + cos[0, 1] + cos[1, 4] + cos[1, 1] + cos[2, 5] + cos[2, 0]
               + cos[3, 5] + cos[3, 3]) / 4
    assert float(model.pull(q, idx)) == pytest.approx(float(by_hand), abs=1e-6)


def test_batch_vote_at_test_only_with_both():
    x = torch.rand(6, 1, 32, 32)
    for mode, expect_vote in (("off", False), ("train", False), ("both", True)):
        model = _model(batchwise_prompt=mode)
        model(x)
        same = bool((model.last_selection == model.last_selection[:1]).all())
        assert same or not expect_vote
        if expect_vote:
            assert same


def test_old_head_rows_get_no_gradient():
    from clplatform.strategies.base import masked_cross_entropy
    model = _model()
    model.train()
    x = torch.rand(4, 1, 32, 32)
    tokens = model.frozen_tokens(x)
    q = model.query(tokens)
    idx = model.select(q)
    current = torch.zeros(10, dtype=torch.bool)
    current[[2, 3]] = True
    loss = masked_cross_entropy(model.head(model.prompted(tokens, idx)),
                                torch.tensor([2, 3, 2, 3]), current) - 0.1 * model.pull(q, idx)
    loss.backward()
    assert model.head.weight.grad[~current].abs().sum() == 0
    assert model.head.weight.grad[current].abs().sum() > 0
    assert model.prompts.grad[idx.unique()].abs().sum() > 0 and model.keys.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())


def test_l2p_end_to_end(runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run("l2p", "glyphs", stream_options=TINY_GLYPHS, seed=0, out=runs_dir,
                         epochs=2)
    assert run.status == "complete"
    exps, summary = run.experiences, run.summary
    assert summary["final_accuracy"] > 0.08  # 5 x chance (62 classes) after 2 epochs
    assert list(exps["modules_added"]) == [1, 1, 1]
    assert (exps["l2p.prompts_used"] >= 5).all()
    counts = exps["l2p.prompt_counts"].str.split("/").apply(lambda c: sum(map(int, c)))
    assert list(counts) == list(5 * exps["experience_size"])  # every sample x top-5
    pool = 10 * 5 * 96 + 10 * 96
    heads = exps["params_added"] - pool  # 97 per class seen (d + bias)
    assert (heads % 97 == 0).all() and heads.is_monotonic_increasing
    assert heads.iloc[-1] == 97 * 62
    # two passes at inference: query + prompted (longer sequence)
    frozen = clplatform.run("simplecil", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                            out=runs_dir)
    ratio = (summary["inference_flops_per_sample"]
             / frozen.summary["inference_flops_per_sample"])
    assert 2.0 < ratio < 5.0


def _vit_b_meta():
    import timm

    from clplatform.backbones import Backbone
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        return Backbone(vit, name="vit-b", in_chans=3, img_size=224, mean=(0.5,) * 3,
                        std=(0.5,) * 3)


def test_vit_b_parameter_counts_match_sema_table():
    """SEMA's deployment counts (CIFAR-100, ViT-B/16): L2P 0.123 M, DualPrompt (E-length
    20) 1.022 M: the spec's 122,980 and 1,021,540."""
    from clplatform.strategies.prompts import DualPromptOptions, PromptModel
    with torch.device("meta"):
        l2p = L2PModel(_vit_b_meta(), 100, L2POptions())
        trainable = sum(p.numel() for p in l2p.parameters() if p.requires_grad)
        assert trainable == 122_980 == L2POptions().parameters_added(768, 12, 100)
        dual = PromptModel(_vit_b_meta(), 100, DualPromptOptions(e_length=20))
        for _ in range(10):
            dual.add_experience()
    values = sum(t.latent.numel() for t in dual.g_prompts) + \
        sum(t.latent.numel() for e in dual.e_prompts for t in e) + \
        sum(k.latent.numel() for k in dual.keys) + dual.head.weight.numel() + \
        dual.head.bias.numel()
    assert values == 1_021_540


def test_vit_b_inference_cost_is_two_passes():
    """Inference FLOPs / one plain ViT-B pass (meta device, shapes only): the spec's 2.13
    (L2P: 222 tokens in the prompted pass) and 2.00 (DualPrompt), less one patch embedding
    (0.0066 of a pass): the frozen embedding is computed once and shared by both passes,
    which the official codes compute twice."""
    from clplatform.compute import FlopCount
    from clplatform.strategies.prompts import DualPromptOptions, PromptModel
    with torch.device("meta"):
        x = torch.empty(2, 3, 224, 224)
        with FlopCount() as plain:
            _vit_b_meta().eval()(x)
        l2p = L2PModel(_vit_b_meta(), 100, L2POptions()).eval()
        with FlopCount() as prompted:
            l2p(x)
        assert 2.13 - 0.0066 - 0.005 < prompted.total / plain.total < 2.13 - 0.0066 + 0.005
        dual = PromptModel(_vit_b_meta(), 100, DualPromptOptions(e_length=20))
        for _ in range(10):
            dual.add_experience()
            dual.finish_experience()
        with FlopCount() as prefixed:
            dual.eval()(x)
        assert 2.0 - 0.0066 - 0.005 < prefixed.total / plain.total < 2.0 - 0.0066 + 0.005
