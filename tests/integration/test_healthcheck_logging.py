"""`insignia-server healthcheck` is audited at debug, not at info with the calls that matter."""

from __future__ import annotations

from typing import Any

from devtools.harness.server_process import ServerProcess
from tests.integration.conftest import ServerFactory


def _health_records(server: ServerProcess) -> list[dict[str, Any]]:
    return [r for r in server.log_lines() if r.get("method") == "Health"]


def test_healthcheck_is_logged_at_debug_only(server_factory: ServerFactory) -> None:
    server = server_factory(log={"level": "info"})
    for _ in range(3):
        assert server.cli("healthcheck").stdout.strip() == "ready"
    assert _health_records(server) == []
    server.cli("entry", "count")  # other calls stay in the audit log at info
    assert [r["level"] for r in server.log_lines() if r.get("method") == "CountEntries"] == ["info"]

    server.cli("log-level", "set", "debug")
    server.cli("healthcheck")
    (record,) = _health_records(server)
    assert (record["level"], record["result"], record["logger"]) == (
        "debug",
        "OK",
        "insignia.server.audit",
    )
