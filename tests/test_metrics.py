import math

import pandas as pd
import pytest
import torch

from clplatform import metrics
from clplatform.evaluator import evaluate

# a[i, j] for 3 experiences; row -1 is the initial model (b_j)
A = {-1: [0.10, 0.20, 0.30],
     0: [0.90, 0.05, 0.00],
     1: [0.60, 0.80, 0.10],
     2: [0.70, 0.50, 0.85]}
N = [100, 50, 50]


def _records(matrix=A, sizes=N):
    return pd.DataFrame([{"train_exp": i, "eval_exp": j, "accuracy": a, "n_samples": sizes[j]}
                         for i, row in matrix.items() for j, a in enumerate(row)])


def test_metrics_match_the_formulas_of_the_spec():
    s = metrics.summarize(_records())
    assert s["final_accuracy"] == pytest.approx((0.70 + 0.50 + 0.85) / 3)
    assert s["final_stream_accuracy"] == pytest.approx((70 + 25 + 42.5) / 200)
    assert math.isnan(s["final_task_accuracy"])  # records without the column
    records = _records().assign(task_accuracy=lambda d: d["accuracy"] / 2)
    assert metrics.summarize(records)["final_task_accuracy"] == pytest.approx(
        (0.70 + 0.50 + 0.85) / 6)
    assert s["average_incremental_accuracy"] == pytest.approx(
        (0.90 + (0.60 + 0.80) / 2 + (0.70 + 0.50 + 0.85) / 3) / 3)
    # f_0 = max(0.9, 0.6) - 0.7, f_1 = 0.8 - 0.5
    assert s["forgetting"] == pytest.approx(((0.9 - 0.7) + (0.8 - 0.5)) / 2)
    assert s["bwt"] == pytest.approx(((0.7 - 0.9) + (0.5 - 0.8)) / 2)
    # FWT: a[0,1] - b1, a[1,2] - b2
    assert s["fwt"] == pytest.approx(((0.05 - 0.20) + (0.10 - 0.30)) / 2)
    assert s["plasticity"] == pytest.approx((0.90 + 0.80 + 0.85) / 3)


def test_forgetting_uses_the_best_past_accuracy_not_the_first():
    matrix = {0: [0.5, 0.0], 1: [0.4, 0.9]}
    s = metrics.summarize(_records(matrix, [10, 10]))
    assert s["forgetting"] == pytest.approx(0.1) and s["bwt"] == pytest.approx(-0.1)
    matrix = {0: [0.5, 0.0, 0.0], 1: [0.8, 0.9, 0.0], 2: [0.6, 0.9, 0.7]}
    s = metrics.summarize(_records(matrix, [10, 10, 10]))
    assert s["forgetting"] == pytest.approx(((0.8 - 0.6) + 0.0) / 2)   # best was after exp 1
    assert s["bwt"] == pytest.approx(((0.6 - 0.5) + 0.0) / 2)


def test_single_training_step_leaves_sequence_metrics_undefined():
    joint = {-1: [0.1, 0.1], 1: [0.9, 0.8]}   # a joint run trains once, recorded as T
    s = metrics.summarize(_records(joint, [10, 10]))
    assert s["final_accuracy"] == pytest.approx(0.85)
    for key in ("average_incremental_accuracy", "forgetting", "bwt", "fwt", "plasticity"):
        assert math.isnan(s[key]), key


class _Fixed(torch.nn.Module):
    """Predicts class (x mod 3) with two outputs only: class 2 has no unit yet."""

    def forward(self, x):
        logits = torch.full((len(x), 2), -5.0)
        k = x[:, 0].long() % 3
        logits[k == 0, 0] = 5.0
        logits[k == 1, 1] = 5.0
        return logits


def test_evaluate_weights_samples_and_classes():
    x = torch.tensor([[0.], [1.], [2.], [3.], [1.], [2.]])
    y = torch.tensor([0, 1, 2, 0, 0, 2])
    r = evaluate(_Fixed(), x, y, batch_size=4, device="cpu", num_classes=3)
    # predictions: 0, 1, 0 (class 2 has no unit: masked), 0, 1, 0 -> correct: T T F T F F
    assert r["accuracy"] == pytest.approx(3 / 6)
    # per class: class 0: 2/3, class 1: 1/1, class 2: 0/2
    assert r["class_mean_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert r["n_samples"] == 6 and r["loss"] > 0
    assert r["task_accuracy"] == pytest.approx(3 / 6)  # all classes present: same argmax
    # only class 0 in this experience: predicting class 1 is wrong, but task-aware it is right
    r = evaluate(_Fixed(), torch.tensor([[1.], [4.], [0.]]), torch.tensor([0, 0, 0]),
                 batch_size=2, device="cpu", num_classes=3)
    assert r["accuracy"] == pytest.approx(1 / 3) and r["task_accuracy"] == 1.0
