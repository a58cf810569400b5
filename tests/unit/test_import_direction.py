"""Imports run one way: the SDK (`insignia`) never imports the daemons or the plugins, the
plugins (`insignia.attestors`) never import a daemon, and the agent and the server never import
each other; they speak only through `proto/`. Checked over the source with `ast`, function-level
imports included, so a lazy import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Each part of the import root, by the folder that holds it.
FOLDERS = {"insignia": "insignia", "attestors": "attestors", "agent": "agent", "server": "server"}
FORBIDDEN: dict[str, frozenset[str]] = {
    "insignia": frozenset({"agent", "server", "attestors"}),
    "attestors": frozenset({"agent", "server"}),
    "agent": frozenset({"server"}),
    "server": frozenset({"agent"}),
}
ROOMS = ("agent", "server", "attestors")


def part_of(module: str) -> str | None:
    """Which part of the tree `module` belongs to: a room under `insignia.`, the SDK, or None."""
    names = module.split(".")
    if names[0] != "insignia":
        return names[0] if names[0] in ROOMS else None  # a pre-import-root name
    if len(names) > 1 and names[1] in ROOMS:
        return names[1]
    return "insignia"


def imported_parts(source: str) -> set[str]:
    """The parts of the tree that `source` imports (absolute imports only)."""
    modules = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
            modules += [f"{node.module}.{alias.name}" for alias in node.names]
    return {part for part in map(part_of, modules) if part is not None}


def sources(part: str) -> list[Path]:
    folder = REPO / FOLDERS[part]
    return sorted(
        p
        for p in folder.rglob("*.py")
        if not (part == "insignia" and p.relative_to(folder).parts[0] in ROOMS)
    )


def violations(part: str) -> list[str]:
    found = []
    for path in sources(part):
        bad = imported_parts(path.read_text(encoding="utf-8")) & FORBIDDEN[part]
        found += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(bad)]
    return found


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_run_one_way(part: str) -> None:
    assert sources(part)
    assert violations(part) == []


def test_the_check_sees_function_level_imports() -> None:
    source = "def f():\n    from insignia.server.core import X\n    import insignia.agent\n"
    assert imported_parts(source) == {"server", "agent"}


def test_the_check_sees_a_room_imported_from_the_root() -> None:
    assert imported_parts("from insignia import agent\n") == {"insignia", "agent"}
