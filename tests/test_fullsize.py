"""The full-size path (issue 19): backbone input normalisation, training precision, frozen
caches within a memory budget, recipe presets, and 224-px ViT-B/16 runs (random weights,
nothing downloaded)."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import clplatform
from clplatform import create_backbone
from clplatform.app.cli import cli
from clplatform.errors import UserError

from conftest import TINY_GLYPHS


def invoke(*args):
    return CliRunner().invoke(cli, list(args), prog_name="clplat")


# ------------------------------------------------------------------ normalize=false
def _first_input(backbone, x):
    """What the timm model's patch embedding receives for images ``x``."""
    seen = []
    handle = backbone.model.patch_embed.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].clone()))
    with torch.no_grad():
        backbone(x)
    handle.remove()
    return seen[0]


def test_normalize_false_feeds_unit_inputs_and_is_the_one_switch():
    kw = {"pretrained": False, "img_size": 32}
    x = torch.rand(2, 3, 32, 32)
    plain = create_backbone("timm:vit_tiny_patch16_224", **kw)  # mean = std = 0.5
    unit = create_backbone("timm:vit_tiny_patch16_224", normalize=False, **kw)
    assert torch.allclose(_first_input(plain, x), (x - 0.5) / 0.5)
    seen = _first_input(unit, x)
    assert torch.equal(seen, x) and seen.min() >= 0 and seen.max() <= 1
    # a strategy's input_norm=backbone follows the backbone; unit can only turn it off
    assert torch.equal(unit.prepare(x, True), x) and torch.equal(plain.prepare(x, False), x)


def test_timm_weights_come_from_the_local_cache_never_downloaded(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub
    from safetensors.torch import save_file
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    with pytest.raises(UserError, match="no local weights .* --backbone-weights FILE, "
                                        "--backbone-opt download=true"):
        create_backbone(f"timm:{name}")
    # a file in the Hugging Face cache layout is read without any network access
    source = create_backbone(f"timm:{name}", pretrained=False)
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    repo = tmp_path / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    loaded = create_backbone(f"timm:{name}")
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in state.items())


# ------------------------------------------------------------------ precision
@pytest.mark.slow
def test_bf16_records_close_to_fp32_flops_identical(runs_dir, pretrained_backbone):
    """Tolerance: SimpleCIL's accuracies under bf16 autocast within 0.05 of fp32 (about 3
    of the 63 test images of an experience; measured: identical); FLOP counts identical,
    for a trained strategy too; the precision is recorded."""
    stream = {**TINY_GLYPHS, "experiences": 2}
    runs = {p: clplatform.run("simplecil", "glyphs", stream_options=stream, seed=0,
                              out=str(runs_dir), precision=p) for p in ("fp32", "bf16")}
    fp32, bf16 = (runs[p].accuracy for p in ("fp32", "bf16"))
    assert (fp32["accuracy"] - bf16["accuracy"]).abs().max() <= 0.05
    assert fp32["accuracy"].max() > 0.5  # a meaningful comparison, not chance
    assert list(runs["fp32"].experiences["inference_flops_per_sample"]) == \
        list(runs["bf16"].experiences["inference_flops_per_sample"])
    assert runs["bf16"].config["train"]["precision"] == "bf16"
    trained = [clplatform.run("naive", "glyphs", stream_options=stream, seed=0, epochs=1,
                              out=str(runs_dir), precision=p)
               for p in ("fp32", "bf16")]
    assert list(trained[0].experiences["train_flops"]) == \
        list(trained[1].experiences["train_flops"])


def test_fp16_loss_scaling_skips_non_finite_updates():
    """The fp16 plugin's update rule, on CPU (the CUDA scaler's arithmetic is the same):
    an iteration with an infinite gradient leaves the parameters and momentum untouched."""
    from types import SimpleNamespace

    from clplatform.precision import MixedPrecision
    plugin = MixedPrecision("fp16", "cpu")
    assert plugin.scaler is None  # loss scaling only on CUDA
    plugin.scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    strategy = SimpleNamespace(optimizer=opt, loss=(w * torch.tensor([1.0, 2.0, 3.0])).sum())
    plugin.before_backward(strategy)
    strategy.loss.backward()
    plugin.after_backward(strategy)
    plugin.before_update(strategy)
    assert torch.allclose(w.grad, torch.tensor([1.0, 2.0, 3.0]))  # unscaled
    opt.step()
    plugin.after_update(strategy)
    assert torch.allclose(w.detach(), torch.tensor([0.9, 0.8, 0.7]))
    before = w.detach().clone()
    w.grad = torch.tensor([float("inf"), 0.0, 0.0])
    plugin.before_update(strategy)
    opt.step()
    plugin.after_update(strategy)
    assert torch.equal(w.detach(), before) and plugin.skipped_updates == 1
    assert plugin.scaler.get_scale() == 2.0  # halved after the overflow


# ------------------------------------------------------------------ frozen caches
@pytest.mark.parametrize("strategy", [pytest.param("sema", marks=pytest.mark.slow),
                                      pytest.param("aper", marks=pytest.mark.slow)])
def test_cache_over_budget_recomputes_with_identical_records(strategy, runs_dir,
                                                             pretrained_backbone):
    stream = {**TINY_GLYPHS, "experiences": 2}
    cached, recomputed = (clplatform.run(strategy, "glyphs", stream_options=stream, seed=0,
                                         out=str(runs_dir), cache_gib=gib)
                          for gib in (4.0, 0.0))
    columns = ["train_exp", "eval_exp", "accuracy", "loss", "task_accuracy"]
    assert cached.accuracy[columns].equals(recomputed.accuracy[columns])
    assert recomputed.config["train"]["cache_gib"] == 0.0


def test_frozen_rows_stand_in_for_the_cached_tensor():
    from clplatform.strategies.base import TensorBatches
    from clplatform.strategies.vit import FrozenRows, frozen_rows, map_batches
    x = torch.randn(10, 4)
    fn = torch.nn.Linear(4, 3)
    full = map_batches(fn, x, "cpu", batch_size=4)
    assert torch.equal(frozen_rows(fn, x, "cpu", 10 * 3 * 4, batch_size=4), full)
    rows = frozen_rows(fn, x, "cpu", 10 * 3 * 4 - 1, batch_size=4)
    assert isinstance(rows, FrozenRows) and len(rows) == 10
    assert torch.allclose(rows[torch.tensor([7, 2])], full[[7, 2]])
    assert torch.allclose(map_batches(lambda t: t, rows, "cpu", batch_size=3), full)
    torch.manual_seed(0)
    batches = [b[0] for b in TensorBatches(rows, None, 4)]
    torch.manual_seed(0)
    assert all(torch.allclose(a, b[0]) for a, b in zip(batches, TensorBatches(full, None, 4)))


# ------------------------------------------------------------------ presets
def _recipe(*args):
    result = invoke("run", *args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_preset_resolves_to_the_published_recipe():
    recipe = _recipe("--preset", "sema-imagenet-a")
    assert recipe["stream"] == {"name": "imagenet-a", "tasks": "20", "order_seed": "none",
                                "transform": "pilot"}
    backbone = recipe["backbone"]
    assert backbone["name"] == "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert backbone["normalize"] is False and backbone["download"] is False
    sema = recipe["strategy"]
    assert sema["name"] == "sema"
    assert (sema["functional_epochs"], sema["threshold"], sema["lr"], sema["rd_lr"],
            sema["rd_epochs"], sema["batch_size"], sema["scan_batch_size"],
            sema["bottleneck"], sema["rd_hidden"], sema["expandable_layers"]) == \
        (20, 1.0, 0.005, 0.01, 20, 32, 128, 16, 128, 3)
    assert recipe["train"]["seed"] == 1993 and recipe["seeds"] == [1993, 1994, 1995, 1996,
                                                                   1997]
    cifar = _recipe("--preset", "sema-cifar100")
    assert (cifar["stream"]["name"], cifar["stream"]["tasks"], cifar["stream"]["order_seed"],
            cifar["strategy"]["functional_epochs"], cifar["strategy"]["threshold"]) == \
        ("cifar100", "10", "1993", 5, 2.0)
    assert _recipe("--preset", "sema-imagenet-r-20")["stream"]["tasks"] == "20"
    lftl = _recipe("--preset", "lftl-office-home-rc")
    assert lftl["stream"] == {"name": "office-home", "source": "Real World",
                              "targets": "Clipart", "transform": "shot"}
    assert lftl["backbone"]["name"] == "timm:resnet50.tv_in1k"
    assert lftl["backbone"]["normalize"] is True
    assert (lftl["strategy"]["budget_per_round"], lftl["strategy"]["round_epochs"],
            lftl["strategy"]["kappa"], lftl["strategy"]["tune_blocks"]) == (0.01, 15, 100, -1)
    visda = _recipe("--preset", "lftl-visda")
    assert (visda["backbone"]["name"], visda["strategy"]["budget_per_round"],
            visda["strategy"]["kappa"], visda["strategy"]["vpa_weight"], visda["seeds"]) == \
        ("timm:resnet101.tv_in1k", 0.001, 500, 10.0, [2023, 2024, 2025])


def test_explicit_options_override_the_preset(tmp_path):
    recipe = _recipe("--preset", "sema-cifar100", "--set", "threshold=1.5", "--seed", "7",
                     "--stream-opt", "tasks=20", "--stream-opt", "root=/data",
                     "--backbone-opt", "normalize=true", "--precision", "bf16")
    assert recipe["strategy"]["threshold"] == 1.5
    assert recipe["strategy"]["functional_epochs"] == 5  # the rest of the recipe stays
    assert recipe["stream"]["tasks"] == "20" and recipe["stream"]["root"] == "/data"
    assert recipe["backbone"]["normalize"] is True and recipe["train"]["seed"] == 7
    assert recipe["train"]["precision"] == "bf16"
    # another strategy drops the recipe's hyper-parameters, keeps stream and backbone
    other = _recipe("--preset", "sema-cifar100", "--strategy", "simplecil")
    assert other["strategy"] == {"name": "simplecil"}
    assert other["stream"]["name"] == "cifar100" and other["backbone"]["normalize"] is False
    config = tmp_path / "c.toml"
    config.write_text("[strategy]\nthreshold = 3.0\n[stream]\ntasks = '5'\n")
    from_file = _recipe("--preset", "sema-cifar100", "--config", str(config))
    assert from_file["strategy"]["threshold"] == 3.0 and from_file["stream"]["tasks"] == "5"


@pytest.mark.parametrize("args, message", [
    (["run", "--preset", "sema-cifar-100"], "unknown preset 'sema-cifar-100'; valid presets:"),
    (["run", "--preset", "lftl-office31-aa"], "unknown preset 'lftl-office31-aa'"),
    (["run", "--preset", "sema-table1"], "compares 7 strategies: use clplat sweep"),
    (["sweep", "--preset", "sema-cifar100", "--preset", "sema-vtab"], "at most one"),
    (["run", "--precision", "fp8", "--dry-run"], "invalid value 'fp8' for precision"),
])
def test_bad_presets_exit_2_one_line(args, message, tmp_path):
    result = invoke(*args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_sweep_recipe_keeps_its_hyper_parameters_to_its_strategy(monkeypatch, tmp_path):
    """``clplat sweep --preset sema-cifar100 --strategies sema,aper``: the recipe's seeds
    and backbone for every cell, SEMA's hyper-parameters for SEMA only (APER keeps its own
    lr and batch size). ``--streams glyphs`` stands in for the cifar100 stream (not built
    here), which drops the recipe's stream options as another stream name does."""
    from clplatform.app import sweep
    planned = []
    monkeypatch.setattr(sweep, "run_sweep",
                        lambda cells, out, options: (planned.extend(cells) or cells, None,
                                                     None))
    result = invoke("sweep", "--preset", "sema-cifar100", "--strategies", "sema,aper",
                    "--streams", "glyphs", "--set", "functional_epochs=2",
                    "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    specs = {(c.spec.strategy, c.spec.train["seed"]): c.spec for c in planned}
    assert sorted(specs) == sorted((s, seed) for s in ("sema", "aper")
                                   for seed in range(1993, 1998))
    sema, aper = specs["sema", 1993], specs["aper", 1993]
    assert sema.strategy_options["lr"] == 0.005 and sema.strategy_options["threshold"] == 2.0
    assert sema.strategy_options["functional_epochs"] == "2"  # --set wins (raw, as given)
    assert "lr" not in aper.strategy_options and "batch_size" not in aper.strategy_options
    assert aper.backbone == "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert aper.backbone_options["normalize"] is False and aper.stream_options == {}


# ------------------------------------------------------------------ 224-px ViT-B/16
def _images_224(n_train: int, n_test: int, classes: int = 2):
    from clplatform.streams import from_arrays
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train, 3, 224, 224), generator=g, dtype=torch.uint8)
    xt = torch.randint(0, 256, (n_test, 3, 224, 224), generator=g, dtype=torch.uint8)
    return from_arrays(x, torch.arange(n_train) % classes,
                       test=(xt, torch.arange(n_test) % classes),
                       experiences=min(classes, 2), name="noise224")


VIT_B = {"backbone": "timm:vit_base_patch16_224",
         "backbone_options": {"pretrained": False, "normalize": False}}


@pytest.mark.slow
def test_vit_b_224_simplecil_one_backbone_forward_per_image(runs_dir):
    """SimpleCIL's training FLOPs are exactly one backbone forward per training image: the
    evaluation forward of one image less the cosine head's product (2 x 768 x 1 class)."""
    stream = _images_224(4, 1, classes=1)
    run = clplatform.run("simplecil", stream, seed=0, out=str(runs_dir), **VIT_B)
    assert run.status == "complete"
    (row,) = run.experiences.to_dict("records")
    forward = row["inference_flops_per_sample"] - 2 * 768 * 1
    assert 35.0e9 < forward < 35.3e9  # ViT-B/16 at 224 px: 17.6 G multiply-adds
    assert row["train_flops"] == 4 * forward


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["naive", "sema"])
def test_vit_b_224_trained_strategies_complete(strategy, runs_dir):
    stream = _images_224(16, 4)
    extra = {"epochs": 1, "batch_size": 8} if strategy == "naive" else {
        "strategy_options": {"functional_epochs": 1, "rd_epochs": 1, "batch_size": 8}}
    run = clplatform.run(strategy, stream, seed=0, out=str(runs_dir), precision="bf16",
                         **VIT_B, **extra)
    assert run.status == "complete" and len(run.experiences) == 2
    assert (run.experiences["train_flops"] > 0).all()


def test_simplecil_prototypes_read_the_eval_transform(runs_dir):
    """As RevisitingCIL's SimpleCIL (prototypes from the training split with mode="test"):
    a training transform that destroys the images changes nothing."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    from clplatform.streams import from_arrays
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 3, 32, 32, generator=g), torch.arange(24) % 4
    plain = from_arrays(x[:16], y[:16], test=(x[16:], y[16:]), experiences=2)
    augmented = benchmark_from_datasets(
        train=[e.dataset.replace_current_transform_group(lambda t: t * 0)
               for e in plain.train_stream],
        test=[e.dataset for e in plain.test_stream])
    assert augmented.train_stream[0].dataset[0][0].abs().sum() == 0
    backbone = {"backbone": "timm:vit_tiny_patch16_224",
                "backbone_options": {"pretrained": False, "img_size": 32}}
    runs = [clplatform.run("simplecil", bm, seed=0, out=str(runs_dir), **backbone)
            for bm in (plain, augmented)]
    columns = ["train_exp", "eval_exp", "accuracy", "loss"]
    assert runs[0].accuracy[columns].equals(runs[1].accuracy[columns])
    assert runs[0].accuracy["accuracy"].max() > 0.25
