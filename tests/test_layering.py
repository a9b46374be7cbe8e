"""The layering reads from the folder names, and no module imports itself back.

Read with the standard library's ``ast`` (nothing is imported): every ``import`` statement of
the project's code counts, including those under ``if TYPE_CHECKING:`` and inside functions,
since a loop through them is still a loop for a reader.

- Layers, bottom up: ``preprocessing`` → ``models`` → ``router`` → ``serving``. A package imports
  only from the layers below it (``benchmarks`` and ``tests`` sit on top).
- ``router.vocabulary`` (priority classes, orders, delivery kinds) is a leaf: it imports nothing
  from the project, so both ``router`` and ``serving`` can share it.
- No import loop between modules, anywhere.
- Every ``except Exception`` in runtime code says in a comment why it must catch everything.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("preprocessing", "models", "router", "serving")
"""Bottom up: a package may import the ones before it."""
TOP = ("benchmarks", "tests")
LEAVES = ("router.vocabulary",)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in (*LAYERS, *TOP):
        for path in sorted((ROOT / package).rglob("*.py")):
            if ".venv" in path.parts or "results" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module ``name`` refers to (itself or its nearest package), if any."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Project modules imported by ``module``, with the line of each import."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target is not None:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                full = ".".join([*base, node.module] if node.module else base)
            else:
                full = node.module or ""
            for alias in node.names:
                target = _resolve(f"{full}.{alias.name}")
                if target is None or target == module:
                    target = _resolve(full)
                if target is not None and target != module:
                    yield target, node.lineno


GRAPH = {m: sorted({t for t, _ in _imports(m, p)}) for m, p in MODULES.items()}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else len(LAYERS)


def test_each_layer_imports_only_the_layers_below() -> None:
    wrong = sorted(
        {
            f"{MODULES[m].relative_to(ROOT)}:{line}: {m} imports {t}"
            for m, path in MODULES.items()
            for t, line in _imports(m, path)
            if _layer(t) > _layer(m) and t not in LEAVES
        }
    )
    assert wrong == [], "\n".join(wrong)


def test_router_imports_nothing_from_serving() -> None:
    wrong = [
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if m.split(".")[0] == "router"
        for t in targets
        if t.split(".")[0] == "serving"
    ]
    assert wrong == []


@pytest.mark.parametrize("leaf", LEAVES)
def test_the_shared_vocabulary_is_a_leaf(leaf: str) -> None:
    assert leaf in MODULES, f"{leaf} is missing"
    assert GRAPH[leaf] == [], f"{leaf} imports {GRAPH[leaf]}"


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for root in GRAPH:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = GRAPH.get(node, [])
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return cycles


def test_no_import_loop_anywhere() -> None:
    cycles = _cycles()
    assert cycles == [], "\n".join(" <-> ".join(c) for c in cycles)


def test_the_loop_finder_finds_a_loop() -> None:
    """The check above would fail: a made-up loop is found."""
    saved = dict(GRAPH)
    try:
        GRAPH["serving.service.app"] = [*GRAPH["serving.service.app"], "serving.cli"]
        GRAPH["serving.cli"] = [*GRAPH["serving.cli"], "serving.service.app"]
        assert any("serving.cli" in c and "serving.service.app" in c for c in _cycles())
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


BROAD = re.compile(r"^\s*except\s*\(?\s*(Exception|BaseException)\b")
PRAGMA = re.compile(r"(noqa(:\s*[A-Z]+[0-9]+(,\s*[A-Z]+[0-9]+)*)?|type:\s*ignore(\[[^\]]*\])?)")
"""A linter pragma is not a reason."""


def test_every_broad_except_says_why() -> None:
    """A comment on the ``except`` line, or on the lines just above it, gives the reason."""
    silent = []
    for module, path in MODULES.items():
        if module.split(".")[0] == "tests":
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not BROAD.match(line):
                continue
            above = lines[number - 2].strip() if number >= 2 else ""
            comment = PRAGMA.sub("", line.partition("#")[2]).strip(" -#")
            if comment or above.startswith("#"):
                continue
            silent.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert silent == [], "\n".join(silent)
