import json

import pandas as pd
import pytest

import clplatform
from clplatform.errors import UserError
from clplatform.metrics import summarize
from clplatform.store import new_run_dir

from conftest import TINY_GLYPHS


def test_python_api_run_and_load_run_agree(runs_dir, pretrained_backbone):
    run = clplatform.run(strategy="lwf", stream="glyphs", stream_options=TINY_GLYPHS,
                         epochs=1, seed=3, out=runs_dir, strategy_options={"alpha": 0.5})
    loaded = clplatform.load_run(run.path)
    assert loaded.config == run.config and loaded.summary == run.summary
    pd.testing.assert_frame_equal(loaded.accuracy, run.accuracy)
    assert list(loaded.accuracy.columns[:4]) == ["train_exp", "eval_exp", "accuracy",
                                                 "class_mean_accuracy"]
    assert len(loaded.experiences) == 3
    assert loaded.config["strategy"] == {"name": "lwf", "alpha": 0.5, "temperature": 2.0}
    assert loaded.config["train"]["seed"] == 3 and loaded.config["train"]["epochs"] == 1
    assert loaded.record["status"] == "complete" and loaded.record["ended"]
    assert set(loaded.record["versions"]) >= {"torch", "avalanche-lib", "timm", "python",
                                              "clplatform"}
    # the stored summary is an independent recomputation away from the stored records
    recomputed = summarize(loaded.accuracy)
    for key, value in recomputed.items():
        assert loaded.summary[key] == pytest.approx(value, nan_ok=True) or (
            loaded.summary[key] is None and value != value)


def test_failed_run_is_marked_failed(runs_dir, pretrained_backbone, monkeypatch):
    from clplatform import runner

    def boom(self, **_kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(runner.Prepared, "fit", boom)
    with pytest.raises(RuntimeError):
        clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, out=runs_dir)
    (run_dir,) = list(runs_dir.iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and "disk on fire" in record["reason"]


def test_load_run_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        clplatform.load_run(tmp_path / "missing")
    with pytest.raises(UserError, match="not a run directory"):
        clplatform.load_run(tmp_path)
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(UserError, match="corrupt file .*run.json"):
        clplatform.load_run(tmp_path)


def test_run_directories_are_unique(tmp_path):
    made = {new_run_dir(tmp_path, "x") for _ in range(20)}
    assert len(made) == 20 and all(p.is_dir() for p in made)


def test_unknown_python_api_option_is_a_user_error(runs_dir):
    with pytest.raises(UserError, match="unknown option 'epoch' for \\[train\\]"):
        clplatform.run("naive", "glyphs", epoch=3, out=runs_dir)
    assert not runs_dir.exists()
