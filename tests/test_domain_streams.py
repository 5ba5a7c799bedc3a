"""The domain-adaptation streams (office31, office-home, visda, domainnet) on tiny fakes of
their exact layouts: experiences, domains and classes, transductive targets, source
hold-outs, list-file checks and wrong roots (spec paper-benchmarks.md §3, §4, §6)."""
from __future__ import annotations

from pathlib import Path

import pytest
from fakes.domain_benchmarks import (DOMAINNET_CLASSES, OFFICE31_CLASSES, OFFICE_HOME_CLASSES,
                                     VISDA_CLASSES, domainnet_label_order, make_domainnet,
                                     make_office31, make_office_home, make_visda)

from clplatform.errors import UserError
from clplatform.options import build_options
from clplatform.streams import domains as dom


def office_lists(data, root, **values):
    options = {"office31": dom.Office31Options, "office-home": dom.OfficeHomeOptions,
               "visda": dom.VisdaOptions}
    name = {id(dom.OFFICE31): "office31", id(dom.OFFICE_HOME): "office-home",
            id(dom.VISDA): "visda"}[id(data)]
    opts = build_options(options[name], {"root": str(root), "seed": 0, **values}, name)
    return dom.source_target_lists(data, opts, name)


def names(items):
    return sorted(str(path) for path, _ in items)


def check_transductive(lists, per_class):
    """Source: a hold-out disjoint from its training set, together all its images; targets:
    test = train, the same files; labels 0..C-1, every class in every experience."""
    c = len(lists.classes)
    source_train, source_test = names(lists.train[0]), names(lists.test[0])
    assert not set(source_train) & set(source_test)
    assert len(source_train) + len(source_test) == c * per_class
    n = c * per_class
    assert len(source_test) == n - int(0.9 * n)  # SHOT: int(0.9 n) for training
    for train, test in zip(lists.train[1:], lists.test[1:]):
        assert names(train) == names(test) and len(train) == c * per_class
    for items in [lists.train[0] + lists.test[0], *lists.train[1:]]:
        assert sorted({label for _, label in items}) == list(range(c))


@pytest.mark.parametrize("images_level", [True, False])
def test_office31_layouts(tmp_path, images_level):
    make_office31(tmp_path, images_level=images_level)
    lists = office_lists(dom.OFFICE31, tmp_path)
    assert lists.domains == ["amazon", "dslr", "webcam"]
    assert lists.classes == sorted(OFFICE31_CLASSES) and len(lists.classes) == 31
    check_transductive(lists, 3)
    # labels are the sorted class folders: frame files of back_pack are label 0
    assert {label for path, label in lists.train[1] if Path(path).parent.name == "back_pack"
            } == {0}
    lists = office_lists(dom.OFFICE31, tmp_path / "domain_adaptation_images", source="webcam",
                         targets="amazon")
    assert lists.domains == ["webcam", "amazon"] and len(lists.train) == 2


def test_office31_shot_lists_checked(tmp_path):
    make_office31(tmp_path, lists=True)
    lists = office_lists(dom.OFFICE31, tmp_path)
    check_transductive(lists, 3)
    listing = tmp_path / "domain_adaptation_images" / "dslr_list.txt"
    lines = listing.read_text().splitlines()
    path, label = lines[4].rsplit(" ", 1)  # a bike image (label 1) said to be label 2
    lines[4] = f"{path} {int(label) + 1}"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"dslr_list.txt, line 5: label 2 for .*'bike' is "
                                        r"number 1"):
        office_lists(dom.OFFICE31, tmp_path)
    lines[4] = f"{path.replace('frame_0002', 'frame_0099')} 1"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"dslr_list.txt, line 5: .*frame_0099.* not found"):
        office_lists(dom.OFFICE31, tmp_path)
    listing.write_text("one-field-only\n")
    with pytest.raises(UserError, match=r"dslr_list.txt, line 1: expected '<image path> "
                                        r"<label>'"):
        office_lists(dom.OFFICE31, tmp_path)


@pytest.mark.parametrize("real_world", ["Real World", "RealWorld", "Real_World"])
def test_office_home_domains_and_case_sensitive_classes(tmp_path, real_world):
    make_office_home(tmp_path, real_world=real_world)
    lists = office_lists(dom.OFFICE_HOME, tmp_path, targets=f"{real_world},Clipart")
    assert lists.domains == ["Art", "Real World", "Clipart"]
    assert len(lists.classes) == 65 and lists.classes == sorted(OFFICE_HOME_CLASSES)
    assert lists.classes.index("TV") == lists.classes.index("Table") - 1  # 'V' < 'a'
    check_transductive(lists, 3)
    table = {label for path, label in lists.train[2] if Path(path).parent.name == "Table"}
    assert table == {lists.classes.index("Table")}
    assert office_lists(dom.OFFICE_HOME, tmp_path).domains == [
        "Art", "Clipart", "Product", "Real World"]


def test_holdout_split_of_targets(tmp_path):
    make_office_home(tmp_path, per_class=5)
    lists = office_lists(dom.OFFICE_HOME, tmp_path, targets="Product", split="holdout",
                         test_fraction=0.4)
    train, test = names(lists.train[1]), names(lists.test[1])
    assert len(train) == 65 * 3 and len(test) == 65 * 2 and not set(train) & set(test)
    again = office_lists(dom.OFFICE_HOME, tmp_path, targets="Product", split="holdout",
                         test_fraction=0.4)
    assert names(again.test[1]) == test  # seeded
    other = office_lists(dom.OFFICE_HOME, tmp_path, targets="Product", split="holdout",
                         test_fraction=0.4, seed=1)
    assert names(other.test[1]) != test
    # the source: a random 30 % (not per class), seeded, disjoint from its training images
    source = office_lists(dom.OFFICE_HOME, tmp_path, source_val=0.3)
    assert len(source.test[0]) == 325 - int(0.7 * 325)
    assert not set(names(source.train[0])) & set(names(source.test[0]))
    assert len({label for _, label in source.test[0]}) < 65  # 98 of 325 at random
    assert names(office_lists(dom.OFFICE_HOME, tmp_path, source_val=0.3).test[0]) == names(
        source.test[0])


def test_visda_train_to_validation(tmp_path):
    make_visda(tmp_path)
    lists = office_lists(dom.VISDA, tmp_path)
    assert lists.domains == ["train", "validation"]
    assert lists.classes == list(VISDA_CLASSES)  # aeroplane 0 ... truck 11
    check_transductive(lists, 3)
    assert {Path(p).suffix for p, _ in lists.train[0]} == {".png"}
    with pytest.raises(UserError, match=r"the test domain of VisDA-2017 has no labels: .*"
                                        r"test/image_list.txt or .*image_list.txt not found"):
        office_lists(dom.VISDA, tmp_path, targets="test")
    listing = tmp_path / "validation" / "image_list.txt"
    lines = listing.read_text().splitlines()
    lines[-1] = lines[-1][:-2] + "10"  # a truck said to be a train
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"validation/image_list.txt, line 36: label 10"):
        office_lists(dom.VISDA, tmp_path)


@pytest.mark.parametrize("where", ["root", "test"])
def test_visda_test_domain_with_its_ground_truth(tmp_path, where):
    """test/trunkNN/<md5>.jpg, no class folders: read on request, labelled by the released
    image_list.txt (beside the domains or in test/), a transductive target."""
    make_visda(tmp_path, test_list=where)
    lists = office_lists(dom.VISDA, tmp_path, targets="validation,test")
    assert lists.domains == ["train", "validation", "test"]
    assert lists.classes == list(VISDA_CLASSES)
    check_transductive(lists, 3)
    listing = tmp_path / ("test" if where == "test" else "") / "image_list.txt"
    truth = dict(line.rsplit(" ", 1) for line in listing.read_text().splitlines())
    assert len(truth) == 36 and len(lists.train[2]) == 36
    for path, label in lists.train[2]:
        assert truth[f"{Path(path).parent.name}/{Path(path).name}"] == str(label)
        assert Path(path).parent.parent == tmp_path / "test"
    assert office_lists(dom.VISDA, tmp_path).domains == ["train", "validation"]  # on request
    alone = office_lists(dom.VISDA, tmp_path, source="validation", targets="test")
    assert alone.domains == ["validation", "test"] and alone.classes == list(VISDA_CLASSES)


def test_visda_test_ground_truth_checked(tmp_path):
    make_visda(tmp_path, test_list="root")
    listing = tmp_path / "image_list.txt"
    lines = listing.read_text().splitlines()
    path = lines[2].rsplit(" ", 1)[0]
    lines[2] = f"{path} 12"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"image_list.txt, line 3: label 12 for {path}; "
                                        r"expected 0...11"):
        office_lists(dom.VISDA, tmp_path, targets="test")
    lines[2] = f"trunk07/{path.split('/')[1]} 3"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"image_list.txt, line 3: trunk07/.* not found in "):
        office_lists(dom.VISDA, tmp_path, targets="test")


def test_domainnet_official_lists_and_label_order(tmp_path):
    make_domainnet(tmp_path)
    opts = build_options(dom.DomainNetOptions, {"root": str(tmp_path), "seed": 0,
                                                "domains": "sketch,clipart"}, "domainnet")
    lists = dom.domainnet_lists(opts)
    assert lists.domains == ["sketch", "clipart"] and len(lists.classes) == 345
    assert lists.classes == sorted(DOMAINNET_CLASSES, key=domainnet_label_order)
    assert lists.classes[0] == "aircraft_carrier"
    assert lists.classes.index("cello") + 1 == lists.classes.index("cell_phone")
    assert lists.classes.index("trumpet") + 1 == lists.classes.index("t-shirt")
    for train, test in zip(lists.train, lists.test):
        assert len(train) == 2 * 345 and len(test) == 345
        assert not set(names(train)) & set(names(test))
    # the file name's class number (label + 1) agrees with the label
    for path, label in lists.test[1]:
        assert int(Path(path).name.split("_")[1]) == label + 1
    opts.split = "transductive"
    check_transductive(dom.domainnet_lists(opts), 3)


def test_domainnet_list_problems(tmp_path):
    make_domainnet(tmp_path)
    opts = build_options(dom.DomainNetOptions, {"root": str(tmp_path), "seed": 0,
                                                "domains": "clipart,sketch"}, "domainnet")
    (tmp_path / "sketch_test.txt").unlink()
    with pytest.raises(UserError, match=r"list file .*sketch_test.txt not found"):
        dom.domainnet_lists(opts)
    listing = tmp_path / "clipart_train.txt"
    lines = listing.read_text().splitlines()
    path = lines[0].rsplit(" ", 1)[0]  # sorted() would call this label 0
    lines[0] = f"{path} 0"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"clipart_train.txt, line 1: label 0 for "
                                        r"clipart/The_Eiffel_Tower/"):
        dom.domainnet_lists(opts)
    opts.domains = ("real", "clipart")
    with pytest.raises(UserError, match=r"DomainNet domain folder .*real not found"):
        dom.domainnet_lists(opts)


@pytest.mark.parametrize("data, make", [(dom.OFFICE31, make_office31),
                                        (dom.OFFICE_HOME, make_office_home),
                                        (dom.VISDA, make_visda)])
def test_wrong_root_names_layout_and_archive(tmp_path, data, make):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as err:
        office_lists(data, tmp_path / "empty")
    assert data.archive in str(err.value) and data.layout in str(err.value)
    with pytest.raises(UserError, match="is not a folder"):
        office_lists(data, tmp_path / "missing")


def test_unreadable_image_named_or_skipped(tmp_path, capsys):
    make_office31(tmp_path, lists=True)
    bad = tmp_path / "domain_adaptation_images" / "webcam" / "images" / "pen" / "frame_0003.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=f"cannot read image {bad}: .*skip_bad=true"):
        office_lists(dom.OFFICE31, tmp_path)
    lists = office_lists(dom.OFFICE31, tmp_path, skip_bad="true")
    assert len(lists.train[2]) == 31 * 3 - 1 and str(bad) not in names(lists.train[2])
    assert f"skipped unreadable image {bad}" in capsys.readouterr().err


def test_missing_class_folder_and_unknown_domain(tmp_path):
    make_office31(tmp_path, images_level=False)
    for f in (tmp_path / "domain_adaptation_images" / "dslr" / "mug").iterdir():
        f.unlink()
    (tmp_path / "domain_adaptation_images" / "dslr" / "mug").rmdir()
    with pytest.raises(UserError, match=r"dslr holds 30 class folders; Office-31 has 31"):
        office_lists(dom.OFFICE31, tmp_path)
    with pytest.raises(UserError, match="unknown domain 'clipart'; choose from amazon"):
        office_lists(dom.OFFICE31, tmp_path, targets="clipart")
    with pytest.raises(UserError, match="source domain 'amazon' is also a target"):
        office_lists(dom.OFFICE31, tmp_path, targets="dslr,amazon")


# ------------------------------------------------------------------ benchmarks and CLI
BUILDS = {  # stream: (fake writer, options, domains, classes, images per class and domain)
    "office31": (make_office31, {}, ["amazon", "dslr", "webcam"], 31, 3),
    "office-home": (make_office_home, {"source": "Product", "targets": "Real World"},
                    ["Product", "Real World"], 65, 3),
    "visda": (make_visda, {}, ["train", "validation"], 12, 3),
    "domainnet": (make_domainnet, {"split": "transductive"}, list(("clipart", "sketch")),
                  345, 3),
}


def invoke(*args):
    from click.testing import CliRunner

    from clplatform.app.cli import cli
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="clplat")


def stream_opts(root, **values):
    return [a for k, v in {"root": root, **values}.items()
            for a in ("--stream-opt", f"{k}={v}")]


def one_line_error(result, *parts):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clplat: error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.parametrize("name", list(BUILDS))
def test_stream_builds_one_experience_per_domain(tmp_path, name):
    import torch

    from clplatform import create_stream
    from clplatform.data import dataset_tensors
    make, options, domains, classes, per_class = BUILDS[name]
    make(tmp_path)
    if name == "domainnet":
        options = {**options, "domains": ",".join(domains)}
    bm = create_stream(name, root=str(tmp_path), image_size=16, seed=0, **options)
    info = bm.info
    assert info.name == name and info.scenario == "domain-incremental"
    assert info.domains == domains and info.num_classes == classes
    assert info.image_shape == (3, 16, 16)
    assert len(bm.train_stream) == len(bm.test_stream) == len(domains)
    for experience in bm.train_stream[1:]:  # the source's random hold-out may take a class
        assert len(experience.classes_in_this_experience) == classes
    x, y = dataset_tensors(bm.train_stream[1].dataset)
    assert x.shape == (classes * per_class, 3, 16, 16) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and sorted(set(y.tolist())) == list(
        range(classes))
    # transductive: the target's test set is its training pool, image for image
    tx, ty = dataset_tensors(bm.test_stream[1].dataset)
    assert torch.equal(x, tx) and torch.equal(y, ty)
    assert len(bm.train_stream[0].dataset) + len(bm.test_stream[0].dataset) == (
        classes * per_class)


def test_domainnet_class_scenario(tmp_path):
    from clplatform import create_stream
    make_domainnet(tmp_path, domains=("sketch", "clipart"))
    bm = create_stream("domainnet", root=str(tmp_path), domains="clipart,sketch",
                       scenario="class", tasks=5, order_seed=1993, image_size=8, seed=0)
    assert bm.info.scenario == "class-incremental" and bm.info.domains == ["clipart", "sketch"]
    assert [len(e.classes_in_this_experience) for e in bm.train_stream] == [69] * 5
    assert len(bm.train_stream[0].dataset) == 69 * 2 * 2  # 2 train images, 2 domains
    assert len(bm.test_stream[0].dataset) == 69 * 1 * 2
    import numpy as np
    order = np.random.RandomState(1993).permutation(345)
    official = sorted(DOMAINNET_CLASSES, key=domainnet_label_order)
    assert bm.info.classes[:3] == [official[i] for i in order[:3]]
    with pytest.raises(UserError, match="scenario=class .* split=official only"):
        create_stream("domainnet", root=str(tmp_path), scenario="class",
                      split="transductive")


@pytest.mark.parametrize("name, archive", [
    ("office31", "domain_adaptation_images.tar.gz"),
    ("office-home", "OfficeHomeDataset_10072016.zip"),
    ("visda", "validation.tar"), ("domainnet", "<domain>_{train,test}.txt")])
def test_cli_wrong_root_is_one_line(tmp_path, name, archive):
    one_line_error(invoke("run", "--stream", name, "--strategy", "naive", "--out",
                          tmp_path / "runs"), f"stream {name} needs --stream-opt root=DIR")
    make_office_home(tmp_path / "elsewhere") if name != "office-home" else make_visda(
        tmp_path / "elsewhere")
    result = invoke("run", "--stream", name, *stream_opts(tmp_path / "elsewhere"),
                    "--strategy", "naive", "--out", tmp_path / "runs")
    one_line_error(result, f"stream {name}: no ", archive)
    assert not (tmp_path / "runs").exists()


def test_cli_list_label_disagreement_is_one_line(tmp_path):
    make_visda(tmp_path)
    listing = tmp_path / "train" / "image_list.txt"
    lines = listing.read_text().splitlines()
    lines[3] = lines[3][:-1] + "7"  # a bicycle (1) said to be a person (7)
    listing.write_text("\n".join(lines) + "\n")
    result = invoke("run", "--stream", "visda", *stream_opts(tmp_path), "--strategy", "naive",
                    "--out", tmp_path / "runs")
    one_line_error(result, f"{listing}, line 4: label 7", "'bicycle' is number 1")
    assert not (tmp_path / "runs").exists()


def test_cli_run_on_visda_with_its_test_domain(tmp_path):
    """train -> validation, test: three experiences, the test domain scored on all its
    listed images with the released labels."""
    import json

    import pandas as pd
    make_visda(tmp_path / "data", test_list="root")
    result = invoke("run", "--stream", "visda", *stream_opts(
        tmp_path / "data", targets="validation,test", image_size=8), "--strategy", "naive",
        "--epochs", "1", "--quiet", "--json", "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["stream"]["domains"] == ["train", "validation", "test"]
    accuracy = pd.read_csv(run_dir / "accuracy.csv")
    last = accuracy[accuracy["train_exp"] == accuracy["train_exp"].max()]
    assert list(last["n_samples"]) == [4, 36, 36]  # source hold-out: 36 - int(0.9 * 36)
    assert last["accuracy"].between(0, 1).all()


def test_cli_visda_test_without_its_labels_is_one_line(tmp_path):
    make_visda(tmp_path)
    for strategy in ("naive", "lftl"):
        result = invoke("run", "--stream", "visda", *stream_opts(
            tmp_path, targets="validation,test"), "--strategy", strategy,
            "--out", tmp_path / "runs")
        one_line_error(result, "the test domain of VisDA-2017 has no labels",
                       str(tmp_path / "test" / "image_list.txt"), "taskcv-2017-public")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_cli_lftl_run_on_office_home(tmp_path):
    """The SFADA path end to end: source Art (experience 0), target Clipart, LFTL's query
    rounds through the oracle, records per domain."""
    import json
    make_office_home(tmp_path / "data")
    result = invoke("run", "--stream", "office-home",
                    *stream_opts(tmp_path / "data", targets="Clipart", image_size=32),
                    "--strategy", "lftl", "--set", "rounds=2", "--set", "source_epochs=2",
                    "--quiet", "--json", "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["stream"]["domains"] == ["Art", "Clipart"]
    assert config["stream"]["split"] == "transductive"
    import pandas as pd
    rounds = pd.read_csv(run_dir / "rounds.csv")
    assert rounds["labels_used"].max() == 2  # 1 % of 195 target images, 1 per round
    accuracy = pd.read_csv(run_dir / "accuracy.csv")
    assert len(accuracy) == 6  # before training and after 2 experiences x 2 domains
    samples = accuracy.groupby("eval_exp")["n_samples"].unique().to_dict()
    assert {k: list(v) for k, v in samples.items()} == {0: [20], 1: [195]}  # hold-out; all


# ------------------------------------------------------------------ transform=shot
def _shot_reference(path, size):
    """SHOT's ``image_test`` without Normalize, written with PIL: the image squashed to
    r x r (r = 256 size / 224, bilinear, aspect ratio not kept), the centre size x size."""
    import numpy as np
    import torch
    from PIL import Image
    r = int(256 / 224 * size)
    with Image.open(path) as img:
        resized = np.asarray(img.convert("RGB").resize((r, r), Image.BILINEAR))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1).float() / 255, r


def test_shot_transform_squashes_then_crops(tmp_path):
    """resize to (r, r) whatever the aspect ratio, then centre crop (eval) or a random crop,
    maybe flipped (train); [0, 1] pixels, no normalisation."""
    import numpy as np
    import torch
    from PIL import Image

    from clplatform.streams.files import image_transforms
    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 45, 3), dtype=np.uint8)
                    ).save(path)
    groups = image_transforms("shot", 16)
    full, r = _shot_reference(path, 16)
    assert r == 18 and full.shape == (3, 18, 18)
    with Image.open(path) as img:
        image = img.convert("RGB")
    assert torch.allclose(groups["eval"](image), full[:, 1:17, 1:17], atol=1e-6)
    crops = {(i, j, flip) for i in range(3) for j in range(3) for flip in (False, True)}
    seen = set()
    for _ in range(60):
        out = groups["train"](image)
        match = [(i, j, f) for i, j, f in crops if torch.allclose(
            out, (full.flip(2) if f else full)[:, i:i + 16, j:j + 16], atol=1e-6)]
        assert match, "a train item is not a crop of the squashed image"
        seen.add(match[0])
    assert len(seen) > 4  # random positions and flips


def test_domain_stream_with_shot_transform(tmp_path):
    import torch

    from clplatform import create_stream
    make_office31(tmp_path)
    bm = create_stream("office31", root=str(tmp_path), targets="dslr", transform="shot",
                       image_size=16, seed=0)
    path = office_lists(dom.OFFICE31, tmp_path, targets="dslr").test[1][0][0]
    full, _ = _shot_reference(path, 16)  # the target's first test image, centre-cropped
    assert torch.allclose(bm.test_stream[1].dataset[0][0], full[:, 1:17, 1:17], atol=1e-6)
    x = bm.train_stream[1].dataset[0][0]
    assert x.shape == (3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
