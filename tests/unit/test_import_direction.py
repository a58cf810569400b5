"""Imports run one way: the SDK (`insignia`) never imports the daemons or the plugins, the
plugins (`attestors`) never import a daemon, and the agent and the server never import each
other; they speak only through `proto/`. Checked over the source with `ast`, function-level
imports included, so a lazy import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FORBIDDEN: dict[str, frozenset[str]] = {
    "insignia": frozenset({"agent", "server", "attestors"}),
    "attestors": frozenset({"agent", "server"}),
    "agent": frozenset({"server"}),
    "server": frozenset({"agent"}),
}


def imported_roots(source: str) -> set[str]:
    """Top-level package names that `source` imports (absolute imports only)."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        bad = imported_roots(path.read_text(encoding="utf-8")) & FORBIDDEN[package]
        found += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(bad)]
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    assert violations(package) == []


def test_the_check_sees_function_level_imports() -> None:
    source = "def f():\n    from server.core import ServerCore\n    import agent.cache\n"
    assert imported_roots(source) == {"server", "agent"}
