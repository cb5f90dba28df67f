"""The import rule of docs/ARCHITECTURE.md, enforced: every import of every module of the
package (at module level and inside functions) goes to the same layer or a lower one, no
set of modules imports itself round in a cycle, and no module takes a private name of
another. The layer table below is the one docs/ARCHITECTURE.md shows; a new package must be
placed in it (the test fails on a module it cannot place)."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "apppaccap"

# Lowest first. A module may import its own layer and the layers before it, never one after.
# "apppaccap" is the package's own __init__ (its version); every other entry covers a module
# or a package with everything below it.
LAYERS = [
    ("base", ["apppaccap", "apppaccap.wire", "apppaccap.errors", "apppaccap.filetime",
              "apppaccap.lifeline", "apppaccap.safefs"]),
    ("formats", ["apppaccap.pcap", "apppaccap.dissect"]),
    ("store", ["apppaccap.store", "apppaccap.settings"]),
    ("engines", ["apppaccap.attribution", "apppaccap.search", "apppaccap.extract"]),
    ("services", ["apppaccap.capture", "apppaccap.ingest", "apppaccap.triggers", "apppaccap.jobs",
                  "apppaccap.usage", "apppaccap.analytics", "apppaccap.fleet",
                  "apppaccap.auth"]),
    ("composition", ["apppaccap.context", "apppaccap.server"]),
    ("doors", ["apppaccap.api", "apppaccap.web", "apppaccap.cli", "apppaccap.docs",
               "apppaccap.__main__"]),
]
# Packages held to less than their layer allows: the file formats and the dissectors know
# nothing of captures, databases or the API.
ONLY = {
    "apppaccap.pcap": {"apppaccap.errors", "apppaccap.wire", "apppaccap.filetime"},
    "apppaccap.dissect": set(),
}
# The API package is a door: only the other doors use it.
API_USERS = ("apppaccap.api", "apppaccap.web", "apppaccap.cli", "apppaccap.docs")
MAX_LINES = 400


def _covers(entry: str, module: str) -> bool:
    if entry == "apppaccap":
        return module == "apppaccap"
    return module == entry or module.startswith(entry + ".")


def layer_of(module: str, layers=LAYERS) -> int | None:
    """Index of the layer whose entry covers `module` (the longest entry wins)."""
    best, found = -1, None
    for index, (_name, entries) in enumerate(layers):
        for entry in entries:
            if _covers(entry, module) and len(entry) > best:
                best, found = len(entry), index
    return found


def module_name(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool, known: set) -> list[tuple]:
    """(imported module, names, line) for every import statement of the package in
    `source`, wherever it stands: module level, functions, classes, try/if blocks."""
    out = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, (), node.lineno) for a in node.names
                    if a.name.split(".")[0] == "apppaccap"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "apppaccap":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:  # `from package import module`
                    out.append((sub, (), node.lineno))
                else:
                    out.append((target, (alias.name,), node.lineno))
    return out


def package_modules(root: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def import_graph(root: pathlib.Path = PACKAGE) -> dict[str, list[tuple]]:
    modules = package_modules(root)
    known = set(modules)
    return {name: imports_of(path.read_text(encoding="utf-8"), name,
                             path.name == "__init__.py", known)
            for name, path in modules.items()}


def upward_imports(graph: dict, layers=LAYERS) -> list[str]:
    problems = []
    for module, edges in graph.items():
        mine = layer_of(module, layers)
        if mine is None:
            problems.append(f"{module}: in no layer (add it to LAYERS and ARCHITECTURE.md)")
            continue
        for target, _names, line in edges:
            theirs = layer_of(target, layers)
            if theirs is None:
                problems.append(f"{module}:{line} imports {target}, which is in no layer")
            elif theirs > mine:
                problems.append(f"{module}:{line} ({layers[mine][0]}) imports {target} "
                                f"({layers[theirs][0]}): an upward import")
    return problems


def cycles(graph: dict) -> list[list[str]]:
    """Every set of modules that import one another round (Tarjan's strongly connected
    components of more than one module, or a module importing itself)."""
    targets = {m: sorted({t for t, _n, _l in edges if t in graph}) for m, edges in graph.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in targets[v]:
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
            if len(component) > 1 or v in targets[v]:
                found.append(sorted(component))

    for v in sorted(targets):
        if v not in index:
            visit(v)
    return found


def private_imports(graph: dict) -> list[str]:
    return [f"{module}:{line} imports {name} from {target}"
            for module, edges in graph.items() for target, names, line in edges
            for name in names if name.startswith("_") and not name.startswith("__")
            and target != module]


def narrow_imports(graph: dict, only=ONLY) -> list[str]:
    problems = []
    for module, edges in graph.items():
        for package, allowed in only.items():
            if not _covers(package, module):
                continue
            for target, _names, line in edges:
                if not _covers(package, target) and target not in allowed:
                    problems.append(f"{module}:{line} imports {target}; {package} may import "
                                    f"only {sorted(allowed) or 'itself'}")
    return problems


# -- the package ----------------------------------------------------------------------------

GRAPH = import_graph()


def test_every_import_goes_down_or_stays_in_its_layer():
    assert upward_imports(GRAPH) == []


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_no_module_imports_a_private_name_of_another():
    assert private_imports(GRAPH) == []


def test_formats_and_dissectors_import_almost_nothing():
    assert narrow_imports(GRAPH) == []


def test_only_doors_import_the_api():
    users = sorted({m for m, edges in GRAPH.items() for t, _n, _l in edges
                    if _covers("apppaccap.api", t) and not any(_covers(u, m) for u in API_USERS)})
    assert users == []


def test_modules_are_small():
    long = {name: n for name, path in package_modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these by noun: {long}"


def test_the_walk_sees_the_package():
    """The graph is real: it holds every module and the imports the rule is about."""
    assert {"apppaccap.wire", "apppaccap.errors", "apppaccap.web.app",
            "apppaccap.capture.manager"} <= set(GRAPH)
    assert any(t == "apppaccap.errors" for t, _n, _l in GRAPH["apppaccap.capture.manager"])


# -- the rule itself: it fails when it should -----------------------------------------------

def _graph_of(sources: dict[str, str]) -> dict:
    known = set(sources)
    return {name: imports_of(text, name, False, known) for name, text in sources.items()}


def test_an_upward_import_is_caught_even_inside_a_function():
    graph = _graph_of({
        "apppaccap.store.catalog": "def f():\n    from apppaccap.capture.manager import X\n",
        "apppaccap.capture.manager": "X = 1\n",
    })
    problems = upward_imports(graph)
    assert len(problems) == 1 and "apppaccap.store.catalog:2" in problems[0] \
        and "upward" in problems[0]


def test_a_cycle_is_caught():
    graph = _graph_of({
        "apppaccap.search.a": "from apppaccap.search.b import g\n",
        "apppaccap.search.b": "def g():\n    from apppaccap.search import a\n",
        "apppaccap.search.c": "from apppaccap.search.a import f\n",
    })
    assert cycles(graph) == [["apppaccap.search.a", "apppaccap.search.b"]]
    assert upward_imports(graph) == []  # same layer: only the cycle is wrong


def test_a_module_in_no_layer_and_private_names_are_caught():
    graph = _graph_of({
        "apppaccap.elsewhere": "from apppaccap.wire import _hidden\n",
        "apppaccap.pcap.records": "from apppaccap.store import blocks\n",
        "apppaccap.store.blocks": "",
    })
    assert any("apppaccap.elsewhere: in no layer" in p for p in upward_imports(graph))
    assert private_imports(graph) == ["apppaccap.elsewhere:1 imports _hidden from apppaccap.wire"]
    assert narrow_imports(graph) and "apppaccap.pcap may import only" in narrow_imports(graph)[0]


def test_relative_imports_are_resolved():
    edges = imports_of("from .procfs import ProcInfo\nfrom . import owners\n",
                       "apppaccap.attribution.procevents", False,
                       {"apppaccap.attribution.owners"})
    assert [e[0] for e in edges] == ["apppaccap.attribution.procfs", "apppaccap.attribution.owners"]
