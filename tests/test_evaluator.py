"""The evaluator's records against Avalanche's own metrics and against a full FLOP count."""
import pandas as pd
import pytest

import clplatform
from clplatform.evaluator import Evaluator
from clplatform.metrics import bwt, summarize
from clplatform import create_backbone, create_strategy, create_stream
from clplatform.strategies.base import StrategyContext, TrainSettings

from conftest import TINY_GLYPHS


def test_accuracy_and_forgetting_agree_with_avalanche(pretrained_backbone):
    from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
    from avalanche.training.plugins import EvaluationPlugin
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    evaluator = Evaluator(bm.test_stream, bm.info.num_classes)
    avalanche_eval = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                      forgetting_metrics(experience=True, stream=True),
                                      loggers=[])
    ctx = StrategyContext(create_backbone("vit-glyphs"), bm.info, TrainSettings(epochs=2, lr=0.01),
                          plugins=[evaluator], avalanche_evaluator=avalanche_eval)
    strategy = create_strategy("naive", ctx)
    for i, exp in enumerate(bm.train_stream):
        evaluator.expect(i, len(exp.dataset))
        strategy.train(exp, eval_streams=[])
        strategy.eval(bm.test_stream)
    ours = pd.DataFrame(evaluator.accuracy_rows)
    theirs = avalanche_eval.get_all_metrics()
    for j in range(3):
        _, values = theirs[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"]
        mine = ours[(ours["eval_exp"] == j) & (ours["train_exp"] >= 0)].sort_values("train_exp")
        assert values == pytest.approx(list(mine["accuracy"]), abs=1e-6)
    _, stream_acc = theirs["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert stream_acc[-1] == pytest.approx(summarize(ours)["final_stream_accuracy"], abs=1e-6)
    _, stream_forgetting = theirs["StreamForgetting/eval_phase/test_stream"]
    assert stream_forgetting[-1] == pytest.approx(-bwt(ours), abs=1e-6)
    assert bwt(ours) < 0  # the comparison is not trivially 0 == 0


# the regularisation and replay baselines train as naive does (one forward and backward per
# batch, plus their penalty): they run with the slow tests, keeping the default suite short
_SLOW = pytest.mark.slow


@pytest.mark.parametrize("strategy", ["naive", pytest.param("ewc", marks=_SLOW),
                                      pytest.param("lwf", marks=_SLOW),
                                      pytest.param("si", marks=_SLOW),
                                      pytest.param("replay", marks=_SLOW),
                                      pytest.param("agem", marks=_SLOW),
                                      pytest.param("cumulative", marks=_SLOW), "joint",
                                      "linear-probe", "simplecil", "sema", "prompt", "qprompt",
                                      "inflora"])
def test_sampled_flops_within_3_percent_of_a_full_count(strategy, runs_dir,
                                                        pretrained_backbone):
    runs = {mode: clplatform.run(strategy, "glyphs", stream_options=TINY_GLYPHS, epochs=2,
                                 seed=0, out=runs_dir, flops=mode)
            for mode in ("sampled", "full")}
    sampled = runs["sampled"].experiences["train_flops"]
    full = runs["full"].experiences["train_flops"]
    assert (full > 0).all()
    assert ((sampled - full).abs() / full).max() <= 0.03, (list(sampled), list(full))
    # the same training happened: same records apart from timings
    pd.testing.assert_frame_equal(runs["sampled"].accuracy, runs["full"].accuracy)


def test_flops_per_sample_match_the_architecture(runs_dir, pretrained_backbone):
    """Inference FLOPs of vit-glyphs, recomputed by hand from its layer shapes."""
    run = clplatform.run("simplecil", "glyphs", stream_options=TINY_GLYPHS, seed=0,
                         out=runs_dir)
    d, tokens, depth, hidden = 96, 17, 6, 384
    stem = 2 * (32 * 32 * 32 * 1 * 9 + 16 * 16 * 64 * 32 * 9 + 8 * 8 * 96 * 64 * 9)
    patch = 2 * 16 * 96 * 96 * 4                       # 2x2 projection of 96 channels
    attention = 2 * tokens * d * 3 * d + 2 * 2 * tokens * tokens * d + 2 * tokens * d * d
    mlp = 2 * 2 * tokens * d * hidden
    expected = stem + patch + depth * (attention + mlp)
    measured = run.experiences["inference_flops_per_sample"].iloc[-1]
    # plus the cosine head: 62 prototypes x 96
    assert measured == pytest.approx(expected + 2 * 62 * 96, rel=0.01)
    # training = one forward pass over the experience, nothing else
    exps = run.experiences
    assert exps["train_flops"].iloc[0] == pytest.approx(
        (expected + 2 * 62 * 96 - 2 * 62 * 96) * exps["experience_size"].iloc[0], rel=0.01)


def test_expansion_and_storage_columns(runs_dir, pretrained_backbone):
    run = clplatform.run("replay", "glyphs", stream_options=TINY_GLYPHS, epochs=1, seed=0,
                         out=runs_dir, strategy_options={"mem_size": 50})
    exps = run.experiences
    # the head grows by (d + 1) per class: 21, 21, 20 classes
    assert list(exps["params_added"]) == [97 * 21 - 97, 97 * 42 - 97, 97 * 62 - 97]
    sample_bytes = 32 * 32 * 4 + 8
    head_bytes = [(97 * n - 97) * 4 + (n - 1) for n in (21, 42, 62)]  # weights + int8 mask
    assert list(exps["stored_bytes"]) == [50 * sample_bytes + h for h in head_bytes]
    assert (exps["modules_added"] == 0).all()
    assert (exps["peak_memory_bytes"] > 50e6).all()
    s = run.summary
    assert s["total_train_flops"] == pytest.approx(exps["train_flops"].sum())
    assert s["params_growth_ratio"] == pytest.approx(
        exps["params_total"].iloc[-1] / (exps["params_total"].iloc[0] - exps["params_added"].iloc[0]))
    assert s["wall_seconds"] >= s["train_seconds"] + s["eval_seconds"] - 1e-6
    assert run.record["status"] == "complete"


def test_flop_counting_can_be_switched_off(runs_dir, pretrained_backbone):
    run = clplatform.run("linear-probe", "glyphs", stream_options=TINY_GLYPHS, epochs=1,
                         seed=0, out=runs_dir, flops="off")
    assert run.experiences["train_flops"].isna().all()
    assert run.summary["total_train_flops"] is None and run.summary["final_accuracy"] > 0
    assert run.config["train"]["flops"] == "off"


def test_flop_count_equals_torch_flop_counter_mode():
    """The lean counter gives FlopCounterMode's total (with the attention kernels torch's table
    lacks) for a training step (forward, backward, optimizer) and for an inference forward,
    on the default architecture."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from clplatform.backbones import build_glyph_vit
    from clplatform.compute import ATTENTION_FLOP_FORMULAS, FlopCount
    torch.manual_seed(0)
    model = torch.nn.Sequential(build_glyph_vit(), torch.nn.Linear(96, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.rand(6, 1, 32, 32), torch.tensor([0, 1, 2, 3, 4, 0])

    def step():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOP_FORMULAS) as reference:
        step()
    with FlopCount() as lean:
        step()
    assert lean.total == reference.get_total_flops() > 0
    with torch.inference_mode():
        with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOP_FORMULAS) as reference:
            model(x)
        with FlopCount() as lean:
            model(x)
    assert lean.total == reference.get_total_flops() > 0


def test_flop_meter_reads_the_parameters_again_when_the_optimizer_changes():
    """The sampled count's key follows modules added with a new optimizer (or a grown
    param group) and parameters frozen in place; a new key is counted, not re-used."""
    import types

    import torch

    from clplatform.compute import FlopMeter
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    strategy = types.SimpleNamespace(model=model, mb_x=torch.rand(5, 4),
                                     optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    meter = FlopMeter("sampled")
    meter.start()

    def iteration():
        meter.before_iteration(strategy)
        model(strategy.mb_x).sum().backward()
        meter.after_iteration()
        return meter.total
    first = iteration()
    assert iteration() == 2 * first and meter.iterations_reused == 1
    model.append(torch.nn.Linear(3, 3))            # a module added, optimizer rebuilt
    strategy.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = meter.total
    grown = iteration() - before
    assert grown > first and meter.iterations_counted == 2
    model[0].requires_grad_(False)                  # frozen in place: counted again, cheaper
    before = meter.total
    assert iteration() - before < grown and meter.iterations_counted == 3
    model.append(torch.nn.Linear(3, 3))             # added to the same optimizer's group
    strategy.optimizer.add_param_group({"params": list(model[3].parameters())})
    before = meter.total
    assert iteration() - before > 0 and meter.iterations_counted == 4
    meter.stop()


def test_one_evaluation_pass_scores_every_experience_as_separate_passes(pretrained_backbone):
    """The whole test stream in one pass (batches across experience boundaries) gives the
    rows of one evaluation per experience, task selection included."""
    import torch

    from clplatform.contract import StrategyHooks
    from clplatform.data import dataset_tensors
    from clplatform.evaluator import evaluate

    class Chooser(torch.nn.Module):
        """Logits from pixel sums; 'selects' an experience from the image too."""
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(1024, 10))
            self.selected_experience = None

        def forward(self, x):
            flat = x.flatten(1)
            self.selected_experience = (flat.sum(1) * 7).long() % 3
            return flat @ self.w

    class Choosing(StrategyHooks):
        """A strategy telling the evaluator the choice of the last forward (the hook)."""
        def __init__(self, model):
            self.model, self.device = model, "cpu"

        def selected_experiences(self):
            return self.model.selected_experience

    torch.manual_seed(0)
    bm = create_stream("glyphs", **TINY_GLYPHS, seed=0)
    evaluator = Evaluator(bm.test_stream, bm.info.num_classes, batch_size=7)
    model = Chooser()
    strategy = Choosing(model)
    evaluator._evaluate_all(strategy, train_exp=1)
    assert len(evaluator.accuracy_rows) == len(bm.test_stream) == 3
    for j, (row, exp) in enumerate(zip(evaluator.accuracy_rows, bm.test_stream)):
        x, y = dataset_tensors(exp.dataset)
        alone = evaluate(model, x, y, 4, "cpu", bm.info.num_classes, experience=j,
                         selection=strategy.selected_experiences)
        assert row["eval_exp"] == j and row["seen"] == (j <= 1)
        assert "task_selection_accuracy" in alone
        for key, value in alone.items():
            assert row[key] == pytest.approx(value, rel=1e-5, nan_ok=True), key


def test_loss_is_not_made_of_the_masking_constant(runs_dir, pretrained_backbone):
    """A class the head has no unit for yet is scored MASK_VALUE; its samples have no loss
    (NaN when no sample of the experience is scored), the rest their cross-entropy."""
    import math

    import torch
    import torch.nn.functional as F

    import clplatform
    from clplatform.evaluator import evaluate

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)  # units for classes 0..2 of 5
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 3, 4, 0, 1, 4])
    row = evaluate(model, x, y, 3, "cpu", num_classes=5)
    scored = y < 3
    expected = F.cross_entropy(model(x[scored]), y[scored]).item()
    assert row["loss"] == pytest.approx(expected, rel=1e-5)
    assert math.isnan(evaluate(model, x[~scored], y[~scored], 3, "cpu", 5)["loss"])
    # a class-incremental run: experiences not trained yet have no loss, the others a
    # cross-entropy of a few nats (not ~1,000)
    run = clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, epochs=1,
                         out=runs_dir)
    trained = run.accuracy[run.accuracy["train_exp"] >= 0]
    unseen = trained[trained["eval_exp"] > trained["train_exp"]]
    assert len(unseen) == 3 and unseen["loss"].isna().all()
    seen = trained[trained["eval_exp"] <= trained["train_exp"]]
    assert seen["loss"].notna().all() and (seen["loss"] < 50).all()
