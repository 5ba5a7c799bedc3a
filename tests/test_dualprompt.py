"""DualPrompt as its official code (``dualprompt``) and ``prompt`` as the same implementation
with other defaults (shared/specs/prompt-comparators.md, "Tests that prove it" 2)."""
import dataclasses
import hashlib

import pytest
import torch
from avalanche.core import SupervisedPlugin

from clplatform import create_backbone, create_strategy, create_stream
from clplatform.strategies.base import StrategyContext, TrainSettings
from clplatform.strategies.prompts import DualPromptOptions, PromptModel, PromptOptions
from clplatform.strategies.prompts.model import majority_ids

from conftest import TINY_GLYPHS


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def test_dualprompt_defaults_are_the_ports_and_prompt_keeps_its_own():
    from clplatform.registry import STRATEGIES
    d, p = DualPromptOptions(), PromptOptions()
    assert (d.g_layers, d.g_length, d.e_layers, d.e_length, d.key_weight) == (2, 5, 3, 5, 1.0)
    assert (d.e_init, d.grad_clip, d.head_init, d.precision, d.batchwise_prompt) == \
        ("copy", 1.0, "trunc_normal", "fp32", False)
    assert (p.e_init, p.grad_clip, p.input_norm, p.head_init, p.precision) == \
        ("fresh", 0.0, "backbone", "torch", "fp16")
    defaults = STRATEGIES.get("dualprompt").traits.train_defaults
    assert (defaults.batch_size, defaults.epochs) == (24, 5)
    assert defaults.lr == pytest.approx(0.03 * 24 / 256)
    # one implementation: every field of dualprompt is an option of prompt
    assert [f.name for f in dataclasses.fields(d)] == [f.name for f in dataclasses.fields(p)]


def test_majority_vote_ties_go_to_the_lower_id():
    ids = torch.tensor([[3, 1], [1, 4], [3, 0], [4, 2]])
    # counts: 0:1, 1:2, 2:1, 3:2, 4:2 -> 1, 3, 4 then 0
    assert majority_ids(ids, 3, 5).tolist() == [1, 3, 4]
    assert majority_ids(ids, 4, 5).tolist() == [1, 3, 4, 0]
    assert majority_ids(torch.tensor([[2], [2], [0]]), 1, 3).tolist() == [2]


def _model(**opts) -> PromptModel:
    backbone = create_backbone("vit-glyphs", pretrained=False)
    return PromptModel(backbone, 10, DualPromptOptions(**opts))


def test_copy_init_copies_the_e_prompt_not_the_key():
    torch.manual_seed(0)
    model = _model()
    model.add_experience()
    with torch.no_grad():  # "training" of experience 0
        for t in [*model.e_prompts[0], model.keys[0]]:
            t.latent.add_(0.5)
    model.finish_experience()
    model.add_experience()
    for new, old in zip(model.e_prompts[1], model.e_prompts[0]):
        assert torch.equal(new.latent, old.latent)
        assert new.latent.requires_grad and not old.latent.requires_grad
    assert not torch.equal(model.keys[1].latent, model.keys[0].latent)
    fresh = _model(e_init="fresh")
    fresh.add_experience()
    fresh.add_experience()
    assert not torch.equal(fresh.e_prompts[1][0].latent, fresh.e_prompts[0][0].latent)


def test_batchwise_prompt_votes_at_test_only():
    torch.manual_seed(0)
    model = _model(batchwise_prompt=True)
    for _ in range(3):
        model.add_experience()
        model.finish_experience()
    with torch.no_grad():
        keys = torch.eye(model.dim)[:3]
        for k, key in zip(model.keys, keys):
            k.stored.values.copy_(key)
    queries = keys[[0, 2, 2, 1]] + 0.01
    model.eval()
    assert model.select(queries).tolist() == [2, 2, 2, 2]
    model.train()
    assert model.select(queries).tolist() == [0, 2, 2, 1]


def test_head_init_options():
    assert _model(head_init="zeros").head.weight.abs().sum() == 0
    head = _model(head_init="trunc_normal").head
    assert head.bias.abs().sum() == 0 and 0.01 < float(head.weight.detach().std()) < 0.03
    assert _model(head_init="torch").head.bias.abs().sum() > 0


def test_unit_input_skips_the_normalisation():
    model = _model()
    x = torch.rand(2, 1, 32, 32)
    normalised = model.embed(x)
    unit = _model(input_norm="unit")
    unit.load_state_dict(model.state_dict())
    assert not torch.allclose(unit.embed(x), normalised)
    assert torch.equal(unit.embed((x - 0.5) / 0.5), normalised)


class Watch(SupervisedPlugin):
    """Records at the start of each experience's training and the grad norm of each step."""

    def __init__(self):
        super().__init__()
        self.at_start: list[dict] = []
        self.norms: list[float] = []
        self.unclipped: list[float] = []

    def before_training_epoch(self, strategy, **kwargs):
        model = strategy.model
        if len(self.at_start) < len(model.keys):
            self.at_start.append({
                "e": [t.latent.detach().clone() for t in model.e_prompts[-1]],
                "prev_e": [t.latent.detach().clone() for t in model.e_prompts[-2]]
                if len(model.e_prompts) > 1 else None,
                "key": model.keys[-1].latent.detach().clone(),
                "prev_key": model.keys[-2].latent.detach().clone()
                if len(model.keys) > 1 else None})

    def after_backward(self, strategy, **kwargs):
        grads = [p.grad for g in strategy.optimizer.param_groups for p in g["params"]
                 if p.grad is not None]
        self.unclipped.append(float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    def after_update(self, strategy, **kwargs):
        grads = [p.grad for g in strategy.optimizer.param_groups for p in g["params"]
                 if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads]))))


def test_dualprompt_training_copy_init_frozen_prompts_and_clipping(pretrained_backbone):
    torch.manual_seed(0)
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    watch = Watch()
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info,
                          TrainSettings(epochs=2, batch_size=16, lr=0.05), plugins=[watch])
    strategy = create_strategy("dualprompt", ctx)
    model = strategy.model
    strategy.train(bm.train_stream[0], eval_streams=[])
    finished = _digest([t.latent for t in model.e_prompts[0]] + [model.keys[0].latent])
    finished_stored = _digest([t() for t in [*model.e_prompts[0], model.keys[0]]])
    for exp in bm.train_stream[1:]:
        strategy.train(exp, eval_streams=[])
    # at the start of experience 1 (and 2): E-prompt t == E-prompt t-1 bitwise, key not
    for start in watch.at_start[1:]:
        assert all(torch.equal(a, b) for a, b in zip(start["e"], start["prev_e"]))
        assert not torch.equal(start["key"], start["prev_key"])
    # ... and the copy trained on afterwards
    assert not torch.equal(model.e_prompts[1][0].latent, model.e_prompts[0][0].latent)
    # finished E-prompts and keys never change, latent and stored (fp32: the same values)
    assert _digest([t.latent for t in model.e_prompts[0]] + [model.keys[0].latent]) == finished
    model.eval()
    assert _digest([t() for t in [*model.e_prompts[0], model.keys[0]]]) == finished_stored
    assert torch.equal(model.e_prompts[0][0](), model.e_prompts[0][0].latent)
    # the global gradient norm is clipped at 1.0 (and clipping happened)
    assert max(watch.norms) <= 1.0 + 1e-5
    assert max(watch.unclipped) > 1.0


def test_dualprompt_end_to_end(runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run("dualprompt", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                         out=runs_dir, epochs=2)
    assert run.status == "complete"
    exps, summary = run.experiences, run.summary
    assert summary["final_accuracy"] > 0.2
    assert 0 <= summary["final_task_selection_accuracy"] <= 1
    assert list(exps["modules_added"]) == [2, 3, 4]
    # fp32 storage: 4 bytes per value (G: 2 x 2 x 5 x 96, E: 3 x 2 x 5 x 96 per experience)
    n = exps["train_exp"] + 1
    assert list(exps["dualprompt.prompt_bytes"]) == list(4 * (2 + 3 * n) * 2 * 5 * 96)
    assert list(exps["dualprompt.key_bytes"]) == list(4 * 96 * n)
