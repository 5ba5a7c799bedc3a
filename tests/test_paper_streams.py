"""The papers' class-incremental streams, each read from a tiny fake of its exact on-disk
layout (spec paper-benchmarks §6 acceptance 1-5), and the lazy file-backed pieces."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from clplatform.app.cli import cli
from clplatform.errors import UserError
from clplatform.streams import StreamSource
from clplatform.streams import files as F
from clplatform.streams.common import b0_split

from fakes.paper_benchmarks import VTAB_DOMAINS, make_fake, vtab_classes

# spec §1: np.random.RandomState(1993).permutation(C), first entries
ORDER_1993 = {100: [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89],
              200: [168, 136, 51, 9, 183, 101, 171, 99, 42, 159, 191, 70],
              300: [169, 221, 146, 296, 92, 229, 49, 70, 126, 77, 243, 57],
              50: [43, 41, 23, 14, 13, 40, 42, 22, 16, 45, 17, 10]}

# stream, fake variant, options, (experiences, classes per experience, classes, shuffled)
CASES = [
    ("cifar100", None, {}, (10, 10, 100, True)),
    ("imagenet-r", None, {}, (10, 20, 200, True)),
    ("imagenet-r", "coda", {"split": "coda"}, (10, 20, 200, True)),
    ("imagenet-r", "raw", {"split": "random"}, (10, 20, 200, True)),
    ("imagenet-a", None, {}, (20, 10, 200, False)),
    ("vtab", None, {}, (5, 10, 50, False)),
    ("cub", None, {}, (20, 10, 200, True)),
    ("cub", "official", {"split": "official"}, (20, 10, 200, True)),
    ("omnibenchmark", None, {}, (10, 30, 300, True)),
    ("objectnet", None, {}, (20, 10, 200, True)),
]
IDS = [f"{s}-{v or 'ptm'}" for s, v, _, _ in CASES]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="clplat")


def _bad(result, *messages: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clplat: error: "), result.stderr
    for message in messages:
        assert message in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    """name-variant -> root of its fake (written once per module)."""
    base = tmp_path_factory.mktemp("paper")
    made = {}

    def get(name, variant=None, **kwargs):
        key = f"{name}-{variant or 'ptm'}-{sorted(kwargs.items())}"
        if key not in made:
            made[key] = make_fake(name, base / key.replace(" ", ""), variant=variant, **kwargs)
        return made[key]
    return get


def build(name, root, **options):
    options = {"root": str(root), "image_size": "32", **options}
    return StreamSource(name, options).build(0)


def sorted_names(bm) -> list[str]:
    """The class names in label-0..C-1 order of the *original* (sorted) index."""
    return sorted(bm.info.classes)


# ------------------------------------------------------------------ acceptance 1-3
@pytest.mark.parametrize("name, variant, options, expected", CASES, ids=IDS)
def test_stream_shape_order_and_labels(fakes, name, variant, options, expected):
    experiences, per_experience, classes, shuffled = expected
    bm = build(name, fakes(name, variant), **options)
    assert bm.info.num_classes == classes and bm.info.scenario == "class-incremental"
    assert len(bm.train_stream) == len(bm.test_stream) == experiences
    assert [len(e.classes_in_this_experience) for e in bm.train_stream] == \
        [per_experience] * experiences
    # 2 training and 1 test image per class, every one of them in exactly one experience
    assert sum(len(e.dataset) for e in bm.train_stream) == 2 * classes
    assert sum(len(e.dataset) for e in bm.test_stream) == classes
    # experience 0 holds labels 0..k-1, in train and test
    for stream in (bm.train_stream, bm.test_stream):
        assert sorted(set(stream[0].dataset.targets)) == list(range(per_experience))
    # label l is original (sorted-folder) class order[l]
    original = [sorted_names(bm).index(c) for c in bm.info.classes]
    first = ORDER_1993[classes][:10] if shuffled else list(range(10))
    assert original[:10] == first
    assert sorted(original) == list(range(classes))


def test_order_seed_options(fakes):
    root = fakes("cifar100")
    names = [f"c{i:03d}" for i in ORDER_1993[100][:10]]
    assert build("cifar100", root).info.classes[:10] == names  # default 1993
    assert build("cifar100", root, order_seed="none").info.classes[:3] == ["c000", "c001",
                                                                           "c002"]
    run = StreamSource("cifar100", {"root": str(root), "order_seed": "run"}).build(1993)
    assert run.info.classes[:10] == names
    seven = np.random.RandomState(7).permutation(100)[:5]
    assert build("cifar100", root, order_seed="7").info.classes[:5] == \
        [f"c{i:03d}" for i in seven]
    # B0 splits: tasks, the experiences alias, first=
    bm = build("cifar100", root, experiences="20", order_seed="none")
    assert [len(e.classes_in_this_experience) for e in bm.train_stream] == [5] * 20
    bm = build("cifar100", root, tasks="4", first="40", order_seed="none")
    assert [sorted(e.classes_in_this_experience) for e in bm.train_stream][1] == \
        list(range(40, 60))
    with pytest.raises(UserError, match="tasks=7 does not divide the 100 classes"):
        build("cifar100", root, tasks="7")
    with pytest.raises(UserError, match="order_seed"):
        build("cifar100", root, order_seed="x")


def test_cifar100_pixels_are_the_pickled_ones(fakes):
    root = fakes("cifar100")
    with open(root / "cifar-100-python" / "test", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    bm = build("cifar100", root, transform="none", order_seed="none")
    x, label = bm.test_stream[0].dataset[0][:2]
    # with order none, label = fine label; the image is the row of that label, R G B planes
    rows = [i for i, y in enumerate(raw[b"fine_labels"]) if y == label]
    expected = [torch.from_numpy(raw[b"data"][i].reshape(3, 32, 32)).float() / 255
                for i in rows]
    assert any(torch.allclose(x, e) for e in expected)
    assert bm.info.image_shape == (3, 32, 32)


def test_vtab_experience_k_is_domain_k_and_lexicographic_order(fakes):
    bm = build("vtab", fakes("vtab"))
    for k, exp in enumerate(bm.train_stream):
        names = {bm.info.classes[c] for c in exp.classes_in_this_experience}
        assert {n.split("_")[1] for n in names} == {VTAB_DOMAINS[k]}
    numeric = build("vtab", fakes("vtab", "numeric"))
    # sorted() of "0".."49": "10" < "2"
    assert numeric.info.classes[:12] == sorted(vtab_classes("numeric"))[:12]
    assert numeric.info.classes[:4] == ["0", "1", "10", "11"]
    assert numeric.info.classes.index("2") == 12


def test_vtab_shuffled_warns(fakes, capsys):
    bm = build("vtab", fakes("vtab"), order_seed="1993")
    assert [bm.info.classes.index(c) for c in sorted(bm.info.classes)][:1] != [0]
    assert "tasks no longer match domains" in capsys.readouterr().err


def test_missing_test_class_and_disagreeing_lists(fakes, tmp_path, runs_dir,
                                                  pretrained_backbone):
    root = make_fake("objectnet", tmp_path / "o")
    stray = root / "objectnet" / "test" / "object_999"
    stray.mkdir()
    (root / "objectnet" / "test" / "object_000" / "img_0.png").rename(stray / "img_0.png")
    _bad(invoke("run", "--dry-run", "--stream", "objectnet", "--stream-opt", f"root={root}",
                "--out", runs_dir),
         "test class 'object_999' is not among the 200 training classes")
    assert not runs_dir.exists()
    (stray / "img_0.png").unlink()
    stray.rmdir()
    empty = root / "objectnet" / "train" / "object_005"
    for image in empty.iterdir():
        image.unlink()
    with pytest.raises(UserError, match=f"class folder {empty} holds no readable image"):
        build("objectnet", root)
    # a CUB class id that disagrees with the image's folder
    cub = make_fake("cub", tmp_path / "c", variant="official")
    labels = cub / "CUB_200_2011" / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[0] = "1 7"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="gives 001.Bird_001/Bird_001_0000.png class 7, but "
                                        "its folder is 001.Bird_001"):
        build("cub", cub, split="official")
    # CODA split: one wnid with two targets
    coda = make_fake("imagenet-r", tmp_path / "r", variant="coda")
    import yaml
    path = coda / "splits" / "imagenet-r_train.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["targets"][0] = spec["targets"][0] + 1
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match="gives class n01440037 the targets"):
        build("imagenet-r", coda, split="coda")


# ------------------------------------------------------------------ acceptance 4
def test_items_train_and_eval_transforms(fakes):
    from torchvision import transforms as T
    root = fakes("imagenet-r")
    bm = build("imagenet-r", root, image_size="224", order_seed="none")
    x, y = bm.train_stream[0].dataset[0][:2]
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, 224, 224)
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.max()) > 0.5
    # the L (class 0, image 0) and RGBA (class 0, image 1) PNGs come out with 3 channels
    train0 = bm.train_stream[0].dataset
    for i in range(len(train0)):
        assert train0[i][0].shape[0] == 3
    pngs = sorted((root / "imagenet-r" / "train" / bm.info.classes[0]).glob("*.png"))
    assert len(pngs) == 2
    # eval item == Resize(256, bicubic) + CenterCrop(224) + ToTensor of the file
    reference = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
                           T.CenterCrop(224), T.ToTensor()])
    test0 = bm.test_stream[1].dataset
    for i in range(3):
        x, label = test0[i][:2]
        path = root / "imagenet-r" / "test" / bm.info.classes[label] / "art_0.jpg"
        assert torch.equal(x, reference(F.read_rgb(path)))
    # the training set of an experience read for evaluation uses the eval transform too
    x = bm.train_stream[0].dataset.eval()[0][0]
    assert torch.equal(x, bm.train_stream[0].dataset.eval()[0][0])


def test_transform_kinds():
    from PIL import Image
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3),
                                                              dtype=np.uint8))
    for kind in F.TRANSFORMS:
        groups = F.image_transforms(kind, 32)
        for group in ("train", "eval"):
            assert tuple(groups[group](image).shape) == (3, 32, 32)
    pilot = F.image_transforms("pilot", 224)["train"].transforms[0]
    assert pilot.scale == (0.05, 1.0) and pilot.size == (224, 224)
    assert F.image_transforms("coda", 224)["train"].transforms[0].scale == (0.08, 1.0)


# ------------------------------------------------------------------ acceptance 5
@pytest.mark.parametrize("name, archive", [
    ("cifar100", "cifar-100-python.tar.gz"), ("imagenet-r", "imagenet-r.zip"),
    ("imagenet-a", "ina.zip"), ("vtab", "vtab.zip"), ("cub", "cub.zip"),
    ("omnibenchmark", "omnibenchmark.zip"), ("objectnet", "objnet.tgz")])
def test_wrong_root_names_layout_and_archive(tmp_path, runs_dir, name, archive,
                                             pretrained_backbone):
    (tmp_path / "elsewhere" / "x").mkdir(parents=True)
    line = _bad(invoke("run", "--dry-run", "--stream", name, "--stream-opt",
                       f"root={tmp_path / 'elsewhere'}", "--out", runs_dir),
                f"stream {name}: no dataset found in", archive, "expected ROOT/")
    assert "download" not in line or name == "cifar100"
    _bad(invoke("run", "--dry-run", "--stream", name, "--out", runs_dir),
         f"stream {name!r} needs --stream-opt root=DIR", archive)
    assert not runs_dir.exists()


def test_bad_files_named_and_skipped(tmp_path, capsys):
    root = make_fake("omnibenchmark", tmp_path / "o")
    bad = sorted((root / "omnibenchmark" / "train").iterdir())[3] / "img_1.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match=f"cannot read image {bad}: .*skip_bad=true"):
        build("omnibenchmark", root)
    bm = build("omnibenchmark", root, skip_bad="true")
    assert sum(len(e.dataset) for e in bm.train_stream) == 599
    assert f"skipped unreadable image {bad}" in capsys.readouterr().err
    # a malformed CIFAR pickle names the file
    cifar = make_fake("cifar100", tmp_path / "c")
    (cifar / "cifar-100-python" / "test").write_bytes(b"\x80\x02junk")
    with pytest.raises(UserError, match="cifar-100-python/test: UnpicklingError"):
        build("cifar100", cifar)


def test_scan_is_cached_and_notices_changes(tmp_path, monkeypatch):
    root = make_fake("vtab", tmp_path / "v")
    folder = root / "vtab-cil" / "vtab" / "train"
    first = F.scan_class_folders(folder)
    opened = []
    original = F._image_error
    monkeypatch.setattr(F, "_image_error", lambda p: opened.append(p) or original(p))
    assert F.scan_class_folders(folder) == first and opened == []  # from the cache
    extra = folder / vtab_classes()[0] / "new.jpg"
    extra.write_bytes((folder / vtab_classes()[0] / "img_0.png").read_bytes())
    paths, names, errors = F.scan_class_folders(folder)
    assert str(extra) in paths and len(paths) == len(first[0]) + 1 and len(opened) == 101


def test_b0_split():
    assert b0_split(200, 10) == [20] * 10
    assert b0_split(100, 6, first=50) == [50] + [10] * 5
    with pytest.raises(UserError, match="do not divide into tasks-1=3"):
        b0_split(100, 4, first=50)


# ------------------------------------------------------------------ end to end
def test_cli_simplecil_on_cifar100(fakes, runs_dir, pretrained_backbone):
    root = fakes("cifar100")
    result = invoke("run", "--stream", "cifar100", "--stream-opt", f"root={root}",
                    "--stream-opt", "image_size=32", "--stream-opt", "tasks=2",
                    "--strategy", "simplecil", "--out", runs_dir, "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    run = Path(json.loads(result.stdout)["run_dir"])
    stream = json.loads((run / "config.json").read_text())["stream"]
    assert stream["order_seed"] == "1993" and stream["tasks"] == 2
    assert stream["classes"][:10] == [f"c{i:03d}" for i in ORDER_1993[100][:10]]
    rows = (run / "accuracy.csv").read_text().splitlines()
    # before training + after each of the 2 experiences, on both test experiences of 50
    assert len(rows) == 1 + 3 * 2 and all(r.split(",")[6] == "50" for r in rows[1:])


def test_domain_incremental_over_files(fakes):
    """The piece the domain streams use: lazy files, one experience per domain, test
    experiences in the eval transform."""
    from clplatform.streams import StreamInfo, domain_incremental
    base = fakes("vtab") / "vtab-cil" / "vtab"
    paths, names, errors = F.scan_class_folders(base / "train")
    test_paths, test_names, _ = F.scan_class_folders(base / "test")
    classes, labels, test_labels = F.label_by_name(names, test_names)
    transforms = F.image_transforms("pilot", 32)
    halves = [slice(0, 50), slice(50, 100)]
    bm = domain_incremental([(F.ImageFiles(paths[h]), labels[h]) for h in halves],
                            [(F.ImageFiles(test_paths), test_labels)] * 2,
                            StreamInfo("two", "domain-incremental", classes, (3, 32, 32),
                                       ["a", "b"]), transforms)
    assert [len(e.dataset) for e in bm.train_stream] == [50, 50]
    x, label = bm.test_stream[1].dataset[0][:2]
    assert torch.equal(x, transforms["eval"](F.read_rgb(test_paths[0]))) and label == 0


@pytest.mark.parametrize("strategy", [pytest.param("naive", marks=pytest.mark.slow),
                                      "simplecil"])
def test_data_workers_decode_in_parallel_with_the_same_records(fakes, runs_dir, strategy):
    """--data-workers: the training DataLoader (naive) and the reading of experiences into
    tensors (simplecil's prototypes, the evaluator's test sets) use worker processes; with
    a deterministic transform the records equal the main process's."""
    root = fakes("imagenet-r")
    runs = []
    for workers in ("0", "2"):
        result = invoke("run", "--stream", "imagenet-r", "--stream-opt", f"root={root}",
                        "--stream-opt", "image_size=16", "--stream-opt", "tasks=2",
                        "--stream-opt", "transform=none", "--strategy", strategy,
                        "--epochs", "1", "--data-workers", workers, "--out", runs_dir,
                        "--quiet", "--json")
        assert result.exit_code == 0, result.stderr
        runs.append(Path(json.loads(result.stdout)["run_dir"]))
    configs = [json.loads((r / "config.json").read_text())["train"] for r in runs]
    assert [c["data_workers"] for c in configs] == [0, 2]
    accuracy = [(r / "accuracy.csv").read_text() for r in runs]
    assert accuracy[0] == accuracy[1]
    assert len(accuracy[0].splitlines()) == 1 + 3 * 2
