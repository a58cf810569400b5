"""Restarts and crashes of a real server process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from insignia_proto import agent_pb2

from devtools.harness.agent_api_client import attest_join_token, make_csr
from devtools.harness.postgres import Backend
from devtools.harness.server_process import SERVER_BIN, server_env
from insignia.keys import KeyType, generate_key
from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration


def test_restart_keeps_entries_agents_and_keys(
    server_factory: ServerFactory, backend: Backend
) -> None:
    server = server_factory(backend)
    agent = attest_join_token(server, server.join_token())
    entry_id = server.create_entry("spiffe://example.org/web", agent.agent_id, ["unix:uid:1"])
    before = {
        "entries": server.cli_json("entry", "show"),
        "agents": [a["id"] for a in server.cli_json("agent", "list")["agents"]],
        "x509": server.cli_json("authority", "x509", "show"),
        "jwt": server.cli_json("authority", "jwt", "show"),
        "bundle": server.bundle_pem(),
    }
    assert server.stop() == 0  # SIGTERM is a clean shutdown
    server.start()
    after = {
        "entries": server.cli_json("entry", "show"),
        "agents": [a["id"] for a in server.cli_json("agent", "list")["agents"]],
        "x509": server.cli_json("authority", "x509", "show"),
        "jwt": server.cli_json("authority", "jwt", "show"),
        "bundle": server.bundle_pem(),
    }
    assert after == before
    # the agent's SVID from before the restart still authenticates, and signing works
    key = generate_key(KeyType.EC_P256)
    with agent.channel() as channel:
        result = agent.sign_x509(channel, entry_id, make_csr(key, ["spiffe://example.org/web"]))
        assert result.error == "" and result.svid_chain
        first = next(agent.stub(channel).Sync(agent_pb2.SyncRequest(), timeout=30))
        assert [e.id for e in first.entries] == [entry_id]


BATCH = 25


def _batch_file(directory: Path, number: int) -> Path:
    entries = [
        {
            "spiffe_id": f"spiffe://example.org/batch{number}/e{i}",
            "parent_id": "spiffe://example.org/node",
            "selectors": [f"unix:uid:{i}", f"unix:gid:{number}"],
            "dns_names": [f"e{i}.batch{number}.example.org"],
        }
        for i in range(BATCH)
    ]
    path = directory / f"batch{number}.json"
    path.write_text(json.dumps({"entries": entries}))
    return path


def test_kill_9_during_writes_loses_nothing_acknowledged(
    server_factory: ServerFactory, backend: Backend, tmp_path: Path
) -> None:
    server = server_factory(backend)
    acknowledged: set[int] = set()
    in_flight: list[subprocess.Popen[str]] = []
    for number in range(12):
        proc = subprocess.Popen(
            [
                str(SERVER_BIN),
                "entry",
                "create",
                "--file",
                str(_batch_file(tmp_path, number)),
                "--socket",
                str(server.admin_socket),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=server_env(),
        )
        in_flight.append(proc)
        if number == 8:
            server.stop(signal.SIGKILL)  # while batches 0..8 may still be writing
            break
    for number, proc in enumerate(in_flight):
        if proc.wait(60) == 0:
            acknowledged.add(number)
    server.start()
    entries = server.cli_json("entry", "show")["entries"]
    per_batch = Counter(e["spiffe_id"].split("/")[3] for e in entries)
    assert all(count == BATCH for count in per_batch.values()), per_batch  # none half-written
    assert {f"batch{n}" for n in acknowledged} <= set(per_batch)  # every acknowledged one kept
    for entry in entries:
        assert len(entry["selectors"]) == 2 and len(entry["dns_names"]) == 1
    # the server still writes after the crash
    server.create_entry("spiffe://example.org/after", "spiffe://example.org/node", ["unix:uid:1"])
