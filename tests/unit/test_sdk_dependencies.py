"""`pip install insignia` brings the SDK's dependencies only: every SDK module imports in a fresh
interpreter that refuses the packages only the daemons need (the `agent`, `server` and
`examples` extras)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOMS = {"daemon", "agent", "server", "attestors"}
DAEMON_ONLY = (
    "sqlalchemy",
    "alembic",
    "psycopg",
    "click",
    "structlog",
    "prometheus_client",
    "msgspec",
    "h11",
    "hypercorn",
    "grpc_reflection",
)

BLOCKED_IMPORTS = textwrap.dedent(
    """
    import importlib, sys

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is not an SDK dependency")
            return None

    sys.meta_path.insert(0, Refuse())
    for module in MODULES:
        importlib.import_module(module)
    print("imported", len(MODULES))
    """
)


def sdk_modules() -> list[str]:
    found = []
    for path in sorted((REPO / "insignia").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if len(parts) > 1 and parts[1] in ROOMS:
            continue
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def import_blocked(
    modules: list[str], blocked: tuple[str, ...] = DAEMON_ONLY
) -> subprocess.CompletedProcess[str]:
    script = f"BLOCKED = {set(blocked)!r}\nMODULES = {modules!r}\n{BLOCKED_IMPORTS}"
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_every_sdk_module_imports_without_the_daemon_dependencies() -> None:
    modules = sdk_modules()
    assert "insignia.spiffetls" in modules and "insignia.workloadapi" in modules
    result = import_blocked(modules)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"imported {len(modules)}"


def test_the_refusal_catches_a_daemon_module() -> None:
    result = import_blocked(["insignia.daemon.logs"])
    assert "structlog is not an SDK dependency" in result.stderr


def test_a_daemon_without_its_extra_says_which_in_one_line() -> None:
    result = import_blocked(["insignia.server.cli"], blocked=("click", "sqlalchemy"))
    assert result.returncode == 1
    assert result.stderr == (
        "insignia-server needs the server extra (missing click, sqlalchemy): "
        "pip install 'insignia[server]'\n"
    )
