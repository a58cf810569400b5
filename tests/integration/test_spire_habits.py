"""SPIRE habits: single-dash camelCase flags as hidden aliases, and SPIRE's entry JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from devtools.harness.agent_clients import agent_cli
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import SERVER_BIN, ServerProcess, server_env


def spire_style(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`insignia-server ARGS -socketPath SOCK`, as a SPIRE operator types it."""
    return subprocess.run(
        [str(SERVER_BIN), *args, "-socketPath", str(server.admin_socket)],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )


def test_entry_commands_take_spire_flags(running_server: ServerProcess) -> None:
    td = running_server.trust_domain
    created = spire_style(
        running_server,
        "entry", "create",
        "-spiffeID", f"spiffe://{td}/web",
        "-parentID", f"spiffe://{td}/node",
        "-selector", "unix:uid:1001",
        "-selector", "unix:gid:1001",
        "-x509SVIDTTL", "300",
        "-jwtSVIDTTL", "60",
        "-dns", "web.example.org",
        "-hint", "web",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    entry_id = created.stdout.strip()
    shown = spire_style(running_server, "entry", "show", "-entryID", entry_id, "-output", "json")
    assert shown.returncode == 0, shown.stderr
    (entry,) = json.loads(shown.stdout)["entries"]
    assert entry["spiffe_id"] == f"spiffe://{td}/web"
    assert sorted(entry["selectors"]) == ["unix:gid:1001", "unix:uid:1001"]
    assert (entry["x509_svid_ttl"], entry["jwt_svid_ttl"]) == (300, 60)
    assert entry["dns_names"] == ["web.example.org"] and entry["hint"] == "web"
    found = spire_style(running_server, "entry", "show", "-spiffeID", f"spiffe://{td}/web")
    assert "Found 1 entry" in found.stdout
    deleted = spire_style(running_server, "entry", "delete", "-entryID", entry_id)
    assert deleted.returncode == 0, deleted.stderr
    assert running_server.cli("entry", "count").stdout.strip() == "0 registration entries"


def test_other_commands_take_spire_flags(running_server: ServerProcess) -> None:
    td = running_server.trust_domain
    token = spire_style(
        running_server, "token", "generate", "-ttl", "60", "-spiffeID", f"spiffe://{td}/n1"
    )
    assert token.returncode == 0, token.stderr
    minted = spire_style(
        running_server,
        "jwt",
        "mint",
        "-spiffeID",
        f"spiffe://{td}/w",
        "-audience",
        "a",
        "-ttl",
        "60",
    )
    assert minted.returncode == 0 and minted.stdout.count(".") == 2, minted.stderr


def test_spire_aliases_are_hidden_from_help(running_server: ServerProcess) -> None:
    for command in (["entry", "create"], ["entry", "show"], ["token", "generate"]):
        text = running_server.cli(*command, "--help").stdout
        assert "--spiffe-id" in text
        assert "-spiffeID" not in text and "-socketPath" not in text and "-output" not in text


def test_entry_create_file_accepts_spire_json(
    running_server: ServerProcess, tmp_path: Path
) -> None:
    td = running_server.trust_domain
    document: dict[str, Any] = {
        "entries": [
            {
                "spiffe_id": f"spiffe://{td}/blog",
                "parent_id": f"spiffe://{td}/node",
                "selectors": [{"type": "unix", "value": "uid:1001"}],
                "x509_svid_ttl": 200,
                "jwt_svid_ttl": 30,
                "dns_names": ["blog.example.org"],
                "admin": True,
            },
            {
                "spiffe_id": {"trust_domain": td, "path": "/db"},
                "parent_id": {"trust_domain": td, "path": "/node"},
                "selectors": [
                    {"type": "unix", "value": "uid:1002"},
                    {"type": "unix", "value": "gid:1002"},
                ],
            },
        ]
    }
    path = tmp_path / "spire-entries.json"
    path.write_text(json.dumps(document))
    created = spire_style(running_server, "entry", "create", "-data", str(path))
    assert created.returncode == 0, created.stderr
    entries = {e["spiffe_id"]: e for e in running_server.cli_json("entry", "show")["entries"]}
    blog, db = entries[f"spiffe://{td}/blog"], entries[f"spiffe://{td}/db"]
    assert blog["selectors"] == ["unix:uid:1001"] and blog["admin"] is True
    assert (blog["x509_svid_ttl"], blog["dns_names"]) == (200, ["blog.example.org"])
    assert db["parent_id"] == f"spiffe://{td}/node"
    assert sorted(db["selectors"]) == ["unix:gid:1002", "unix:uid:1002"]

    document["entries"] = [{**document["entries"][0], "selectors": [{"type": "unix"}]}]
    path.write_text(json.dumps(document))
    refused = running_server.cli("entry", "create", "--file", str(path), check=False)
    assert refused.returncode == 1
    assert "entries[0]" in refused.stderr and '"type"' in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_agent_commands_take_spire_flags(running_agent: AgentProcess) -> None:
    health = agent_cli("healthcheck", "-socketPath", str(running_agent.admin_socket_path))
    assert health.returncode == 0 and "healthy" in health.stdout, health.stderr
    fetched = agent_cli(
        "api", "fetch", "x509", "-socketPath", running_agent.endpoint, "-timeout", "5"
    )
    # no entry for this caller: refused by the agent, so the flags reached it
    assert fetched.returncode == 1 and "fetching X.509-SVIDs failed" in fetched.stderr
