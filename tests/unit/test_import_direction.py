"""Imports run one way: the SDK (`insignia` outside its rooms) never imports the daemons'
plumbing (`insignia.daemon`), the daemons or the plugins; the plumbing never imports a daemon or
a plugin; the plugins (`insignia.attestors`) never import a daemon; and the agent and the server
never import each other, they speak only through `proto/`. Checked over the source with `ast`,
function-level imports included, so a lazy import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Each part of the import root, by the folder that holds it.
FOLDERS = {
    "sdk": "insignia",
    "daemon": "insignia/daemon",
    "attestors": "attestors",
    "agent": "agent",
    "server": "server",
}
FORBIDDEN: dict[str, frozenset[str]] = {
    "sdk": frozenset({"daemon", "agent", "server", "attestors"}),
    "daemon": frozenset({"agent", "server", "attestors"}),
    "attestors": frozenset({"agent", "server"}),
    "agent": frozenset({"server"}),
    "server": frozenset({"agent"}),
}
ROOMS = ("daemon", "agent", "server", "attestors")


def part_of(module: str) -> str | None:
    """Which part of the tree `module` belongs to: a room under `insignia.`, the SDK, or None."""
    names = module.split(".")
    if names[0] != "insignia":
        return names[0] if names[0] in ROOMS else None  # a pre-import-root name
    if len(names) > 1 and names[1] in ROOMS:
        return names[1]
    return "sdk"


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
        if not (part == "sdk" and p.relative_to(folder).parts[0] in ROOMS)
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
    assert imported_parts("from insignia import agent\n") == {"sdk", "agent"}


def test_the_check_tells_the_plumbing_from_the_sdk() -> None:
    source = "from insignia.daemon.logs import get_logger\nfrom insignia.bundle import Bundle\n"
    assert imported_parts(source) == {"sdk", "daemon"}
