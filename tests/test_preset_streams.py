"""Every recipe preset's stream options are accepted by the real stream: each preset's
stream is built from a tiny fake of its dataset's layout, with the preset's options
(spec paper-benchmarks §5 against §4)."""
import pytest

from clplatform.app.presets import PRESETS
from clplatform.streams import StreamSource

from fakes.domain_benchmarks import make_office31, make_office_home, make_visda
from fakes.paper_benchmarks import make_fake

RECIPES = sorted(n for n, p in PRESETS.items() if p.is_recipe)
# one of each kind (the lftl pairs differ only in source/target)
CHECKED = [n for n in RECIPES if n.startswith("sema-")] + [
    "lftl-office31-ad", "lftl-office31-wa", "lftl-office-home-ar", "lftl-office-home-rc",
    "lftl-visda"]


def test_the_checked_presets_exist():
    assert set(CHECKED) <= set(RECIPES)
    assert len([n for n in RECIPES if n.startswith("lftl-office-home-")]) == 12
    assert len([n for n in RECIPES if n.startswith("lftl-office31-")]) == 6


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("presets")
    made = {}

    def get(stream):
        if stream not in made:
            folder = base / stream
            if stream == "office31":
                made[stream] = make_office31(folder)
            elif stream == "office-home":
                made[stream] = make_office_home(folder)
            elif stream == "visda":
                made[stream] = make_visda(folder)
            else:
                made[stream] = make_fake(stream, folder)
        return made[stream]
    return get


@pytest.mark.parametrize("name", CHECKED)
def test_preset_stream_builds_from_its_layout(roots, name):
    tables = PRESETS[name].tables
    options = {k: v for k, v in tables["stream"].items() if k != "name"}
    stream = tables["stream"]["name"]
    root = roots(stream)
    bm = StreamSource(stream, {**options, "root": str(root), "image_size": "16"}).build(
        tables["train"]["seed"])
    if name.startswith("sema-"):
        tasks = int(options["tasks"])
        assert len(bm.train_stream) == tasks
        assert bm.info.scenario == "class-incremental"
        per = bm.info.num_classes // tasks
        assert [len(e.classes_in_this_experience) for e in bm.train_stream] == [per] * tasks
    else:
        # experience 0 the source, then the preset's one target
        assert bm.info.scenario == "domain-incremental"
        assert len(bm.train_stream) == 2
        assert bm.info.domains == [options["source"], options["targets"]]
