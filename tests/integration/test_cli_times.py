"""Times in the CLIs: printed as RFC 3339 with the relative time, taken in RFC 3339 or relative."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess

RAW_EPOCH = re.compile(r"(?<![\w.])1\d{9}(?![\w.])")
RFC3339_RELATIVE = r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ \((in \w+|\w+ ago|now)\)"


def test_entry_expiry_in_and_out(running_server: ServerProcess) -> None:
    server, td = running_server, running_server.trust_domain
    parent = f"spiffe://{td}/node"
    relative_id = server.create_entry(
        f"spiffe://{td}/a", parent, ["unix:uid:1"], "--expires-at", "+2h"
    )
    text = server.cli("entry", "show", "--id", relative_id).stdout
    assert re.search(r"Expires at     : " + RFC3339_RELATIVE, text), text
    assert "(in 1h59m" in text or "(in 2h)" in text
    assert re.search(r"Created at     : " + RFC3339_RELATIVE, text)
    assert not RAW_EPOCH.search(text), text

    fixed = server.create_entry(
        f"spiffe://{td}/b", parent, ["unix:uid:2"], "--expires-at", "2030-01-01T00:00:00Z"
    )
    (entry,) = server.cli_json("entry", "show", "--id", fixed)["entries"]
    assert int(entry["expires_at"]) == int(datetime(2030, 1, 1, tzinfo=UTC).timestamp())
    assert "2030-01-01T00:00:00Z (in " in server.cli("entry", "show", "--id", fixed).stdout

    bad = server.cli(
        "entry", "create", "--spiffe-id", f"spiffe://{td}/c", "--parent-id", parent,
        "--selector", "unix:uid:3", "--expires-at", "next tuesday", check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "next tuesday" in bad.stderr and "RFC 3339" in bad.stderr


def test_agent_and_authority_times_are_readable(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    agents = running_server.cli("agent", "show", running_agent.agent_id).stdout
    assert re.search(r"Expires at   : " + RFC3339_RELATIVE, agents), agents
    assert re.search(r"Attested at  : " + RFC3339_RELATIVE, agents), agents
    authorities = running_server.cli("authority", "x509", "show").stdout
    assert re.search(r"not after " + RFC3339_RELATIVE, authorities), authorities
    for text in (agents, authorities):
        assert not RAW_EPOCH.search(text), text
