"""LFTL and the active setting: the oracle, label masking, sampling scores, the adaptation
losses, and every sampler end to end on a tiny two-domain stream."""
import math

import pytest
import torch

from clplatform.active import MASKED_LABEL, BudgetExceeded, Oracle, masked_experience
from clplatform.data import dataset_tensors
from clplatform import create_backbone, create_strategy, create_stream
from clplatform.seeding import seed_everything
from clplatform.strategies.base import StrategyContext, TrainSettings
from clplatform.strategies.lftl import sampling
from clplatform.strategies.lftl.strategy import (information_maximisation, refresh_memory,
                                      visual_persistence)

TINY_DOMAINS = {"domains": ("sans", "mono"), "samples_per_class": 4,
                "test_samples_per_class": 2}
FAST = {"rounds": 2, "budget_per_round": 0.03, "source_epochs": 8, "source_lr": 0.05}


def test_oracle_budget():
    labels = torch.arange(100) % 7
    oracle = Oracle.with_fraction(labels, 0.055, rounds=2)
    assert (oracle.per_round, oracle.budget) == (5, 10)        # floor: never above budget
    with pytest.raises(BudgetExceeded, match="before the first round"):
        oracle.query(torch.tensor([0]))
    oracle.start_round()
    assert torch.equal(oracle.query(torch.tensor([3, 10])), labels[[3, 10]])
    assert torch.equal(oracle.query(torch.tensor([3])), labels[[3]])  # asked again: free
    oracle.query(torch.tensor([4, 5, 6]))
    assert oracle.labels_used == 5
    with pytest.raises(BudgetExceeded, match="6 labels asked, budget 5 per round"):
        oracle.query(torch.tensor([7]))
    with pytest.raises(IndexError):
        oracle.query(torch.tensor([100]))
    oracle.start_round()
    oracle.query(torch.arange(20, 25))
    with pytest.raises(BudgetExceeded, match="all 2 rounds"):
        oracle.start_round()
    assert oracle.queried == [3, 10, 4, 5, 6, 20, 21, 22, 23, 24]
    # the labels are not an attribute of the oracle
    assert not any(torch.is_tensor(v) for v in vars(oracle).values())


def test_masked_experience_hides_every_label():
    bm = create_stream("glyphs-domains", **TINY_DOMAINS, seed=0)
    experience = bm.train_stream[1]
    masked, oracle = masked_experience(experience, 0.03, 2)
    x, y = dataset_tensors(masked.dataset)
    true_x, true_y = dataset_tensors(experience.dataset)
    assert torch.equal(x, true_x) and (y == MASKED_LABEL).all()
    assert set(masked.dataset.targets) == {MASKED_LABEL}
    # the images are held once, as uint8 (not a float copy), and read per item
    from clplatform.data import ExperienceImages
    source = masked.dataset._datasets[0]
    assert isinstance(source.images, ExperienceImages)
    assert source.images.stored.dtype == torch.uint8
    for batch in torch.utils.data.DataLoader(masked.dataset, batch_size=64):
        assert (batch[1] == MASKED_LABEL).all()
    oracle.start_round()
    assert torch.equal(oracle.query(torch.tensor([0, 5])), true_y[[0, 5]])


def _strategy(bm, **opts):
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings(epochs=1, lr=0.01))
    return create_strategy("lftl", ctx, **{**FAST, **opts})


def _adapt_once(bm, labels_for_oracle):
    seed_everything(0)
    strategy = _strategy(bm)
    strategy.train(bm.train_stream[0], eval_streams=[])
    masked, _ = masked_experience(bm.train_stream[1], FAST["budget_per_round"],
                                  FAST["rounds"])
    oracle = Oracle.with_fraction(labels_for_oracle, FAST["budget_per_round"], FAST["rounds"])
    strategy.train(masked, eval_streams=[], oracle=oracle)
    return strategy, oracle


def test_unqueried_labels_cannot_influence_the_run(pretrained_backbone):
    """Run twice; the second time every label the first run did not query is scrambled.
    Same queries, same parameters: the strategy read no unqueried label by any path."""
    bm = create_stream("glyphs-domains", **TINY_DOMAINS, seed=0)
    _, y = dataset_tensors(bm.train_stream[1].dataset)
    first, first_oracle = _adapt_once(bm, y)
    queried = torch.tensor(first_oracle.queried)
    assert len(queried) == first_oracle.budget == 2 * math.floor(0.03 * len(y))
    scrambled = (y + 1 + torch.randint(0, 61, y.shape)) % 62
    scrambled[queried] = y[queried]
    assert (scrambled != y).sum() == len(y) - len(queried)
    second, second_oracle = _adapt_once(bm, scrambled)
    assert second_oracle.queried == first_oracle.queried
    for (name, a), b in zip(first.model.state_dict().items(),
                            second.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_sampling_scores_on_a_hand_made_matrix():
    p = torch.tensor([[0.70, 0.20, 0.10],
                      [0.40, 0.35, 0.25],
                      [0.45, 0.45, 0.10],
                      [0.90, 0.05, 0.05],
                      [0.10, 0.60, 0.30]])
    margin = torch.tensor([0.50, 0.05, 0.00, 0.85, 0.30])
    assert torch.allclose(sampling.margin_scores(p), margin)
    assert torch.allclose(sampling.least_confidence_scores(p), p.max(1).values)
    assert torch.allclose(sampling.entropy_scores(p), (p * p.log()).sum(1))
    # class term: kappa = 2 most confident (rows 3, 0) both predict class 0 -> w = [1, 0, 0]
    u = sampling.contrastive_scores(p, None, kappa=2, class_weight=0.1)
    predicted_zero = torch.tensor([1.0, 1, 1, 1, 0])  # row 2 ties 0/1: argmax takes 0
    assert torch.allclose(u, margin / 0.85 + 0.1 * predicted_zero)
    # contrast with the previous round: s = p + alpha (p - p_prev)
    p_prev = p.roll(1, dims=1)
    s = p + 0.5 * (p - p_prev)
    top = s.topk(2, dim=1).values
    contrast = top[:, 0] - top[:, 1]
    u = sampling.contrastive_scores(p, p_prev, alpha=0.5, kappa=1, class_weight=0.0)
    assert torch.allclose(u, contrast / contrast.max())
    # smallest first; ties to the lower pool position
    assert sampling.select(torch.tensor([0.3, 0.1, 0.1, 0.0, 0.1]), 3).tolist() == [3, 1, 2]
    g = torch.Generator().manual_seed(0)
    assert len(set(sampling.select(sampling.random_scores(p, g), 3).tolist())) == 3


def test_memory_update_vpa_and_im_on_tiny_tensors():
    memory = torch.tensor([[1.0, 0.0]])
    features = torch.tensor([[0.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    refreshed = refresh_memory(memory, features, momentum=0.9)
    assert torch.allclose(refreshed, torch.tensor([[0.1, 1.8], [2.7, 0.0], [0.0, 0.9]]))
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[2.0, 0.0]])  # cos = [1, 0] -> a = softmax([1, 0])
    a = torch.tensor([1.0, 0.0]).softmax(0)
    assert visual_persistence(z, anchors).item() == pytest.approx(
        float(-(a * a.log()).sum()), rel=1e-6)
    assert information_maximisation(torch.zeros(4, 3)).item() == pytest.approx(0.0, abs=1e-6)
    confident = torch.eye(3) * 20  # confident and diverse: -log 3
    assert information_maximisation(confident).item() == pytest.approx(-math.log(3), abs=1e-3)


@pytest.mark.parametrize("sampler", ["lftl", "random", "entropy", "margin",
                                     "least-confidence"])
def test_end_to_end_every_sampler(sampler, runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run("lftl", "glyphs-domains", stream_options=TINY_DOMAINS, seed=0,
                         out=runs_dir, strategy_options={**FAST, "sampler": sampler})
    exps, rounds = run.experiences, run.rounds
    per_round = math.floor(0.03 * 62 * 4)
    assert list(exps["labels_queried"]) == [0, 2 * per_round]
    assert list(exps["experience_size"]) == [62 * 4, 62 * 4]
    assert list(rounds["round"]) == [0, 1, 2]
    assert list(rounds["labels_used"]) == [0, per_round, 2 * per_round]
    acc = run.accuracy.set_index(["train_exp", "eval_exp"])["accuracy"]
    # round 0 is the model before adaptation; the last round the adapted one
    assert rounds["accuracy"].iloc[0] == pytest.approx(acc[(0, 1)])
    assert rounds["accuracy"].iloc[-1] == pytest.approx(acc[(1, 1)])
    assert acc[(0, 0)] > 0.3  # the source model learnt its domain
    assert exps["lftl.seconds_per_round"].iloc[1] > exps["lftl.sampling_seconds"].iloc[1] / 2


def test_source_only(runs_dir, pretrained_backbone):
    import clplatform
    run = clplatform.run("lftl", "glyphs-domains", stream_options=TINY_DOMAINS, seed=0,
                         out=runs_dir, strategy_options={**FAST, "adapt": "none"})
    acc = run.accuracy.set_index(["train_exp", "eval_exp"])["accuracy"]
    assert list(run.experiences["labels_queried"]) == [0, 0]
    assert acc[(1, 1)] == acc[(0, 1)] and acc[(1, 0)] == acc[(0, 0)]  # nothing changed
    assert run.rounds.empty


def test_report_shows_improvement_with_budget(tmp_path, pretrained_backbone):
    import pandas as pd

    import clplatform
    from clplatform.reports import build_report, export_tables
    for sampler in ("lftl", "random"):
        clplatform.run("lftl", "glyphs-domains", stream_options=TINY_DOMAINS, seed=0,
                       out=tmp_path / "runs", strategy_options={**FAST, "sampler": sampler})
    runs, html_path = build_report([tmp_path / "runs"], tmp_path / "report.html")
    labels = sorted(runs.rounds["label"].unique())
    assert len(labels) == 2 and sum("sampler=random" in label for label in labels) == 1
    text = html_path.read_text()
    assert text.count("<img") >= 7  # the usual figures + accuracy against labels used
    assert "after every query-and-adapt round, against the labels used" in text
    written = export_tables(runs, tmp_path / "tables")
    assert tmp_path / "tables" / "rounds.csv" in written
    rounds = pd.read_csv(tmp_path / "tables" / "rounds.csv")
    assert len(rounds) == 2 * 3 and set(rounds["round"]) == {0, 1, 2}


def test_sampled_flops_match_a_full_count(runs_dir, pretrained_backbone):
    """Adaptation, mixup and sampling passes differ in cost at equal batch shapes: the
    sampled count keys them apart (iteration_kind) and stays within 3 % of a full count."""
    import clplatform
    runs = {mode: clplatform.run("lftl", "glyphs-domains", stream_options=TINY_DOMAINS,
                                 seed=0, out=runs_dir, strategy_options=FAST, flops=mode)
            for mode in ("sampled", "full")}
    sampled = runs["sampled"].experiences["train_flops"]
    full = runs["full"].experiences["train_flops"]
    assert (full > 0).all()
    assert ((sampled - full).abs() / full).max() <= 0.03, (list(sampled), list(full))


def test_one_sample_batches(runs_dir, pretrained_backbone):
    """batch_size=1 (every batch norm batch holds one sample) and a budget that queries one
    label per round (the first round's labelled batch is one sample) train to the end; a
    one-sample batch normalises with the running statistics and leaves them unchanged."""
    import clplatform
    run = clplatform.run("lftl", "glyphs-domains", seed=0, out=runs_dir,
                         stream_options={**TINY_DOMAINS, "samples_per_class": 1},
                         strategy_options={**FAST, "batch_size": 1, "source_epochs": 1,
                                           "budget_per_round": 0.001})
    assert run.status == "complete"
    assert list(run.experiences["labels_queried"]) == [0, 2]  # one label per round
    assert list(run.rounds["labels_used"]) == [0, 1, 2]
    assert run.accuracy["accuracy"].notna().all()
    from clplatform.strategies.lftl.model import BottleneckNorm
    norm = BottleneckNorm(3).train()
    norm.running_mean.fill_(1.0)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(norm(x), (x - 1.0) / math.sqrt(1 + norm.eps))
    assert torch.equal(norm.running_mean, torch.ones(3))


@pytest.mark.parametrize("budget", [
    {"rounds": 10, "budget_per_round": 0.2},    # 2 x the target experience
    {"rounds": 300, "budget_per_round": 0.0},   # one label per round, 248 samples
])
def test_budget_past_the_target_is_refused_before_the_run(budget, runs_dir):
    from click.testing import CliRunner

    from clplatform.app.cli import cli
    args = ["run", "--strategy", "lftl", "--stream", "glyphs-domains", "--out", str(runs_dir)]
    for key, value in {**TINY_DOMAINS, "domains": "sans,mono"}.items():
        args += ["--stream-opt", f"{key}={value}"]
    for key, value in budget.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(cli, args, prog_name="clplat")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "target experience 1 has 248 samples" in lines[0], lines
    assert not runs_dir.exists()


def test_source_trains_on_the_stream_source_train_set(runs_dir, pretrained_backbone,
                                                      monkeypatch):
    """One hold-out only: the source model trains on exactly the source experience's
    training images (all of them, every epoch) and is picked on the source experience's
    test set, the stream's hold-out; the record is that set's accuracy of the kept model."""
    import clplatform
    from clplatform.strategies.lftl import strategy as lftl_strategy
    seen = {"frozen": [], "batches": []}
    frozen_rows = lftl_strategy.frozen_rows
    monkeypatch.setattr(lftl_strategy, "frozen_rows",
                        lambda part, x, *a: seen["frozen"].append(x) or frozen_rows(part, x, *a))
    fit = lftl_strategy.LFTL.fit_tensors

    def spy(self, optimizer, inputs, labels, *args, **kwargs):
        if self.experiences_seen == 0:
            seen["batches"].append((inputs.clone(), labels.clone()))
        return fit(self, optimizer, inputs, labels, *args, **kwargs)
    monkeypatch.setattr(lftl_strategy.LFTL, "fit_tensors", spy)
    opts = {**FAST, "source_epochs": 3}
    run = clplatform.run("lftl", "glyphs-domains", stream_options=TINY_DOMAINS, seed=0,
                         out=runs_dir, strategy_options=opts)
    bm = create_stream("glyphs-domains", **TINY_DOMAINS, seed=0)
    train_x, train_y = dataset_tensors(bm.train_stream[0].dataset)
    test_x, test_y = dataset_tensors(bm.test_stream[0].dataset)
    read = [x[:] for x in seen["frozen"][:2]]  # ExperienceImages: uint8 held, float read
    assert torch.equal(read[0], train_x) and torch.equal(read[1], test_x)
    assert len(seen["batches"]) == 3  # one pass over all 248 source images per epoch
    for inputs, labels in seen["batches"]:
        assert torch.equal(inputs, torch.arange(len(train_x)))
        assert torch.equal(labels.cpu(), train_y)
    held = run.experiences["lftl.source_holdout_accuracy"].iloc[0]
    acc = run.accuracy.set_index(["train_exp", "eval_exp"])["accuracy"]
    assert 0.3 < held <= 1 and held == pytest.approx(acc[(0, 0)], abs=1.01 / len(test_y))
    assert len(test_y) == 62 * 2


def test_source_model_best_or_last(pretrained_backbone, monkeypatch):
    """best: the epoch with the best hold-out accuracy (here not the last one); last: the
    same weights as a source training whose hold-out is read (reading draws a DataLoader
    seed) but not used. Each record is the kept model's accuracy on the hold-out."""
    from clplatform.evaluator import evaluate
    from clplatform.strategies.lftl.strategy import LFTL
    bm = create_stream("glyphs-domains", **TINY_DOMAINS, seed=0)
    x, y = dataset_tensors(bm.test_stream[0].dataset)
    runs = {}
    for name in ("best", "last", "unselected"):
        if name == "unselected":
            read = LFTL._source_holdout
            monkeypatch.setattr(LFTL, "_source_holdout",
                                staticmethod(lambda *a: read(*a) and None))
        seed_everything(0)
        strategy = _strategy(bm, source_epochs=4, source_lr=0.5,
                             source_model="last" if name == "last" else "best")
        strategy.train(bm.train_stream[0], eval_streams=[bm.test_stream[0]])
        record = strategy.experience_extras()["source_holdout_accuracy"]
        if name != "unselected":
            kept = evaluate(strategy.model.eval(), x, y, 64, "cpu", 62)["accuracy"]
            assert record == pytest.approx(kept, abs=1.01 / len(y))
        runs[name] = (record, strategy.model.state_dict())
    assert runs["best"][0] > runs["last"][0]
    assert math.isnan(runs["unselected"][0])
    last, unselected = runs["last"][1], runs["unselected"][1]
    for name in last:
        assert torch.equal(last[name], unselected[name]), name
