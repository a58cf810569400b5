"""What `insignia-server` commands import, read from `python -X importtime` in a subprocess.

A command imports only what it needs: `--version` and the admin commands (against a real
server) never load the daemon, SQLAlchemy, trio or structlog. A test of imports, not of time:
it fails when a command's import set grows to include one of the named heavy modules.
"""

from __future__ import annotations

import subprocess
import sys

from devtools.harness.server_process import SERVER_BIN, ServerProcess, server_env

HEAVY = (
    "insignia.server.daemon",
    "insignia.daemon.runtime",
    "sqlalchemy",
    "alembic",
    "trio",
    "structlog",
)


def imported_modules(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules `insignia-server ARGS` imported, and its result (stderr without the trace)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(SERVER_BIN), *args],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )
    modules, rest = set(), []
    for line in result.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rpartition("|")[2].strip()
            if name != "imported package":
                modules.add(name)
        else:
            rest.append(line)
    result.stderr = "\n".join(rest)
    return modules, result


def heavy_in(modules: set[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy))


def test_version_imports_neither_the_daemon_nor_grpc() -> None:
    modules, result = imported_modules("--version")
    assert result.returncode == 0, result.stderr
    assert "insignia-server, version" in result.stdout
    assert {"click", "insignia.server.cli"} <= modules  # the trace was read
    assert heavy_in(modules, (*HEAVY, "grpc", "cryptography", "msgspec")) == []


def test_admin_commands_import_no_daemon(running_server: ServerProcess) -> None:
    entry_id = running_server.create_entry(
        "spiffe://example.org/web", "spiffe://example.org/insignia/agent/x", ["unix:uid:1"]
    )
    socket = ("--socket", str(running_server.admin_socket))
    for args in (("entry", "show", "--id", entry_id), ("healthcheck",), ("token", "generate")):
        modules, result = imported_modules(*args, *socket)
        assert result.returncode == 0, result.stderr
        assert "grpc" in modules, args  # it did call the server
        assert heavy_in(modules) == [], args
    assert entry_id in imported_modules("entry", "show", "--id", entry_id, *socket)[1].stdout
