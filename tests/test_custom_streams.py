"""Bring your own data: arrays, image folders, Python callables, entry points and Avalanche's
classic benchmarks, each end to end through `clplat run --json`, with their bad inputs."""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import clplatform
from clplatform.app.cli import cli
from clplatform.errors import UserError
from clplatform.streams import from_arrays

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "examples" / "plugin" / "clplat_example" / "shapes.py"
FAST = ["--epochs", "1", "--quiet", "--json"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="clplat")


def _ok(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _bad(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clplat: error: "), result.stderr
    assert message in lines[0], lines[0]


# ------------------------------------------------------------------ arrays
def test_from_arrays_class_and_domain_incremental():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 12, 12), dtype=np.uint8)
    y = np.repeat([10, 20, 30, 40, 50, 60], 10)
    bm = from_arrays(x, y, experiences=3, test_fraction=0.2, seed=1)
    assert bm.info.scenario == "class-incremental" and bm.info.image_shape == (1, 12, 12)
    assert sorted(bm.info.classes) == ["10", "20", "30", "40", "50", "60"]
    assert [len(e.classes_in_this_experience) for e in bm.train_stream] == [2, 2, 2]
    assert sum(len(e.dataset) for e in bm.train_stream) == 48
    assert sum(len(e.dataset) for e in bm.test_stream) == 12
    domains = np.tile(["b", "a"], 30)
    bm = from_arrays(torch.from_numpy(x).float() / 255, torch.from_numpy(y), domains,
                     domain_order=["b", "a"])
    assert bm.info.scenario == "domain-incremental" and bm.info.domains == ["b", "a"]
    assert [len(e.classes_in_this_experience) for e in bm.train_stream] == [6, 6]


@pytest.mark.parametrize("x, y, message", [
    (np.full((4, 8, 8), np.nan, dtype=np.float32), [0, 1, 0, 1], "NaN or infinite"),
    (np.zeros((4, 8, 8), np.uint8), [0, 1, 0], "expected 4 labels"),
    (np.zeros((4, 8), np.uint8), [0, 1, 0, 1], "expected images"),
])
def test_from_arrays_bad_input(x, y, message):
    with pytest.raises(UserError, match=message):
        from_arrays(x, y)


def test_in_memory_benchmark_runs(runs_dir, pretrained_backbone):
    from clplat_shapes import make_shapes
    data = make_shapes(samples_per_class=8, experiences=2)
    x, y = data.pop("train")
    run = clplatform.run("naive", from_arrays(x, y, **data), epochs=1, out=runs_dir)
    assert run.config["stream"]["name"] == "shapes"
    assert run.config["stream"]["classes"][:1] and len(run.experiences) == 2


# ------------------------------------------------------------------ folders
def _save(path: Path, array: np.ndarray, mode: str = "L") -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode).save(path)


def _folder(root: Path, domains=None, sizes=((20, 20), (40, 24)), per_class=5) -> Path:
    rng = np.random.default_rng(0)
    modes = ["L", "RGB", "RGBA"]
    for d in domains or [None]:
        for c, name in enumerate(["cat", "dog", "owl", "eel"]):
            for i in range(per_class):
                h, w = sizes[i % len(sizes)]
                img = (rng.integers(0, 60, (h, w)) + 50 * c).astype(np.uint8)
                base = root / d if d else root
                suffix = ".png" if i % 2 else ".jpg"
                _save(base / name / f"{i}{suffix}", img, modes[i % 3] if suffix == ".png"
                      else "RGB")
    return root


def test_folder_class_layout(tmp_path, runs_dir, pretrained_backbone):
    root = _folder(tmp_path / "data")
    payload = _ok(invoke("run", "--stream", "folder", "--stream-opt", f"root={root}",
                         "--stream-opt", "experiences=2", "--out", runs_dir, *FAST))
    run = clplatform.load_run(payload["run_dir"])
    assert run.config["stream"]["scenario"] == "class-incremental"
    assert sorted(run.config["stream"]["classes"]) == ["cat", "dog", "eel", "owl"]
    assert list(run.experiences["experience_size"]) == [8, 8]   # 4 of 5 per class train


def test_folder_domain_layout_with_split_folders(tmp_path, runs_dir, pretrained_backbone):
    root = tmp_path / "officehome"
    _folder(root / "train", domains=["Real", "Art", "Clipart"], per_class=3)
    _folder(root / "test", domains=["Real", "Art", "Clipart"], per_class=2)
    payload = _ok(invoke("run", "--strategy", "naive", "--stream", "folder", "--stream-opt",
                         f"root={root}", "--stream-opt", "layout=domain", "--stream-opt",
                         "domains=Real,Clipart,Art", "--out", runs_dir, *FAST))
    run = clplatform.load_run(payload["run_dir"])
    assert run.config["stream"]["domains"] == ["Real", "Clipart", "Art"]
    assert list(run.experiences["experience_size"]) == [12, 12, 12]
    assert run.accuracy.groupby("train_exp")["n_samples"].sum().eq(24).all()


def test_folder_bad_images(tmp_path, runs_dir, pretrained_backbone):
    root = _folder(tmp_path / "data")
    bad = root / "owl" / "broken.png"
    bad.write_bytes(b"not an image")
    _bad(invoke("run", "--stream", "folder", "--stream-opt", f"root={root}", "--out",
                runs_dir, *FAST), f"cannot read image {bad}")
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
    result = invoke("run", "--stream", "folder", "--stream-opt", f"root={root}",
                    "--stream-opt", "skip_bad=true", "--stream-opt", "experiences=2",
                    "--out", runs_dir, *FAST)
    _ok(result)
    assert f"skipped unreadable image {bad}" in result.stderr
    _bad(invoke("run", "--stream", "folder", "--out", runs_dir, *FAST),
         "stream 'folder' needs --stream-opt root=DIR")
    _bad(invoke("run", "--stream", "folder", "--stream-opt", f"root={tmp_path}/nope",
                "--out", runs_dir, *FAST), "stream folder not found")
    (tmp_path / "empty").mkdir()
    _bad(invoke("run", "--stream", "folder", "--stream-opt", f"root={tmp_path}/empty",
                "--out", runs_dir, *FAST), "no images found")


def _huge_png(path: Path, side: int = 15000) -> Path:
    """A PNG whose header declares side x side pixels (the data of a 1-pixel image): PIL
    refuses it on opening as a decompression bomb (over twice Image.MAX_IMAGE_PIXELS)."""
    import zlib
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 4  # signature, then the IHDR chunk's length; type and data follow
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", side, side)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def test_folder_decompression_bomb(tmp_path, runs_dir, pretrained_backbone):
    from PIL import Image
    root = _folder(tmp_path / "data")
    bomb = _huge_png(root / "cat" / "huge.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    _bad(invoke("run", "--dry-run", "--stream", "folder", "--stream-opt", f"root={root}",
                "--out", runs_dir), f"cannot read image {bomb}: Image size (225000000 pixels)"
                                    " exceeds limit")
    result = invoke("run", "--dry-run", "--stream", "folder", "--stream-opt", f"root={root}",
                    "--stream-opt", "skip_bad=true", "--stream-opt", "experiences=2",
                    "--out", runs_dir)
    assert _ok(result)["stream"]["classes"]
    assert f"skipped unreadable image {bomb}: Image size (225000000 pixels)" in result.stderr
    assert not runs_dir.exists()


# ------------------------------------------------------------------ callables
@pytest.fixture(autouse=True)
def _shapes_module(monkeypatch):
    """The example stream importable as the module ``clplat_shapes``."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("clplat_shapes", SHAPES)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "clplat_shapes", module)
    spec.loader.exec_module(module)


def test_callable_from_a_file(runs_dir, pretrained_backbone):
    payload = _ok(invoke("run", "--stream", f"{SHAPES}:make_shapes", "--stream-opt",
                         "experiences=2", "--stream-opt", "samples_per_class=8",
                         "--out", runs_dir, *FAST))
    run = clplatform.load_run(payload["run_dir"])
    assert run.config["stream"]["experiences"] == 2
    assert run.config["stream"]["classes"] and len(run.experiences) == 2


def test_callable_from_a_module(runs_dir, pretrained_backbone):
    payload = _ok(invoke("run", "--stream", "clplat_shapes:make_shapes", "--stream-opt",
                         "samples_per_class=8", "--out", runs_dir, *FAST))
    assert len(clplatform.load_run(payload["run_dir"]).experiences) == 3


def test_callable_returning_an_avalanche_benchmark(tmp_path, runs_dir, pretrained_backbone):
    script = tmp_path / "mine.py"
    script.write_text(
        "import torch\n"
        "from avalanche.benchmarks.scenarios.dataset_scenario import "
        "benchmark_from_datasets\n"
        "from clplatform.streams import classification_dataset\n"
        "def bench(n=12):\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    ds = lambda: classification_dataset(torch.rand(n, 1, 16, 16, generator=g),\n"
        "                                        torch.arange(n) % 3)\n"
        "    return benchmark_from_datasets(train=[ds(), ds()], test=[ds(), ds()])\n")
    payload = _ok(invoke("run", "--stream", f"{script}:bench", "--out", runs_dir, *FAST))
    run = clplatform.load_run(payload["run_dir"])
    assert run.config["stream"]["classes"] == ["0", "1", "2"]
    assert run.config["stream"]["scenario"] == "domain-incremental"


def test_callable_errors(tmp_path, runs_dir):
    script = tmp_path / "bad.py"
    script.write_text("def nothing():\n    return 42\n"
                      "def broken_dict():\n    return {'test': 1}\n")
    (tmp_path / "crash.py").write_text("raise ValueError('boom')\n")
    cases = [(f"{tmp_path}/missing.py:f", "stream file not found"),
             (f"{script}:absent", "has no function 'absent'"),
             (f"{script}:nothing", "returned a int, not an Avalanche benchmark"),
             (f"{script}:broken_dict", "returned a dict without 'train'"),
             (f"{tmp_path}/crash.py:f", "cannot import"),
             ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'")]
    for stream, message in cases:
        _bad(invoke("run", "--stream", stream, "--out", runs_dir, *FAST), message)
    _bad(invoke("run", "--stream", f"{SHAPES}:make_shapes", "--stream-opt", "colour=red",
                "--out", runs_dir, *FAST), "unexpected keyword argument 'colour'")
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


BAD_STREAM_FUNCTIONS = """
import numpy as np
x = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
y = np.arange(40) % 4
def runtime():
    raise RuntimeError("no GPU here")
def value():
    raise ValueError("bad size")
def key():
    return {}["missing"]
def train_five():
    return {"train": 5}
def train_triple():
    return {"train": (x, y, y)}
def test_triple():
    return {"train": (x, y), "test": (x, y, y)}
def triple():
    return (x, y, y)
def plain_list():
    return [x, y]
def nan_labels():
    return {"train": (x, np.where(y == 3, np.nan, y).astype(float))}
def empty_train_stream():
    from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream
    return CLScenario([EagerCLStream("train", []), EagerCLStream("test", [])])
def zero_experiences():
    return {"train": (x, y), "experiences": 0}
def test_fraction_five():
    return {"train": (x, y), "test_fraction": 5}
def negative_seed():
    return {"train": (x, y), "seed": -1}
"""


@pytest.mark.parametrize("function, message", [
    ("runtime", "bad.py:runtime raised RuntimeError: no GPU here"),
    ("value", "bad.py:value raised ValueError: bad size"),
    ("key", "bad.py:key raised KeyError: 'missing'"),
    ("train_five", "'train' returned by {script}:train_five is a int, not a pair (images, "
                   "labels)"),
    ("train_triple", "is a 3-item tuple, not a pair (images, labels)"),
    ("test_triple", "'test' returned by {script}:test_triple is a 3-item tuple"),
    ("triple", "bad.py:triple returned a tuple, not an Avalanche benchmark"),
    ("plain_list", "bad.py:plain_list returned a list, not an Avalanche benchmark"),
    ("nan_labels", "bad.py:nan_labels: labels contain NaN or infinite values"),
    ("empty_train_stream", "bad.py:empty_train_stream has no training experience"),
    ("zero_experiences", "invalid value 0 for experiences (stream {script}:zero_experiences)"
                         ": must be >= 1"),
    ("test_fraction_five", "invalid value 5.0 for test_fraction (stream "
                           "{script}:test_fraction_five): must be <= 0.9"),
    ("negative_seed", "invalid value -1 for seed (stream {script}:negative_seed): must be "
                      ">= 0"),
])
def test_a_stream_function_that_fails_or_returns_garbage(function, message, tmp_path,
                                                         runs_dir):
    """One line naming the function and the problem, exit 2, nothing written."""
    script = tmp_path / "bad.py"
    script.write_text(BAD_STREAM_FUNCTIONS)
    _bad(invoke("run", "--stream", f"{script}:{function}", "--out", runs_dir, *FAST),
         message.format(script=script))
    assert not runs_dir.exists()


def test_from_arrays_validates_its_numbers():
    x, y = np.zeros((12, 8, 8), np.uint8), np.arange(12) % 3
    assert len(from_arrays(x, y, experiences=3).train_stream) == 3
    with pytest.raises(UserError, match="invalid value 0 for experiences"):
        from_arrays(x, y, experiences=0)
    with pytest.raises(UserError, match="invalid value 5.0 for test_fraction"):
        from_arrays(x, y, test_fraction=5)
    with pytest.raises(UserError, match="invalid value 4294967296 for seed"):
        from_arrays(x, y, seed=2**32)


# ------------------------------------------------------------------ entry points
@pytest.mark.slow  # a pip install (about 20 s)
def test_entry_points_of_an_installed_distribution(tmp_path, pretrained_backbone):
    """pip-installs the example plugin (a real distribution) into a folder on PYTHONPATH;
    its stream and strategy then appear in `clplat list` and run by name."""
    import shutil
    source = shutil.copytree(ROOT / "examples" / "plugin", tmp_path / "plugin")  # builds here
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target),
                    str(source)], check=True, capture_output=True)
    assert list(target.glob("clplatform_example_plugin-*.dist-info"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    clplat = [sys.executable, "-m", "clplatform.app.cli"]
    listed = subprocess.run(clplat + ["list", "streams"], env=env, capture_output=True,
                            text=True, check=True).stdout
    assert "shapes" in listed and "example plugin" in listed
    listed = subprocess.run(clplat + ["list", "strategies", "-v"], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert "partial-finetune" in listed and "blocks" in listed
    done = subprocess.run(clplat + ["run", "--strategy", "partial-finetune", "--set",
                                    "blocks=1", "--stream", "shapes", "--stream-opt",
                                    "samples_per_class=8", "--out", str(tmp_path / "runs"),
                                    *FAST], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    run = clplatform.load_run(json.loads(done.stdout)["run_dir"])
    assert run.config["strategy"] == {"name": "partial-finetune", "blocks": 1}
    assert run.experiences["params_trainable"].iloc[0] > 100_000  # one block trains


# ------------------------------------------------------------------ Avalanche classics
def _fake_mnist(root: Path, n_train: int = 40, n_test: int = 20, dataset: str = "MNIST"
                ) -> Path:
    """Tiny MNIST (or FashionMNIST: the same format) files in the dataset's own (idx)
    format; the image of class c has a bright bar at rows 2 + 2c and 3 + 2c."""
    raw = root / dataset / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 30, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):  # a bar whose height is the class
            images[i, 2 + 2 * c:4 + 2 * c, 4:24] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())
    return root


@pytest.mark.parametrize("name, scenario", [("SplitMNIST", "class-incremental"),
                                            ("PermutedMNIST", "domain-incremental")])
def test_avalanche_classic_offline(name, scenario, tmp_path, runs_dir, pretrained_backbone):
    root = _fake_mnist(tmp_path / "mnist")
    payload = _ok(invoke("run", "--stream", f"avalanche:{name}", "--stream-opt",
                         f"root={root}", "--stream-opt", "experiences=2", "--out", runs_dir,
                         *FAST))
    run = clplatform.load_run(payload["run_dir"])
    assert run.config["stream"]["scenario"] == scenario
    assert list(run.experiences["experience_size"]) == ([20, 20] if scenario.startswith(
        "class") else [40, 40])
    assert run.accuracy["n_samples"].groupby(run.accuracy["train_exp"]).sum().eq(
        20 if scenario.startswith("class") else 40).all()


def test_avalanche_classic_records_the_dataset_class_names(tmp_path, pretrained_backbone):
    """SplitFMNIST renumbers its classes in a seeded order: every label is recorded with the
    name of the FashionMNIST class its images come from (read off the bar in the image)."""
    from torchvision.datasets import FashionMNIST

    from clplatform.data import dataset_tensors
    from clplatform import create_stream
    root = _fake_mnist(tmp_path / "fmnist", dataset="FashionMNIST")
    bm = create_stream("avalanche", benchmark="SplitFMNIST", root=str(root), experiences=2,
                       seed=3)
    names = bm.info.classes
    assert sorted(names) == sorted(FashionMNIST.classes) and names != FashionMNIST.classes
    for experience in [*bm.train_stream, *bm.test_stream]:
        x, y = dataset_tensors(experience.dataset)
        bar_row = x[:, 0, :, 4:24].mean(-1).argmax(-1)  # first row of the bar: 2 + 2c
        for label, row in zip(y.tolist(), bar_row.tolist()):
            assert names[label] == FashionMNIST.classes[(row - 2) // 2]
    result = invoke("run", "--dry-run", "--stream", "avalanche:SplitFMNIST", "--stream-opt",
                    f"root={root}", "--stream-opt", "experiences=5", "--out", tmp_path / "r")
    assert _ok(result)["stream"]["classes"][:1] != ["0"]
    assert sorted(json.loads(result.stdout)["stream"]["classes"]) == sorted(
        FashionMNIST.classes)


def test_avalanche_classic_never_downloads_unasked(tmp_path, runs_dir):
    _bad(invoke("run", "--stream", "avalanche:SplitCIFAR10", "--stream-opt",
                f"root={tmp_path}", "--out", runs_dir, *FAST),
         f"CIFAR10 not found under {tmp_path} (--stream-opt download=true downloads it)")
    _bad(invoke("run", "--stream", "avalanche:Nope", "--stream-opt", f"root={tmp_path}",
                "--out", runs_dir, *FAST), "invalid value 'Nope' for benchmark")
    assert not list(tmp_path.iterdir())  # nothing fetched or written


def test_stream_data_is_validated_before_the_run(tmp_path, runs_dir, pretrained_backbone):
    script = tmp_path / "streams_bad.py"
    script.write_text(
        "import torch\n"
        "from avalanche.benchmarks.scenarios.dataset_scenario import "
        "benchmark_from_datasets\n"
        "from clplatform.streams import classification_dataset\n"
        "def ds(n, c=1, label=0):\n"
        "    return classification_dataset(torch.rand(n, c, 8, 8), torch.full((n,), label))\n"
        "def empty():\n"
        "    return benchmark_from_datasets(train=[ds(4), ds(0)], test=[ds(2), ds(2)])\n"
        "def five_channels():\n"
        "    return benchmark_from_datasets(train=[ds(4, 5)], test=[ds(2, 5)])\n"
        "def negative():\n"
        "    return benchmark_from_datasets(train=[ds(4, label=-3)], test=[ds(2)])\n")
    _bad(invoke("run", "--stream", f"{script}:empty", "--out", runs_dir, *FAST),
         "training experience 1 is empty")
    _bad(invoke("run", "--stream", f"{script}:negative", "--out", runs_dir, *FAST),
         "labels must be integers >= 0")
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
    # a 3-channel backbone cannot take 5-channel images (a 1-channel one averages them)
    import importlib.util

    from clplatform.streams.common import validate_benchmark
    from clplatform.streams.custom import complete_benchmark
    spec = importlib.util.spec_from_file_location("streams_bad", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bm = complete_benchmark(module.five_channels(), "five")
    validate_benchmark(bm, in_chans=1)
    with pytest.raises(UserError, match="has 5-channel images; the backbone takes 3"):
        validate_benchmark(bm, in_chans=3)
    bm.info.classes = []  # labels beyond the classes the stream declares
    with pytest.raises(UserError, match="has label 0, outside 0..-1"):
        validate_benchmark(bm, in_chans=1)
