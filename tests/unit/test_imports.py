"""The import picture of hub/twinhub and extensions/twinlab (docs/ARCHITECTURE.md).

Walks every module's imports, those inside functions too (not those under
``if TYPE_CHECKING:``), and fails on a loop, on a forbidden direction, and on an import
inside a function without a comment saying why (start-up cost, an optional dependency).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TREES = {
    "twinhub": ROOT / "hub" / "twinhub",
    "twinlab": ROOT / "extensions" / "twinlab" / "twinlab",
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module of the tree
    line: int
    top: bool  # at module level
    commented: bool  # a comment on its line or the line above


def module_name(top: str, path: Path) -> tuple[str, bool]:
    rel = path.relative_to(TREES[top]).with_suffix("")
    parts = [top, *rel.parts]
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def all_modules() -> dict[str, Path]:
    mods = {}
    for top, root in TREES.items():
        for f in root.rglob("*.py"):
            if "migrations" in f.parts:
                continue
            mods[module_name(top, f)[0]] = f
    return mods


MODULES = all_modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, top: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for orelse in child.orelse:
                yield from _walk(orelse, top)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, top
        inner = top and not isinstance(
            child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef
        )
        # A class body runs at import time like the module's.
        if isinstance(child, ast.ClassDef):
            inner = top
        yield from _walk(child, inner)


def _owner(name: str) -> str | None:
    """The tree's module that ``name`` (a module, or a name in one) is."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(mod: str) -> list[Import]:
    path = MODULES[mod]
    is_pkg = path.name == "__init__.py"
    lines = path.read_text().splitlines()
    tree = ast.parse(path.read_text())
    found = list(_walk(tree, True))
    # The first line of the import statement that covers each line (multi-line imports).
    starts = {n: node.lineno for node, _ in found for n in range(node.lineno, node.end_lineno + 1)}

    def commented(n: int) -> bool:
        """A comment on the import's line, or above it: directly, or above a run of
        imports it belongs to (one comment may say why for a group)."""
        if "#" in lines[n - 1]:
            return True
        above = n - 1
        if above < 1:
            return False
        if lines[above - 1].strip().startswith("#"):
            return True
        return above in starts and commented(starts[above])

    out = []
    for node, top in found:
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                pkg = ".".join(base + ([node.module] if node.module else []))
            else:
                pkg = node.module or ""
            targets = [f"{pkg}.{a.name}" for a in node.names] if pkg else []
        n = node.lineno
        for t in targets:
            owner = _owner(t)
            if owner and owner != mod:
                out.append(Import(mod, owner, n, top, commented(n)))
    return out


IMPORTS = [i for m in sorted(MODULES) for i in imports_of(m)]


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        graph[i.source].add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return out


def in_room(mod: str, *rooms: str) -> bool:
    return any(mod == r or mod.startswith(r + ".") for r in rooms)


#: (who, may not import, why). See docs/ARCHITECTURE.md, "The import picture".
FORBIDDEN = [
    ("twinlab", ("twinhub",), "the user side runs without the hub's code"),
    ("twinlab.contract", ("twinlab",), "the contract is dependency-free"),
    (
        "twinhub",
        ("twinlab",),
        "the hub uses only the contract and the shared grid maths of twinlab",
    ),
    ("twinhub.db", ("twinhub",), "the tables depend on nothing of the platform"),
    (
        "twinhub.process",
        ("twinhub",),
        "the supervisor's machinery knows no part (twinhub.platform runs the parts)",
    ),
    (
        "twinhub",
        (
            "twinhub.parts",
            "twinhub.platform",
            "twinhub.cli",
            "twinhub.jupyterhub_config",
            "twinhub.hub_config",
        ),
        "only the top of the house (the CLI, the platform, the hub's config files) lists parts",
    ),
    ("twinhub.client", ("twinhub",), "a laptop client needs only the runtime's facts"),
    (
        "twinhub.services",
        ("twinhub.parts", "twinhub.platform", "twinhub.cli", "twinhub.hubconf"),
        "a service is a part: it is listed, it does not list",
    ),
    (
        "twinhub.spawn",
        ("twinhub.parts", "twinhub.platform", "twinhub.cli", "twinhub.services"),
        "the spawners know no service (services hook into them through the hub config)",
    ),
]
#: Allowed exceptions to FORBIDDEN, each (who, target): why.
ALLOWED = {
    ("twinlab", "twinlab.contract"): "everyone may import the contract",
    ("twinhub", "twinlab.contract"): "the hub side of the agreement",
    ("twinhub.services.datalake.seed", "twinlab.grids"): "sample data uses the grid maths",
    ("twinhub.services.processing", "twinlab.processing.schemas"): (
        "the process descriptions and input checks both sides use"
    ),
    ("twinhub.services.processing", "twinlab.processing.jsonschema_safe"): (
        "the rules for users' schemas, checked at registration and by the runner's checks"
    ),
    ("twinhub.services.tiles", "twinlab.viz"): (
        "the tiles service renders with the same native-grid renderer as the notebook explorer"
    ),
    ("twinhub.services.tiles", "twinlab.grids"): "grid detection and cell lookups for EDR queries",
    ("twinhub.services.tiles", "twinlab.datalake"): (
        "the lake's items are opened (asset choice, valid times, variables) as notebooks open them"
    ),
    ("twinhub.db", "twinhub.db"): "itself",
    ("twinhub.db", "twinhub.process.runtime"): "where the database is",
    ("twinhub.db", "twinhub.process.postgres"): "backups of an embedded PostgreSQL",
    ("twinhub.db", "twinhub.errors"): "one-line errors",
    ("twinhub.process", "twinhub.process"): "itself",
    ("twinhub.process", "twinhub.errors"): "one-line errors",
    ("twinhub.__main__", "twinhub.cli"): "python -m twinhub",
    ("twinhub.cli", "twinhub.platform"): "twinhub up/down/status",
    ("twinhub.cli", "twinhub.parts"): "--help-all lists every part's options",
    ("twinhub.platform", "twinhub.parts"): "twinhub up runs every part",
    ("twinhub.jupyterhub_config", "twinhub.parts"): "the hub's config is every part's",
    ("twinhub.hub_config", "twinhub.parts"): "the chart hub's config is every part's",
    ("twinhub.client", "twinhub.client"): "itself",
    ("twinhub.client", "twinhub.process.runtime"): "where the hub is",
    ("twinhub.client", "twinhub.errors"): "one-line errors",
}


def _allowed(i: Import) -> bool:
    if i.target == "twinhub" and in_room(i.source, "twinhub"):
        return True  # the package's face: __version__
    return any(in_room(i.source, who) and in_room(i.target, t) for who, t in ALLOWED)


def test_the_walk_sees_the_tree():
    """The checks below mean something only if the walk finds modules and imports."""
    assert len(MODULES) > 100
    assert len(IMPORTS) > 300
    assert any(i.target == "twinhub.process.runtime" for i in IMPORTS)


def test_no_import_loops():
    report = []
    for cycle in _cycles():
        inside = set(cycle)
        report.append("loop of " + ", ".join(cycle) + ":")
        report += sorted(
            {
                f"  {i.source}:{i.line} -> {i.target}{'' if i.top else ' (in a function)'}"
                for i in IMPORTS
                if i.source in inside and i.target in inside
            }
        )
    assert not report, "\n".join(report)


@pytest.mark.parametrize("who,targets,why", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_import_directions(who, targets, why):
    bad = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in IMPORTS
        if in_room(i.source, who) and any(in_room(i.target, t) for t in targets) and not _allowed(i)
    ]
    assert not bad, f"{why}:\n" + "\n".join(bad)


def test_imports_inside_functions_say_why():
    bad = [
        f"{i.source}:{i.line} imports {i.target}" for i in IMPORTS if not i.top and not i.commented
    ]
    assert not bad, "\n".join(bad)


def test_no_module_over_600_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long
