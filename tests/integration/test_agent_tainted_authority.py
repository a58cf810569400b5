"""Tainting the CA that signed a workload's SVID makes the agent re-sign it at once."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from cryptography import x509

from insignia.workloadapi.client import WorkloadApiClient
from tests.integration.agent_clients import (
    register,
    short_tmp_path,  # noqa: F401  (the tmp_path fixture)
)
from tests.integration.agent_fixtures import AgentProcess
from tests.integration.server_fixtures import ServerProcess

pytestmark = [pytest.mark.integration]


def issuer_key_id(leaf: x509.Certificate) -> str:
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    return aki.key_identifier.hex()


def test_tainted_x509_authority_forces_a_new_svid_on_open_streams(
    running_server: ServerProcess, running_agent: AgentProcess, tmp_path: Path
) -> None:
    # A day-long SVID: only the taint, not the schedule, can rotate it during this test.
    register(
        running_server,
        running_agent,
        "/long",
        f"unix:uid:{os.getuid()}",
        extra=("--x509-svid-ttl", "86400"),
    )
    client = WorkloadApiClient(running_agent.socket_path, timeout=60)
    contexts = client.watch_x509_context()
    first = next(contexts).default_svid
    old = running_server.cli_json("authority", "x509", "show")
    running_server.cli("authority", "x509", "prepare")
    running_server.cli("authority", "x509", "activate")

    received: list[x509.Certificate] = []
    done = threading.Event()

    def follow() -> None:
        for context in contexts:
            received.append(context.default_svid.leaf)
            if issuer_key_id(context.default_svid.leaf) != issuer_key_id(first.leaf):
                done.set()
                return

    threading.Thread(target=follow, daemon=True).start()
    old_id = next(a for a in old["authorities"] if a["state"] == "active")["authority_id"]
    running_server.cli("authority", "x509", "taint", old_id)
    assert done.wait(60), f"no SVID from the new authority; got {len(received)} updates"
    client.close()
    tainted = running_agent.metric("insignia_agent_svid_rotations_total", {"reason": "tainted"})
    assert tainted is not None and tainted >= 1
