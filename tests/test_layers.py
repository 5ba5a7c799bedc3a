"""Layering of clplatform's modules, read from their source with ``ast`` (every import,
those inside functions included; relative imports resolved):

- the kernel (``clplatform/*.py``) imports neither the application layer (``clplatform.app``,
  and ``clplatform/__main__.py``, the program) nor the components (``clplatform.streams``,
  ``clplatform.strategies``, ``clplatform.reports``, ``clplatform.models``: the built-in
  backbones, ``vit-glyphs`` being pre-trained on a stream); the registry loads components
  by module name, not by import;
- components do not import the application layer;
- no import circle between clplatform's modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clplatform"
COMPONENTS = ("clplatform.streams", "clplatform.strategies", "clplatform.reports",
              "clplatform.models")
APP = ("clplatform.app", "clplatform.__main__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> list[tuple[str, int]]:
    """(imported clplatform module, line) for every import statement of the file, at any
    depth; ``from X import Y`` counts as importing ``X.Y`` when that is a module, else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else target, node.lineno))
    return [(m, line) for m, line in found if m == "clplatform" or m.startswith("clplatform.")]


def resolve(target: str, known: set[str]) -> str | None:
    """The module an import names: itself, or the nearest enclosing known module."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def graph() -> dict[str, list[tuple[str, int]]]:
    modules = all_modules()
    known = set(modules)
    edges: dict[str, list[tuple[str, int]]] = {}
    for name, path in modules.items():
        targets = []
        for target, line in imports_of(path, name, known):
            module = resolve(target, known)
            if module and module != name:
                targets.append((module, line))
        edges[name] = targets
    return edges


def layer(module: str) -> str:
    if any(within(module, app) for app in APP):
        return "app"
    if any(module == c or module.startswith(c + ".") for c in COMPONENTS):
        return "component"
    return "kernel"


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_parser_sees_imports_inside_functions_and_relative_ones(tmp_path):
    source = tmp_path / "clplatform" / "sub"
    source.mkdir(parents=True)
    (source / "mod.py").write_text("def f():\n    from ..app import runner\n"
                                   "    from . import other\n    import clplatform.streams\n")
    known = {"clplatform.app.runner", "clplatform.sub.other", "clplatform.streams"}
    found = imports_of(source / "mod.py", "clplatform.sub.mod", known)
    assert [m for m, _ in found] == ["clplatform.app.runner", "clplatform.sub.other",
                                     "clplatform.streams"]


def test_every_module_is_seen():
    edges = graph()
    assert {"clplatform.registry", "clplatform.app.runner", "clplatform.streams.glyphs",
            "clplatform.strategies.sema.strategy"} <= set(edges)
    # the runner's imports, function-level ones included
    assert {"clplatform.evaluator", "clplatform.streams.common"} <= {m for m, _ in
                                                            edges["clplatform.app.runner"]}


def offending(rule) -> list[str]:
    edges = graph()
    paths = all_modules()
    return [f"{paths[source].relative_to(ROOT)}:{line} imports {target}"
            for source, targets in sorted(edges.items()) for target, line in targets
            if rule(source, target)]


def test_the_kernel_imports_neither_the_application_nor_the_components():
    bad = offending(lambda s, t: layer(s) == "kernel" and s != "clplatform"
                    and layer(t) != "kernel")
    assert not bad, "\n".join(bad)


def test_the_package_root_exports_the_application_lazily_only():
    # clplatform/__init__.py names the app's run()/resume() in lazy_exports (strings),
    # never in an import statement
    bad = offending(lambda s, t: s == "clplatform" and layer(t) != "kernel")
    assert not bad, "\n".join(bad)


def test_components_do_not_import_the_application():
    bad = offending(lambda s, t: layer(s) == "component" and layer(t) == "app")
    assert not bad, "\n".join(bad)


def test_components_do_not_import_each_other_upward():
    # streams are the lowest component: they import neither strategies nor reports
    bad = offending(lambda s, t: within(s, "clplatform.streams")
                    and layer(t) == "component" and not within(t, "clplatform.streams"))
    assert not bad, "\n".join(bad)


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Every strongly connected set of modules larger than one (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _ in edges.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": [("b", 1)], "b": [("c", 1)], "c": [("a", 1)], "d": [("a", 1)]}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": [("b", 1)], "b": []}) == []


# A package's __init__ importing its own submodules (registration, re-exports) and those
# submodules importing a sibling through the package is Python's ordinary package pattern;
# the rule is about modules: an edge from a package to its own submodule is not a circle.
def module_edges() -> dict[str, list[tuple[str, int]]]:
    return {source: [(t, line) for t, line in targets if not within(t, source)]
            for source, targets in graph().items()}


def test_no_import_circles():
    edges = module_edges()
    paths = all_modules()
    found = cycles(edges)
    described = []
    for members in found:
        lines = [f"{paths[s].relative_to(ROOT)}:{line} imports {t}"
                 for s in members for t, line in edges[s] if t in members]
        described.append("; ".join(lines))
    assert not found, "import circles: " + " | ".join(described)


@pytest.mark.parametrize("module", ["clplatform.checkpoint", "clplatform.backbones"])
def test_named_kernel_modules_stay_in_the_kernel(module):
    targets = {t for t, _ in graph()[module]}
    assert all(layer(t) == "kernel" for t in targets), sorted(targets)
