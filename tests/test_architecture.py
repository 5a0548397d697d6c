"""The package's layering, checked from its source (in the spirit of Optuna's import tests).

* Packages form layers; a module never imports a module of a higher layer, nor a package of its
  own layer other than its own (reports, track and benchmarking stand side by side).
* Inside ``speechtune.tuning`` the subpackages form layers too.
* No import circles between modules (function-level imports count: they are dependencies).
* A private module (``_name``) is imported only from inside the package that holds it.
* No module is longer than :data:`MAX_LINES`.

Imports under ``if TYPE_CHECKING:`` are type annotations, not dependencies: they are skipped.

``python -m tests.test_architecture [PACKAGE_DIR]`` prints the figures these tests check (for any
checkout of the package, e.g. an older one to compare with).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.paths import REPO

PACKAGE = (
    Path(sys.argv[1]).resolve()
    if __name__ == "__main__" and len(sys.argv) > 1
    else REPO / "speechtune"
)

#: Lowest first. Root-level private modules (``speechtune._lazy``...) are shared utilities.
LAYERS: list[set[str]] = [
    {"_lazy", "_urls", "_jsonable", "_report_file", "_version", "config", "devices"},
    {"data"},
    {"features"},
    {"models"},
    {"metrics"},
    {"inference"},
    {"training"},
    # nas: architecture search over encoder blocks (trains supernets; beside the tuner, not on it)
    {"tuning", "nas"},
    # tts: the staged TTS recipe (its stages are tuning studies, so it sits above tuning)
    {"reports", "track", "benchmarking", "tts"},
    {"workflow", "api"},
    # integrations: adapters for other frameworks, imported by users' scripts, never by speechtune
    {"cli", "integrations"},
]
TUNING_LAYERS: list[str] = ["space", "search", "spec", "objectives", "study", "backends"]
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The speechtune modules an import statement loads (the deepest known module per name)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = (
                module.split(".")
                if MODULES[module].name == "__init__.py"
                else module.split(".")[:-1]
            )
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        targets = [f"{base}.{alias.name}" for alias in node.names]
    found = []
    for target in targets:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target.startswith("speechtune"):
            found.append(target)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            for target in _resolve(module, node):
                if target != module:
                    graph[module].add(target)
    return graph


GRAPH = _graph()


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the root package: the lazy facade over everything
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    raise AssertionError(f"{module}: package {parts[1]!r} is in no layer; add it to LAYERS")


def test_every_package_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_lower_layers_never_import_higher_ones() -> None:
    bad = []
    for module, targets in GRAPH.items():
        here = _layer(module)
        if here is None:
            continue
        for target in targets:
            there = _layer(target)
            if there is None or there > here:
                bad.append(f"{module} -> {target}")
            elif there == here and target.split(".")[1] != module.split(".")[1] and here > 0:
                bad.append(f"{module} -> {target} (a peer package of the same layer)")
    assert not bad, "imports of a higher layer:\n" + "\n".join(sorted(bad))


def test_tuning_subpackages_are_layered() -> None:
    def rank(module: str) -> int | None:
        parts = module.split(".")
        if parts[:2] != ["speechtune", "tuning"] or len(parts) < 3:
            return None
        return TUNING_LAYERS.index(parts[2])

    bad = []
    for module, targets in GRAPH.items():
        here = rank(module)
        for target in targets:
            there = rank(target)
            if here is not None and there is not None and there > here:
                bad.append(f"{module} -> {target}")
    assert not bad, "a tuning subpackage imports a higher one:\n" + "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    for module in sorted(set(graph) | {t for ts in graph.values() for t in ts}):
        if module not in index:
            visit(module)
    return found


def test_no_import_circles() -> None:
    # A package's __init__ importing its own modules is how it exports them, not a circle.
    graph = {
        m: {t for t in ts if not (MODULES[m].name == "__init__.py" and t.startswith(m + "."))}
        for m, ts in GRAPH.items()
    }
    assert _cycles(graph) == []


def _private_imports() -> list[str]:
    """``importer -> module`` for every import of another package's private module."""
    bad = []
    for module, targets in GRAPH.items():
        for target in targets:
            parts = target.split(".")
            private = next((i for i, p in enumerate(parts) if i > 0 and p.startswith("_")), None)
            if private is None or private == 1:
                continue  # public, or a root-level shared utility (speechtune._lazy)
            owner = ".".join(parts[:private])
            if not (module == owner or module.startswith(owner + ".")):
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def test_private_modules_stay_inside_their_package() -> None:
    bad = _private_imports()
    assert not bad, "private modules imported from another package:\n" + "\n".join(bad)


def test_modules_stay_small() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}, (
        f"split these by concept (max {MAX_LINES} lines)"
    )


def test_the_layer_checks_see_violations() -> None:
    # The checks above must be able to fail: a synthetic cycle and a synthetic upward import.
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _layer("speechtune.data._manifest") < _layer("speechtune.tuning.study._trial")  # type: ignore[operator]
    assert "speechtune.tuning.study" in GRAPH["speechtune.tuning.backends._local"]


def _summary() -> dict[str, object]:
    """The figures the tests above check, for a report."""
    graph = {
        m: {t for t in ts if not (MODULES[m].name == "__init__.py" and t.startswith(m + "."))}
        for m, ts in GRAPH.items()
    }
    sizes = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    largest = max(sizes, key=sizes.__getitem__)
    return {
        "modules": len(MODULES),
        "largest module": f"{largest} ({sizes[largest]} lines)",
        "modules over 600 lines": sum(n > MAX_LINES for n in sizes.values()),
        "import circles (groups of modules)": len(_cycles(graph)),
        "private cross-package imports (module pairs)": len(_private_imports()),
    }


if __name__ == "__main__":
    for key, value in _summary().items():
        print(f"{key}: {value}")
