"""The Python API accepts what the command line accepts, through the code a run uses:
``clplatform.create_stream``/``create_backbone``/``create_strategy``, one ``resolve(spec)``
(runs, dry runs and sweep cells), one ``resume(run_dir)``, the stream's seed decided in one
place; plugins and stream files written against the pre-0.2 package names get a clear error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import clplatform
from clplatform import create_backbone, create_strategy, create_stream
from clplatform.contract import StrategyContext, TrainDefaults, TrainSettings
from clplatform.data import dataset_tensors
from clplatform.errors import UserError

from conftest import TINY_GLYPHS, stopped_after

ROOT = Path(__file__).resolve().parents[1]


def _invoke(*args):
    from clplatform.app.cli import cli
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="clplat")


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("clplat: error: "), result.stderr
    return lines[0]


def _same_data(a, b) -> bool:
    return all(torch.equal(dataset_tensors(ea.dataset)[0], dataset_tensors(eb.dataset)[0])
               and torch.equal(dataset_tensors(ea.dataset)[1], dataset_tensors(eb.dataset)[1])
               for ea, eb in zip(a.train_stream, b.train_stream))


# ----------------------------------------------------------------------------- streams
def test_create_stream_takes_avalanche_names_as_the_command_line(tmp_path):
    from test_custom_streams import _fake_mnist
    root = _fake_mnist(tmp_path / "mnist")
    named = create_stream("avalanche:SplitMNIST", root=str(root), experiences=2)
    option = create_stream("avalanche", benchmark="SplitMNIST", root=str(root),
                           experiences=2)
    assert named.info.name == "avalanche:SplitMNIST" and len(named.train_stream) == 2
    assert named.info.classes == option.info.classes and _same_data(named, option)
    with pytest.raises(UserError, match="stream 'avalanche:' needs a value after the colon"):
        create_stream("avalanche:")
    with pytest.raises(UserError, match="invalid value 'Nope' for benchmark"):
        create_stream("avalanche:Nope", root=str(root))


def test_create_stream_takes_a_function_in_a_file_and_a_benchmark_object(tmp_path):
    script = tmp_path / "mine.py"
    script.write_text(textwrap.dedent("""\
        import numpy as np
        def make(n=8, seed=None):
            rng = np.random.default_rng(1)
            x = rng.integers(0, 256, (6 * n, 8, 8), dtype=np.uint8)
            return {"train": (x, np.arange(6 * n) % 6), "experiences": 2}
        """))
    made = create_stream(f"{script}:make", n=4)
    assert len(made.train_stream) == 2 and made.info.num_classes == 6
    assert sum(len(e.dataset) for e in made.train_stream) + sum(
        len(e.dataset) for e in made.test_stream) == 24
    # a benchmark object, as clplatform.run(stream=benchmark) takes it
    again = create_stream(made)
    assert again.info == made.info and _same_data(again, made)
    with pytest.raises(UserError, match="stream options do not apply to a benchmark object"):
        create_stream(made, experiences=3)
    with pytest.raises(UserError, match=r"unknown stream 'nope'.*or a Python callable"):
        create_stream("nope")


def test_the_run_seed_reaches_the_stream_in_one_place():
    """An unset stream seed is the run's seed: the builders read it as given."""
    from clplatform.streams import StreamSource
    default = create_stream("glyphs", **TINY_GLYPHS)
    assert _same_data(default, create_stream("glyphs", **TINY_GLYPHS, seed=0))
    assert not _same_data(default, create_stream("glyphs", **TINY_GLYPHS, seed=4))
    source = StreamSource("glyphs", dict(TINY_GLYPHS))
    assert source.parsed.seed is None  # resolved, not built: nothing decided yet
    assert _same_data(source.build(4), create_stream("glyphs", **TINY_GLYPHS, seed=4))
    assert source.config()["seed"] == 4
    # and the seed of a run: its config records the stream's seed it was built with
    config = json.loads(_invoke("run", "--dry-run", "--seed", "4", *(
        f"--stream-opt={k}={v}" for k, v in TINY_GLYPHS.items())).stdout)
    assert config["stream"]["seed"] == 4 and config["train"]["seed"] == 4


# ----------------------------------------------------------------------------- backbones
def test_create_backbone_takes_timm_names_as_the_command_line():
    backbone = create_backbone("timm:resnet18", pretrained=False)
    assert backbone.name == "timm:resnet18" and backbone.num_features == 512
    assert backbone.in_chans == 3 and backbone.img_size == 224
    explicit = create_backbone("timm", model_name="resnet18", pretrained=False)
    assert explicit.name == backbone.name
    assert [tuple(p.shape) for p in explicit.parameters()] == [
        tuple(p.shape) for p in backbone.parameters()]
    with torch.no_grad():
        assert backbone.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 512)
    with pytest.raises(UserError, match="backbone 'timm:' needs a value after the colon"):
        create_backbone("timm:")
    with pytest.raises(UserError, match="unknown timm model 'no_such_model_xyz'"):
        create_backbone("timm:no_such_model_xyz", pretrained=False)
    with pytest.raises(UserError, match="unknown backbone 'resnet18'"):
        create_backbone("resnet18")


# ----------------------------------------------------------------------------- strategies
def test_create_strategy_checks_the_strategy_contract():
    from clplatform.registry import STRATEGIES, register_strategy

    class DuckTyped:  # the old kind: hooks the platform would never call
        model = torch.nn.Linear(2, 2)

        def train(self, experience, **kwargs):
            pass

        def experience_extras(self):
            return {"x": 1}

    register_strategy("test-duck-typed", help="not a Strategy")(lambda ctx, opts: DuckTyped())
    register_strategy("test-not-a-template", help="no train()")(lambda ctx, opts: object())
    context = StrategyContext(create_backbone("vit-glyphs", pretrained=False),
                              create_stream("glyphs", **TINY_GLYPHS).info, TrainSettings())
    try:
        with pytest.raises(UserError, match="defines experience_extras but does not derive"):
            create_strategy("test-duck-typed", context)
        with pytest.raises(UserError, match="built a object, not an Avalanche training"):
            create_strategy("test-not-a-template", context)
        naive = create_strategy("naive", context)
        assert naive.train_epochs == TrainSettings().epochs
    finally:
        for name in ("test-duck-typed", "test-not-a-template"):
            STRATEGIES._entries.pop(name)


# ----------------------------------------------------------------------------- resolve
def test_resolve_checks_everything_and_builds_nothing():
    from clplatform.app.spec import make_spec, resolve
    from clplatform.registry import STRATEGIES
    resolved = resolve(make_spec(strategy="naive", stream="glyphs",
                                 backbone="timm:resnet18", stream_options=TINY_GLYPHS,
                                 backbone_options={"pretrained": "false"}))
    assert resolved.backbone.name == "timm"
    assert resolved.backbone_options.model_name == "resnet18"
    assert resolved.backbone_options.pretrained is False
    assert resolved.stream.benchmark is None and resolved.stream.parsed.seed is None
    settings = resolved.settings()
    assert (settings.epochs, settings.batch_size, settings.lr) == (
        TrainDefaults.epochs, TrainDefaults.batch_size, TrainDefaults.lr)
    assert resolved.label == "naive-glyphs-s0"
    # a strategy's own defaults (the train_defaults trait), and the user's values over them
    own = next(n for n in STRATEGIES.names()
               if STRATEGIES.get(n).traits.train_defaults != TrainDefaults())
    defaults = STRATEGIES.get(own).traits.train_defaults
    settings = resolve(make_spec(strategy=own)).settings()
    assert (settings.epochs, settings.batch_size, settings.lr) == (
        defaults.epochs, defaults.batch_size, defaults.lr)
    assert resolve(make_spec(strategy=own, lr="0.5", seed="3")).settings().lr == 0.5
    with pytest.raises(UserError, match="unknown backbone 'nope'"):
        resolve(make_spec(backbone="nope"))
    with pytest.raises(UserError, match="invalid value 0 for epochs"):
        resolve(make_spec(epochs="0"))


def test_dry_run_and_sweep_resolve_a_timm_backbone_like_a_run(tmp_path):
    from clplatform.app.spec import make_spec
    from clplatform.app.sweep import plan
    config = json.loads(_invoke("run", "--dry-run", "--backbone", "timm:resnet18",
                                "--backbone-opt", "pretrained=false", "--stream-opt",
                                "samples_per_class=2", "--stream-opt",
                                "test_samples_per_class=1").stdout)
    assert config["backbone"]["name"] == "timm:resnet18"
    assert config["backbone"]["model_name"] == "resnet18"
    (cell,) = plan(["naive"], ["glyphs"], [2], {}, make_spec(backbone="timm:resnet18"))
    assert cell.id == "naive-glyphs-s2"
    with pytest.raises(UserError, match="backbone 'timm:' needs a value"):
        plan(["naive"], ["glyphs"], [0], {}, make_spec(backbone="timm:"))


# ----------------------------------------------------------------------------- resume
def test_python_resume_finishes_an_interrupted_run(tmp_path, pretrained_backbone):
    with stopped_after(0):
        clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, epochs=1,
                       out=tmp_path / "a")
    (run_dir,) = (tmp_path / "a").iterdir()
    assert clplatform.load_run(run_dir).status == "interrupted"
    run = clplatform.resume(run_dir)
    assert run.status == "complete" and len(run.experiences) == 3
    assert len(run.record["resumed"]) == 1
    reference = clplatform.run("naive", "glyphs", stream_options=TINY_GLYPHS, epochs=1,
                               out=tmp_path / "b")
    assert np.allclose(run.accuracy["accuracy"], reference.accuracy["accuracy"])
    with pytest.raises(UserError, match="nothing to resume"):
        clplatform.resume(run_dir)


# ----------------------------------------------------------------------------- old names
def test_a_stream_file_importing_an_old_package_name_is_told_the_new_one(tmp_path):
    script = tmp_path / "old_stream.py"
    script.write_text("import numpy as np\nfrom streams import from_arrays\n"
                      "def make():\n    return None\n")
    line = _one_error_line(_invoke("run", "--stream", f"{script}:make", "--dry-run"))
    assert line == (f"clplat: error: {script}:2 imports 'streams', which is now "
                    "'clplatform.streams'")


def test_a_plugin_importing_an_old_package_name_is_named_in_the_warning(tmp_path):
    """An installed distribution (a dist-info folder on the path) whose strategy entry
    point imports ``strategies``: clplat warns, naming the import and the new name."""
    site = tmp_path / "site"
    info = site / "old_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: old-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[clplatform.strategies]\nold = old_plugin:build\n")
    (site / "old_plugin.py").write_text("import torch\nfrom strategies.base import "
                                        "StrategyContext\n\ndef build(ctx, opts):\n"
                                        "    return None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "clplatform", "list", "strategies"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"clplat: warning: cannot load strategy plugin 'old' (old_plugin:build): "
        f"{site / 'old_plugin.py'}:2 imports 'strategies', which is now "
        "'clplatform.strategies'"]
    assert "naive" in done.stdout
