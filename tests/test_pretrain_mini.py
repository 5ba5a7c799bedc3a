"""vit-mini: architecture, `clplat pretrain --backbone vit-mini`, the shipped weights file,
the linear probe."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from clplatform.app.cli import cli
from clplatform.app.factories import create_backbone, create_stream
from clplatform.backbones import GlyphViTArch, MiniViTArch, build_glyph_vit
from clplatform.errors import UserError

from conftest import TINY_GLYPHS


def invoke(*args):
    return CliRunner().invoke(cli, list(args), prog_name="clplat")


def test_vit_mini_architecture():
    model = build_glyph_vit(MiniViTArch())
    mods = list(model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in mods)  # no running stats
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in mods) == 3
    assert not any(k.endswith("running_mean") for k in model.state_dict())
    n = sum(p.numel() for p in model.parameters())
    assert n * 4 < 25e6  # the weights file bound (float32)
    tokens = model.forward_features(torch.zeros(2, 1, 32, 32))
    assert tokens.shape == (2, 17, MiniViTArch().embed_dim)  # 16 patch tokens + CLS
    # vit-glyphs is unchanged: same keys, BatchNorm stem, 784,320 parameters
    glyphs = build_glyph_vit(GlyphViTArch())
    assert "patch_embed.backbone.1.running_mean" in glyphs.state_dict()
    assert sum(p.numel() for p in glyphs.parameters()) == 784320
    assert len(glyphs.state_dict()) == 96


def test_augment_identity_and_shift():
    from clplatform.models.pretrain import augment
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 14:18, 14:18] = 1.0
    same = augment(x, g, 0.0, (1.0, 1.0))
    torch.testing.assert_close(same, x)
    moved = augment(x, torch.Generator().manual_seed(0), 0.125, (0.8, 1.2))
    assert not torch.equal(moved, x)
    centre = lambda t: (t[0, 0].sum(0) * torch.arange(32)).sum() / t[0, 0].sum()  # noqa: E731
    assert any(abs(centre(moved[i:i + 1]) - 15.5) > 0.5 for i in range(4))
    again = augment(x, torch.Generator().manual_seed(0), 0.125, (0.8, 1.2))
    torch.testing.assert_close(moved, again)


def test_lr_schedule_warms_up_then_decays():
    from clplatform.models.pretrain import MiniPretrainRecipe, _lr_at
    r = MiniPretrainRecipe()
    lrs = [_lr_at(s, 100, 10, r) for s in range(100)]
    assert lrs[0] == pytest.approx(r.lr / 10) and lrs[9] == pytest.approx(r.lr)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(r.min_lr, abs=1e-5)


def test_quick_pretrain_writes_weights_that_vit_mini_uses(tmp_path, runs_dir):
    out = tmp_path / "vit-mini.safetensors"
    result = invoke("pretrain", "--backbone", "vit-mini", "--quick", "--out", str(out),
                    "--quiet", "--threads", "1", "--probe", "digits")
    assert result.exit_code == 0, result.stderr
    assert "test accuracy on mini-pretrain (40 glyph + 4 fractal classes" in result.stdout
    probe = float(result.stdout.split("linear probe on digits: ")[1].split("%")[0])
    assert 10 < probe <= 100  # 10 classes: above chance even for barely trained features
    from clplatform.models.pretrain import weights_metadata
    meta = weights_metadata(out)
    assert meta["glyph_classes"] == 40 and meta["fractal_classes"] == 4
    assert meta["recipe"]["epochs"] == 1 and 0 <= meta["pretrain_test_accuracy"] <= 1
    from safetensors.torch import load_file
    saved = load_file(str(out))
    assert not any(k.startswith("head.") for k in saved)
    backbone = create_backbone("vit-mini", weights=str(out))
    for k, v in backbone.model.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    random = create_backbone("vit-mini", pretrained=False)
    assert not torch.equal(random.model.pos_embed, backbone.model.pos_embed)
    # a run on vit-mini with these weights
    result = invoke("run", "--strategy", "simplecil", "--backbone", "vit-mini",
                    "--backbone-weights", str(out), "--stream-opt", "experiences=3",
                    "--stream-opt", "samples_per_class=6", "--stream-opt",
                    "test_samples_per_class=3", "--epochs", "1", "--quiet",
                    "--out", str(runs_dir), "--json")
    assert result.exit_code == 0, result.stderr
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    backbone_cfg = json.loads((run_dir / "config.json").read_text())["backbone"]
    assert backbone_cfg["name"] == "vit-mini" and backbone_cfg["weights"] == str(out)


def test_missing_shipped_weights_tell_how_to_build_them(tmp_path, monkeypatch):
    from clplatform.models import pretrain
    monkeypatch.setattr(pretrain, "shipped_weights_path", lambda: tmp_path / "none.safetensors")
    with pytest.raises(UserError, match="clplat pretrain --backbone vit-mini"):
        create_backbone("vit-mini")
    create_backbone("vit-mini", pretrained=False)  # random weights need no file


@pytest.mark.parametrize("args, message", [
    (["--backbone", "vit-mini", "--quick"], "--quick writes test weights: give --out FILE"),
    (["--backbone", "vit-mini", "--quick", "--out", "{tmp}", ], "is a folder"),
    (["--backbone", "vit-mini", "--quick", "--out", "{tmp}/w.safetensors", "--probe",
      "glyphs,nosuch"], "unknown stream 'nosuch'"),
    (["--backbone", "vit-huge"], "Invalid value for '--backbone'"),
    (["--epochs", "0"], "Invalid value for '--epochs'"),
])
def test_pretrain_errors_exit_2(tmp_path, args, message):
    result = invoke("pretrain", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "w.safetensors").exists()


def test_linear_probe_of_pretrained_vit_glyphs_is_far_above_chance(pretrained_backbone):
    from clplatform.models.probe import linear_probe
    stream = create_stream("glyphs", **TINY_GLYPHS)
    pretrained = linear_probe(create_backbone("vit-glyphs"), stream)
    random = linear_probe(create_backbone("vit-glyphs", pretrained=False), stream)
    assert pretrained > 0.5 > 1 / 62 * 5  # 62 classes: chance is 1.6 %
    assert pretrained > random + 0.1


def test_probe_command_reports_pretrained_and_random(pretrained_backbone):
    """`clplat probe`: the same figures as linear_probe, the pre-trained backbone far above
    its random initialisation on glyphs."""
    from clplatform.models.probe import linear_probe
    opts = [f"--stream-opt={k}={v}" for k, v in TINY_GLYPHS.items()]
    result = invoke("probe", "--backbone", "vit-glyphs", "--streams", "glyphs", *opts,
                    "--random", "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)["probe"]["glyphs"]
    stream = create_stream("glyphs", **TINY_GLYPHS)
    assert found["pretrained"] == linear_probe(create_backbone("vit-glyphs"), stream)
    assert found["pretrained"] > found["random"] + 0.1
    text = invoke("probe", "--streams", "glyphs", *opts)
    assert text.exit_code == 0 and text.stdout.startswith(
        f"linear probe of vit-glyphs on glyphs: {found['pretrained']:.1%}")


@pytest.mark.parametrize("args, message", [
    (["--streams", "glyphs,nosuch"], "unknown stream 'nosuch'"),
    (["--streams", "glyphs", "--backbone", "vit-huge"], "vit-huge"),
    (["--streams", "glyphs", "--stream-opt", "colour=1"], "colour"),
    (["--streams", "glyphs", "--backbone-weights", "/nonexistent.pt"], "/nonexistent.pt"),
])
def test_probe_errors_exit_2(args, message):
    result = invoke("probe", *args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------- resumable pre-training
QUICK2 = ["pretrain", "--backbone", "vit-mini", "--quick", "--epochs", "2", "--threads", "1"]
# the quick corpus: 264 training images, batch 32 -> 9 steps an epoch, 18 in all


@pytest.fixture(scope="module")
def uninterrupted_quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole") / "w.safetensors"
    result = invoke(*QUICK2, "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.stderr
    from safetensors.torch import load_file
    return load_file(str(out))


def assert_same_weights(path, reference):
    from safetensors.torch import load_file
    weights = load_file(str(path))
    assert weights.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(weights[key], value), key


def test_interrupted_quick_pretrain_resumes_to_the_same_weights(tmp_path, uninterrupted_quick):
    out = tmp_path / "w.safetensors"
    state = tmp_path / "w.safetensors.state.pt"
    result = invoke(*QUICK2, "--out", str(out), "--quiet", "--stop-after-steps", "4")
    assert result.exit_code == 143 and not out.exists()  # as SIGTERM: 128 + 15
    assert "stopped at step 4/18" in result.stderr
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 4 and saved["epoch"] == 0 and saved["order"].shape == (264,)
    assert saved["corpus"] == {"glyph_classes": 40, "fractal_classes": 4,
                               "train_images": 264, "test_images": 132}
    # resumed (automatically: the state matches the recipe) up to the end of epoch 1
    result = invoke(*QUICK2, "--out", str(out), "--stop-after-steps", "9")
    assert result.exit_code == 143, result.stderr
    assert "resumed at step 4/18" in result.stderr and "epoch 1/2" in result.stderr
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 9 and saved["epoch"] == 1 and saved["order"] is None
    result = invoke(*QUICK2, "--out", str(out), "--resume")
    assert result.exit_code == 0, result.stderr
    assert "resumed at step 9/18" in result.stderr and "epoch 2/2" in result.stderr
    assert out.is_file() and not state.exists()  # the state goes when the weights are written
    assert_same_weights(out, uninterrupted_quick)


def test_sigterm_saves_the_state_at_the_end_of_the_step(tmp_path, monkeypatch,
                                                        uninterrupted_quick):
    import os
    import signal

    from clplatform.models import pretrain
    calls = []

    def augment_then_signal(*args):
        calls.append(1)
        if len(calls) == 12:  # during step 12 (epoch 2): the step finishes, then it stops
            os.kill(os.getpid(), signal.SIGTERM)
        return augment(*args)
    augment = pretrain.augment
    monkeypatch.setattr(pretrain, "augment", augment_then_signal)
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "w.safetensors"
    result = invoke(*QUICK2, "--out", str(out), "--quiet")
    assert result.exit_code == 143 and "SIGTERM received" in result.stderr
    assert torch.load(f"{out}.state.pt", weights_only=True)["step"] == 12
    assert signal.getsignal(signal.SIGTERM) == handler  # the handlers are restored
    monkeypatch.setattr(pretrain, "augment", augment)
    result = invoke(*QUICK2, "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.stderr
    assert_same_weights(out, uninterrupted_quick)


def test_state_is_saved_every_checkpoint_interval(tmp_path, monkeypatch):
    from clplatform.models import pretrain
    written = []
    atomic_path = pretrain.atomic_path

    def spy(path):
        written.append(Path(path).name)
        return atomic_path(path)
    monkeypatch.setattr(pretrain, "atomic_path", spy)
    out = tmp_path / "w.safetensors"
    pretrain.pretrain_vit_mini(pretrain.QUICK_RECIPE, out, progress=False, checkpoint_every=0.0)
    assert written == ["w.safetensors.state.pt"] * 9 + ["w.safetensors"]  # every step, then
    assert not (tmp_path / "w.safetensors.state.pt").exists()             # the weights
    written.clear()
    pretrain.pretrain_vit_mini(pretrain.QUICK_RECIPE, out, progress=False,
                               checkpoint_every=None)
    assert written == ["w.safetensors"]  # never: only signals save the state


def test_state_of_another_recipe_or_none_is_refused(tmp_path):
    out = tmp_path / "w.safetensors"
    state = tmp_path / "w.safetensors.state.pt"
    result = invoke(*QUICK2, "--out", str(out), "--quiet", "--resume")
    assert result.exit_code == 2 and "there is no state file" in result.stderr
    assert result.stderr.count("\n") == 1 and not state.exists()
    assert invoke(*QUICK2, "--out", str(out), "--quiet", "--stop-after-steps", "2"
                  ).exit_code == 143
    before = state.read_bytes()
    result = invoke(*QUICK2, "--out", str(out), "--quiet", "--seed", "3")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "belongs to another recipe (seed=0 (now 3))" in result.stderr
    result = invoke(*QUICK2[:-4], "--epochs", "3", "--threads", "1", "--out", str(out))
    assert result.exit_code == 2 and "epochs=2 (now 3)" in result.stderr
    assert state.read_bytes() == before and not out.exists()  # nothing written
    state.write_bytes(b"not a state")
    result = invoke(*QUICK2, "--out", str(out), "--quiet")
    assert result.exit_code == 2 and "not a readable state file" in result.stderr
    result = invoke("pretrain", "--resume")
    assert result.exit_code == 2 and "--resume applies to --backbone vit-mini only" \
        in result.stderr


def test_shipped_weights_are_the_recipes_and_load():
    """The package's vit-mini weights: in the package data, ≤ 25 MB, written by the default
    recipe on the default architecture, and what `vit-mini` loads."""
    import configparser
    import dataclasses
    import fnmatch

    from safetensors.torch import load_file

    from clplatform.models import pretrain
    path = pretrain.shipped_weights_path()
    assert path.is_file() and path.stat().st_size <= 25e6
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    package = Path(pretrain.__file__).parent
    assert fnmatch.fnmatch(str(path.relative_to(package)),
                           setup["options.package_data"]["clplatform.models"].strip())
    meta = pretrain.weights_metadata(path)
    as_json = lambda obj: json.loads(json.dumps(dataclasses.asdict(obj)))  # noqa: E731
    assert meta["recipe"] == as_json(pretrain.MiniPretrainRecipe())
    assert meta["arch"] == as_json(MiniViTArch())
    assert meta["glyph_classes"] == 3576 and meta["fractal_classes"] == 1000
    assert 0.5 < meta["pretrain_test_accuracy"] <= 1
    state = load_file(str(path))
    loaded = create_backbone("vit-mini").model.state_dict()
    assert state.keys() == {k for k in loaded if not k.startswith("head.")}
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
