"""Structured pruning (``clplat compress``; shared/specs/compute-reduction.md C, tests 8-11):
merged narrow layers equal the masked wide ones, ResRep's penalty and masks, C-SGD's
centripetal update and merge, the child run and its errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from clplatform import create_backbone
from clplatform.compute import FlopCount
from clplatform.errors import UserError
from clplatform.strategies.compress import (Centripetal, Compactors, CompressOptions, Data,
                                            compress, find_groups, measure_tokens)

from conftest import TINY_GLYPHS
from test_cli import invoke


def _vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_backbone("vit-glyphs", pretrained=False).eval()


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCount() as counter:
        model(x)
    return counter.total


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resrep_merged_narrow_mlp_equals_masked_wide_and_costs_drop_analytically():
    """Spec test 8: W1' = (Q W1)[kept], b1' = (Q b1)[kept], fc2' = fc2[:, kept]."""
    model = _vit()
    x = torch.rand(8, 1, 32, 32)
    groups = find_groups(model, ("mlp",))
    measure_tokens(model, groups, x)
    assert [g.units for g in groups] == [384] * 6 and {g.tokens for g in groups} == {17}
    compactors = Compactors(groups)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for q in compactors.weights:  # a trained compactor is no identity
            q.add_(0.05 * torch.randn(q.shape, generator=generator))
    dropped = [0, 40, 100, 7, 383, 200]
    for mask, n in zip(compactors.masks, dropped):
        mask[torch.randperm(384, generator=generator)[:n]] = False
    compactors.zero_masked()
    flops_wide, params_wide = _flops(model, x), _params(model)
    with torch.no_grad():
        wide = model(x)
    compactors.merge("mask")
    assert [g.units for g in groups] == [384 - n for n in dropped]
    assert [m.fc1.out_features for m in model.modules() if type(m).__name__ == "Mlp"] == \
        [384 - n for n in dropped]
    with torch.no_grad():
        narrow = model(x)
    assert (wide - narrow).abs().max() <= 1e-5
    d, n_tokens, removed = 96, 17, sum(dropped)
    # each removed unit takes a row and a bias of fc1 and a column of fc2 (the compactors
    # are held outside the model)
    assert params_wide - _params(model) == removed * (2 * d + 1)
    # per sample: fc1 row and fc2 column, n tokens each, 2 FLOPs per multiply-add; the
    # compactor's own product (n x 384 x 384 per layer) goes too
    compactor_flops = 8 * 6 * 2 * n_tokens * 384 * 384
    assert flops_wide - _flops(model, x) == compactor_flops + 8 * removed * 4 * n_tokens * d


def test_resrep_masked_row_norm_falls_by_lr_lambda_per_step():
    """Spec test 9, first half: G = m * dL/dQ + lambda Q_i/||Q_i||; plain SGD."""
    model = _vit()
    x = torch.rand(4, 1, 32, 32)
    groups = find_groups(model, ("mlp",))[:2]
    compactors = Compactors(groups)
    compactors.masks[0][[3, 5]] = False
    lr, lasso = 0.1, 1e-2
    optimizer = torch.optim.SGD(compactors.parameters(), lr=lr, momentum=0)
    q = compactors.weights[0]
    for _ in range(3):
        before = q.detach().norm(dim=1).clone()
        penalty = lasso * q.detach() / q.detach().norm(dim=1, keepdim=True)
        optimizer.zero_grad()
        (100 * model(x).pow(2).mean()).backward()
        compactors.penalise(lasso)
        assert torch.allclose(q.grad[[3, 5]], penalty[[3, 5]])  # no task gradient
        assert (q.grad[[0, 1]] - penalty[[0, 1]]).norm(dim=1).min() > 1e-4  # the task's too
        optimizer.step()
        after = q.detach().norm(dim=1)
        assert torch.allclose(before[[3, 5]] - after[[3, 5]], torch.full((2,), lr * lasso),
                              rtol=1e-4)


def test_resrep_masks_take_the_global_lowest_norms_in_steps_of_at_most_four():
    """Spec test 9, second half (rr/resrep_util.resrep_mask_model)."""
    model = _vit()
    groups = find_groups(model, ("mlp",))[:3]
    measure_tokens(model, groups, torch.rand(2, 1, 32, 32))
    compactors = Compactors(groups)
    generator = torch.Generator().manual_seed(0)
    norms = [torch.rand(384, generator=generator) + 1 for _ in groups]
    norms[2][:] = 1e-3 * torch.rand(384, generator=generator)  # layer 2: lowest everywhere
    with torch.no_grad():
        for q, n in zip(compactors.weights, norms):
            q.copy_(torch.diag(n))
    cost = groups[0].unit_flops
    budget = (3 * 384 - 400) * cost           # 400 channels must go
    compactors.update_masks(budget, 4, 1)
    assert compactors.masked == 4
    lowest = sorted((float(v), gi, u) for gi, n in enumerate(norms) for u, v in enumerate(n))
    assert {(gi, u) for _, gi, u in lowest[:4]} == {
        (gi, u) for gi, m in enumerate(compactors.masks) for u in (~m).nonzero().flatten()
        .tolist()}
    compactors.update_masks(budget, 4, 1)     # from scratch, at most 4 more than now
    assert compactors.masked == 8
    compactors.update_masks(budget, None, 1)  # no limit: down to the budget
    assert compactors.masked == 400
    kept = [int(m.sum()) for m in compactors.masks]
    assert kept[2] == 1                       # every layer keeps one, the lowest layer too
    masked_norms = torch.cat([n[~m] for n, m in zip(norms, compactors.masks)])
    kept_norms = torch.cat([n[m] for n, m in zip(norms[:2], compactors.masks[:2])])
    assert masked_norms.max() <= kept_norms.min()  # the global lowest (outside layer 2)


def test_csgd_cluster_distance_shrinks_by_the_predicted_factor_and_merges_exactly():
    """Spec test 10: (1 - lr(eta + eps))^t; merging identical rows changes nothing."""
    model = _vit()
    x = torch.rand(4, 1, 32, 32)
    groups = find_groups(model, ("mlp",))[:1]
    lr, eta, eps, t = 0.01, 1e-4, 0.05, 200
    state = Centripetal(groups, [100], eta, eps, seed=0)
    assert len(state.clusters[0]) == 100 and sum(map(len, state.clusters[0])) == 384
    cluster = next(c for c in state.clusters[0] if len(c) >= 2)
    weight = groups[0].in_linear.weight
    start = (weight[cluster[0]] - weight[cluster[1]]).norm().item()
    optimizer = torch.optim.SGD(state.parameters(), lr=lr, momentum=0)
    for _ in range(t):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        state.transform_gradients()
        optimizer.step()
    ratio = (weight[cluster[0]] - weight[cluster[1]]).norm().item() / start
    assert ratio == pytest.approx((1 - lr * (eta + eps)) ** t, rel=1e-4)
    # identical rows (and biases) within each cluster: the merge is exact
    with torch.no_grad():
        for c in state.clusters[0]:
            weight[c] = weight[c].mean(0)
            groups[0].in_linear.bias[c] = groups[0].in_linear.bias[c].mean()
        wide = model(x)
    assert state.residual() < 1e-5
    state.merge()
    assert groups[0].units == 100 and groups[0].owner.fc2.in_features == 100
    with torch.no_grad():
        assert (model(x) - wide).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["resrep", "csgd", "magnitude"])
def test_every_method_prunes_heads_mlp_and_adapters_into_an_exact_narrow_model(method):
    from clplatform.strategies.sema.config import SEMAOptions
    from clplatform.strategies.sema.model import SEMAModel
    torch.manual_seed(0)
    model = SEMAModel(create_backbone("vit-glyphs", pretrained=False), 10,
                      SEMAOptions(bottleneck=4)).eval()
    for block in model.blocks:
        block.add_adapter()
        nn.init.normal_(block.adapters[0].up.weight, std=0.1)
    model.seen[:] = True
    x, y = torch.rand(32, 1, 32, 32), torch.randint(0, 10, (32,))
    opts = CompressOptions(method=method, ratio=0.5, steps=4, batch_size=8, mask_interval=1,
                           mask_after=0, targets=("mlp", "adapters", "heads"))
    flops, params = _flops(model, x[:4]), _params(model)
    outcome = compress(model, Data(x, y, torch.ones(10, dtype=torch.bool)), opts, x[:16])
    assert outcome.logit_gap <= 1e-5 if method != "csgd" else outcome.residual > 0
    assert outcome.target_flops_after <= 0.5 * outcome.target_flops_before * 1.01
    heads = [m.num_heads for m in model.modules() if type(m).__name__ == "Attention"]
    assert min(heads) >= 1 and sum(heads) < 18
    attention = next(m for m in model.modules() if type(m).__name__ == "Attention")
    assert attention.head_dim == 32 and attention.scale == 32 ** -0.5
    assert _params(model) < params
    drop = flops - _flops(model, x[:4])
    removed = outcome.target_flops_before - outcome.target_flops_after
    assert drop / 4 == pytest.approx(removed, rel=1e-6)  # analytic unit costs == FlopCount


def test_unsupported_architecture_and_bad_options_are_user_errors():
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(UserError, match="timm VisionTransformer"):
        find_groups(cnn, ("mlp",))
    with pytest.raises(UserError, match="ratio"):
        CompressOptions(ratio=1.0).validate()
    with pytest.raises(UserError, match="unknown target"):
        CompressOptions(targets=("mlp", "convs")).validate()


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def sema_run(tmp_path_factory, private_cache):
    """A tiny SEMA run (random backbone) that keeps its final model, and a run that does
    not."""
    out = tmp_path_factory.mktemp("compress-runs")
    common = ["run", "--strategy", "sema", "--backbone-opt", "pretrained=false",
              "--set", "functional_epochs=1", "--set", "rd_epochs=1", "-q", "--json",
              *[a for k, v in TINY_GLYPHS.items() for a in ("--stream-opt", f"{k}={v}")]]
    kept = invoke(*common, "--out", str(out / "kept"), "--keep-model")
    assert kept.exit_code == 0, kept.output
    plain = invoke("run", "--strategy", "naive", "--epochs", "1", "--backbone-opt",
                   "pretrained=false", "-q", "--json", "--out", str(out / "plain"),
                   *[a for k, v in TINY_GLYPHS.items() for a in ("--stream-opt", f"{k}={v}")])
    assert plain.exit_code == 0, plain.output
    return (json.loads(kept.output.splitlines()[-1])["run_dir"],
            json.loads(plain.output.splitlines()[-1])["run_dir"])


@pytest.mark.slow
def test_compress_child_run_records_before_and_after(sema_run, tmp_path):
    """Spec test 11, and a compressed SEMA run's FLOPs and parameters fall as requested."""
    import pandas as pd

    from clplatform.store import find_run_dirs
    run_dir, _ = sema_run
    result = invoke("compress", run_dir, "--method", "resrep", "--ratio", "0.6", "--steps",
                    "6", "--set", "mask_interval=2", "--set", "mask_after=0", "--json")
    assert result.exit_code == 0, result.output
    child = json.loads(result.output)["run_dir"]
    assert child.endswith("compress/resrep-0.6")
    record = json.loads(open(f"{child}/run.json").read())
    assert record["kind"] == "compress" and record["parent"].endswith(run_dir.split("/")[-1])
    summary = json.loads(open(f"{child}/compression.json").read())
    stages = pd.read_csv(f"{child}/stages.csv")
    assert sorted(stages.groupby("stage")["eval_exp"].apply(list).to_dict().items()) == \
        [("after", [0, 1, 2]), ("before", [0, 1, 2])]
    parent = pd.read_csv(f"{run_dir}/accuracy.csv")
    final = parent[parent["train_exp"] == 2].sort_values("eval_exp")["accuracy"].tolist()
    assert stages[stages["stage"] == "before"]["accuracy"].tolist() == pytest.approx(final)
    # targets' FLOPs within 1 % of the requested 60 %, and no more
    assert 0.59 <= summary["target_flops_ratio_achieved"] <= 0.6 + 0.01
    removed = summary["target_flops_before"] - summary["target_flops_after"]
    assert summary["flops_before"] - summary["flops_after"] == pytest.approx(removed, rel=1e-6)
    assert summary["params_after"] < summary["params_before"]
    widths = pd.read_csv(f"{child}/widths.csv")
    removed_units = int((widths["before"] - widths["after"]).sum())
    assert summary["params_before"] - summary["params_after"] == removed_units * (2 * 96 + 1)
    assert summary["max_logit_gap_masked_vs_merged"] <= 1e-5
    assert summary["resrep_masked"] == removed_units
    assert "## a_{T,j} before and after" in open(f"{child}/metrics.md").read()
    # the child is shown with its parent, not as a run
    assert find_run_dirs([Path(run_dir).parent]) == [Path(run_dir).resolve()]
    report = invoke("report", run_dir, "--out", str(tmp_path / "r.html"))
    assert report.exit_code == 0, report.output
    html = (tmp_path / "r.html").read_text()
    assert "<h3>Compression</h3>" in html and "resrep-0.6" in html
    # the same child again: refused without --force
    again = invoke("compress", run_dir, "--method", "resrep", "--ratio", "0.6")
    assert again.exit_code == 2 and "--force" in again.output
    # every experience's training data (uint8, concatenated) also trains it
    oracle = invoke("compress", run_dir, "--method", "resrep", "--ratio", "0.8", "--steps",
                    "4", "--data", "all-seen", "--set", "mask_after=0", "--json")
    assert oracle.exit_code == 0, oracle.output
    summary = json.loads(open(f"{json.loads(oracle.output)['run_dir']}/compression.json").read())
    assert 0.79 <= summary["target_flops_ratio_achieved"] <= 0.81


@pytest.mark.parametrize("args, message", [
    (["--ratio", "1.5"], "ratio"),
    (["--ratio", "0"], "ratio"),
    (["--ratio", "0.5", "--method", "prune-all"], "method"),
    (["--ratio", "0.5", "--targets", "mlp,convs"], "unknown target"),
    (["--ratio", "0.5", "--data", "replay"], "replay buffer"),
])
def test_compress_errors_are_one_line_and_exit_2(sema_run, args, message):
    run_dir, _ = sema_run
    result = invoke("compress", run_dir, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_run_without_its_final_model_is_refused(sema_run):
    _, plain = sema_run
    result = invoke("compress", plain, "--ratio", "0.5")
    assert result.exit_code == 2 and "--keep-model" in result.output
    assert not Path(plain, "compress").exists()


def test_the_python_api_compresses_heads_too(sema_run):
    import pandas as pd

    import clplatform
    run_dir, _ = sema_run
    child = clplatform.compress(run_dir, method="magnitude", ratio=0.5,
                                targets=["mlp", "heads"])
    summary = json.loads((child / "compression.json").read_text())
    assert child.name == "magnitude-0.5" and summary["targets"] == ["mlp", "heads"]
    assert summary["max_logit_gap_masked_vs_merged"] <= 1e-5
    widths = set(pd.read_csv(child / "widths.csv")[["kind", "before", "after"]]
                 .itertuples(index=False, name=None))
    assert widths == {("mlp", 384, 192), ("heads", 3, 1)}
    assert summary["train_seconds"] == 0 and summary["train_flops"] == 0  # one-shot


def test_compress_help_names_every_option():
    result = invoke("compress", "--help")
    assert result.exit_code == 0
    for option in ("--method", "--ratio", "--targets", "--data", "--loss", "--steps", "--lr",
                   "--set", "--force"):
        assert option in result.output
    assert "--keep-model" in invoke("run", "--help").output


def test_resrep_ratio_of_the_whole_model():
    """The spec's reading of F (kept fraction of the whole model's FLOPs): reached within
    1 %, or refused when the targets hold too few FLOPs."""
    model = _vit()
    x = torch.rand(16, 1, 32, 32)
    data = Data(x, torch.zeros(16, dtype=torch.long), torch.ones(96, dtype=torch.bool))
    before = _flops(model, x[:4]) / 4
    compress(model, data, CompressOptions(ratio=0.8, ratio_of="model", steps=0), x)
    assert 0.79 <= _flops(model, x[:4]) / 4 / before <= 0.8 + 0.01
    with pytest.raises(UserError, match="out of reach"):
        compress(_vit(), data, CompressOptions(ratio=0.4, ratio_of="model", steps=0), x)
