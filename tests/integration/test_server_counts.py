"""`entry count`, `agent count`, `bundle count`: COUNT in the datastore, through the admin API."""

from __future__ import annotations

from devtools.harness.agent_process import AgentProcess
from devtools.harness.postgres import Backend
from devtools.harness.server_process import ServerProcess
from tests.integration.conftest import ServerFactory


def test_counts_on_each_backend(server_factory: ServerFactory, backend: Backend) -> None:
    server = server_factory(backend=backend)
    assert server.cli("entry", "count").stdout.strip() == "0 registration entries"
    assert server.cli("agent", "count").stdout.strip() == "0 attested agents"
    assert server.cli("bundle", "count").stdout.strip() == "1 bundle"
    parent = f"spiffe://{server.trust_domain}/node"
    for i in range(3):
        server.create_entry(f"spiffe://{server.trust_domain}/w{i}", parent, [f"unix:uid:{i}"])
    assert server.cli("entry", "count").stdout.strip() == "3 registration entries"
    assert server.cli_json("entry", "count") == {"count": 3}


def test_agent_count_sees_an_attested_agent(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    assert running_server.cli("agent", "count").stdout.strip() == "1 attested agent"
    assert running_server.cli_json("agent", "count") == {"count": 1}
