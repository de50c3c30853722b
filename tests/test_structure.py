"""The package's import structure: no import cycles between modules (issue 10).

Every module of ``geoembed`` is parsed with :mod:`ast` (nothing is imported). An edge ``a -> b`` means
that importing ``a`` runs ``b``'s module code through an import statement executed at import time:
module level, class bodies, ``try``/``if``/``with`` blocks; imports inside functions (deliberately
lazy) and under ``if TYPE_CHECKING:`` are not edges. Packages count as modules: ``from geoembed.enrich
import enrich_file`` is an edge to ``geoembed.enrich`` (its ``__init__``), whose own imports (re-exports)
are edges from it; ``from geoembed.enrich import hygiene`` is an edge to the submodule, and to the
package too unless the importer is inside that package (which is then already being imported).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

PACKAGE = "geoembed"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_run(tree: ast.AST, lazy: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """Import statements run when the module is imported: not in functions (unless ``lazy``: then also
    those run later by a call), never under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if lazy:
                    visit(node.body)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)
            elif isinstance(node, ast.Match):
                for case in node.cases:
                    visit(case.body)
            else:
                for name in ("body", "orelse", "finalbody"):
                    visit(getattr(node, name, None) or [])
                for handler in getattr(node, "handlers", None) or []:
                    visit(handler.body)

    visit(tree.body)
    return found


def _ancestors(module: str, is_package: bool) -> set[str]:
    """Packages enclosing ``module`` (itself too when it is a package's ``__init__``)."""
    parts = module.split(".")
    out = {".".join(parts[:i]) for i in range(1, len(parts))}
    if is_package:
        out.add(module)
    return out


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, files) -> set[str]:
    """The package modules one import statement runs: each module it names, and each package on the
    way there that does not enclose ``module`` (an enclosing package is already being imported)."""
    if isinstance(node, ast.Import):
        named = {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
    else:
        if node.level:  # relative import
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] != PACKAGE:
            return set()
        # a submodule; else a name that the package's __init__ defines or re-exports
        named = {f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names}
    enclosing = _ancestors(module, is_package)
    out = set()
    for target in named:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name in files and name != module and (name == target or name not in enclosing):
                out.add(name)
    return out


def import_graph(files: dict[str, Path] | None = None, lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports at import time (with ``lazy``: at any time)."""
    files = module_files() if files is None else files
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in imports_run(ast.parse(path.read_text(), str(path)), lazy):
            graph[module] |= _targets(module, is_package, node, files)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """For each strongly connected component with a cycle, the shortest cycle through each of its
    modules (deduplicated), as ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    out: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for comp in components:
        members = set(comp)
        if len(comp) == 1 and comp[0] not in graph[comp[0]]:
            continue
        for start in comp:
            prev = {start: None}
            queue = deque([start])
            path = None
            while queue and path is None:
                v = queue.popleft()
                for w in sorted(graph[v] & members):
                    if w == start:
                        chain = [v]  # v, prev[v], ..., start
                        while prev[chain[-1]] is not None:
                            chain.append(prev[chain[-1]])
                        path = [*reversed(chain), start]
                        break
                    if w not in prev:
                        prev[w] = v
                        queue.append(w)
            if path is None:  # pragma: no cover - every member of a component lies on a cycle
                continue
            ring = path[:-1]
            k = ring.index(min(ring))
            key = tuple(ring[k:] + ring[:k])
            if key not in seen:
                seen.add(key)
                out.append([*key, key[0]])
    return sorted(out)


def _package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return module_files(root / PACKAGE)


def test_edges_follow_what_an_import_runs(tmp_path):
    files = _package(tmp_path, {
        "geoembed/__init__.py": "from geoembed.errors import E\n"
                                "def __getattr__(n):\n    from geoembed.stage import thing\n",
        "geoembed/errors.py": "",
        "geoembed/version.py": "",
        "geoembed/stage/__init__.py": "from typing import TYPE_CHECKING\nfrom .command import run\n"
                                      "if TYPE_CHECKING:\n    from geoembed.stage.heavy import thing\n",
        "geoembed/stage/command.py": "import geoembed.errors\ndef run():\n    from geoembed.stage import heavy\n",
        "geoembed/stage/heavy.py": "from geoembed.stage import command\nfrom . import light as _l\n"
                                   "from geoembed.io import store\nclass A:\n    from geoembed import version\n"
                                   "try:\n    import numpy\nexcept ImportError:\n    from geoembed.io.store import x\n",
        "geoembed/stage/light.py": "from geoembed.stage import run\n",
        "geoembed/io/__init__.py": "",
        "geoembed/io/store.py": "",
    })
    g = import_graph(files)
    assert g["geoembed"] == {"geoembed.errors"}  # the lazy __getattr__ import is not an edge
    assert g["geoembed.stage"] == {"geoembed.stage.command"}  # relative; TYPE_CHECKING skipped
    assert g["geoembed.stage.command"] == {"geoembed.errors"}
    # a submodule of an enclosing package: only the submodule; another package: it and its submodule;
    # class bodies and except blocks run at import time
    assert g["geoembed.stage.heavy"] == {"geoembed.stage.command", "geoembed.stage.light", "geoembed.io",
                                         "geoembed.io.store", "geoembed.version"}
    # a name from an enclosing package's __init__ needs that __init__ to have run: an edge
    assert g["geoembed.stage.light"] == {"geoembed.stage"}
    assert cycles(g) == []
    lazy = import_graph(files, lazy=True)
    assert lazy["geoembed"] == {"geoembed.errors", "geoembed.stage"}
    assert lazy["geoembed.stage.command"] == {"geoembed.errors", "geoembed.stage.heavy"}
    assert cycles(lazy) == [
        ["geoembed.stage", "geoembed.stage.command", "geoembed.stage.heavy", "geoembed.stage.light",
         "geoembed.stage"],
        ["geoembed.stage.command", "geoembed.stage.heavy", "geoembed.stage.command"],
    ]


def test_graph_of_this_package():
    g = import_graph()
    assert "geoembed.enrich.command" in g["geoembed.enrich"]  # a package __init__'s re-export
    assert "geoembed.enrich.driver" in g["geoembed.enrich.parts"]
    assert "geoembed.io.atomic" in g["geoembed.io.fingerprint"]
    assert "geoembed.io.fingerprint" not in g["geoembed.io.atomic"]


def test_cycle_finder_finds_and_lists_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"d"}, "e": {"a"}, "f": {"a"}}
    assert cycles(g) == [["a", "b", "c", "a"], ["d", "d"]]
    g["a"].add("c")  # a second, shorter ring in the same component
    assert cycles(g) == [["a", "b", "c", "a"], ["a", "c", "a"], ["d", "d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def _listing(found: list[list[str]]) -> str:
    return "\n".join(" -> ".join(c) for c in found)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, f"import cycles:\n{_listing(found)}"


# Enrichment, the artefact modules and the package root stay acyclic even counting lazy imports
# (imports inside functions), so that none of them needs a lazy import to break a cycle.
LAYERED = ("geoembed", "geoembed.version", "geoembed.errors", "geoembed.enrich", "geoembed.io")


def test_no_cycles_through_enrich_io_or_the_root_even_counting_lazy_imports():
    def inside(m: str) -> bool:
        return m in LAYERED or m.startswith(tuple(f"{p}." for p in LAYERED[3:]))

    found = [c for c in cycles(import_graph(lazy=True)) if any(inside(m) for m in c)]
    assert not found, f"import cycles counting lazy imports:\n{_listing(found)}"


def test_version_is_written_once_in_pyproject(monkeypatch):
    import importlib.metadata
    import tomllib

    import geoembed
    from geoembed import version

    written = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]["version"]
    assert geoembed.__version__ == version.__version__ == importlib.metadata.version("geoembed") == written, \
        "the installed metadata differs from pyproject.toml: reinstall (pip install -e .)"
    for module, path in module_files().items():  # no second copy of the version anywhere
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and any(
                    isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets):
                raise AssertionError(f"{module} writes __version__ = {node.value.value!r}")

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert version.package_version() == written  # a source checkout reads pyproject.toml
