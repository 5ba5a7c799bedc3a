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
    assert len(source_test) == c  # 10 % of 3 per class rounds to the minimum of one
    for train, test in zip(lists.train[1:], lists.test[1:]):
        assert names(train) == names(test) and len(train) == c * per_class
    for items in lists.train:
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


def test_visda_train_to_validation(tmp_path):
    make_visda(tmp_path)
    lists = office_lists(dom.VISDA, tmp_path)
    assert lists.domains == ["train", "validation"]
    assert lists.classes == list(VISDA_CLASSES)  # aeroplane 0 ... truck 11
    check_transductive(lists, 3)
    assert {Path(p).suffix for p, _ in lists.train[0]} == {".png"}
    with pytest.raises(UserError, match="test domain of visda is unlabelled"):
        office_lists(dom.VISDA, tmp_path, targets="test")
    listing = tmp_path / "validation" / "image_list.txt"
    lines = listing.read_text().splitlines()
    lines[-1] = lines[-1][:-2] + "10"  # a truck said to be a train
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"validation/image_list.txt, line 36: label 10"):
        office_lists(dom.VISDA, tmp_path)


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
