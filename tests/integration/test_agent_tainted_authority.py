"""Tainting the CA that signed a workload's SVID makes the agent re-sign it at once."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from devtools.harness.agent_clients import (
    register,
)
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from insignia.agent.identity.node_attestation import load_identity
from insignia.spiffeid import TrustDomain
from insignia.workloadapi import WorkloadApiClient

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


def _agent_svid(agent: AgentProcess) -> x509.Certificate:
    identity = load_identity(agent.data_dir, TrustDomain.parse("example.org"), datetime.now(UTC))
    assert identity is not None, "no usable agent SVID on disk"
    return identity.svid.chain[0]


def test_tainting_the_agents_issuer_renews_its_svid_so_revoke_keeps_it_working(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    first = _agent_svid(running_agent)
    old = running_server.cli_json("authority", "x509", "show")
    old_id = next(a for a in old["authorities"] if a["state"] == "active")["authority_id"]
    running_server.cli("authority", "x509", "prepare")
    running_server.cli("authority", "x509", "activate")
    running_server.cli("authority", "x509", "taint", old_id)
    renewed = wait_for(
        lambda: (svid := _agent_svid(running_agent)) != first and svid,
        60,
        "the agent to renew its own SVID after the taint",
    )
    assert issuer_key_id(renewed) != issuer_key_id(first)
    assert any(e.get("event") == "agent.issuer_tainted" for e in running_agent.log_events())

    running_server.cli("authority", "x509", "revoke", old_id)
    # Still trusted: it syncs a new entry and serves it.
    register(running_server, running_agent, "/after-revoke", f"unix:uid:{os.getuid()}")
    with WorkloadApiClient(running_agent.socket_path, timeout=60) as client:
        svid = client.fetch_x509_context().default_svid
    assert str(svid.spiffe_id) == "spiffe://example.org/after-revoke"
    assert running_agent.ready_status() == (200, "ready\n")
