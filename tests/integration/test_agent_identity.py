"""The agent's own identity: persisted across restarts, and what happens on eviction."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from devtools.harness.agent_clients import (
    agent_cli,
    register,
)
from devtools.harness.agent_process import AgentProcess
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from insignia.agent.cache.persisted import CACHE_FILE
from insignia.agent.identity.node_attestation import BUNDLE_FILE, IDENTITY_FILE
from insignia.keys import KeyType, generate_key
from insignia.server.ca.x509ca import build_root_ca
from insignia.spiffeid import TrustDomain
from tests.integration.conftest import AgentFactory, ServerFactory
from tests.integration.test_server_x509pop import node_cert

pytestmark = [pytest.mark.integration]


def _events(agent: AgentProcess, name: str) -> list[dict[str, object]]:
    return [e for e in agent.log_events() if e.get("event") == name]


def test_restart_with_a_valid_svid_needs_no_new_token(running_agent: AgentProcess) -> None:
    agent_id = running_agent.agent_id
    assert stat.S_IMODE(running_agent.data_dir.stat().st_mode) == 0o700
    for path in running_agent.data_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert running_agent.stop() == 0

    # The used token is gone: attesting again would fail, so a ready agent proves it resumed.
    (running_agent.workdir / "join-token").write_text("")
    running_agent.start()
    assert running_agent.agent_id == agent_id
    assert _events(running_agent, "agent.resumed")
    assert len(_events(running_agent, "agent.attested")) == 1  # only the first run attested


def test_an_upgraded_join_token_agent_adopts_its_pre_upgrade_files(
    running_agent: AgentProcess,
) -> None:
    """Agents released before the sealed files kept agent_svid.pem, agent_state.json and
    bundle.spiffe.json: after the upgrade the agent resumes from them instead of needing a
    new join token, and they are re-written as sealed files."""
    agent_id = running_agent.agent_id
    identity = running_agent.persisted_identity()
    assert running_agent.stop() == 0
    data_dir = running_agent.data_dir
    bundle = running_agent.persisted_bundle()
    for name in (IDENTITY_FILE, BUNDLE_FILE, CACHE_FILE):
        (data_dir / name).unlink(missing_ok=True)
    (data_dir / "agent_svid.pem").write_text(str(identity["svid_pem"]))
    (data_dir / "agent_state.json").write_text(
        json.dumps({"spiffe_id": agent_id, "reattestable": False})
    )
    (data_dir / "bundle.spiffe.json").write_text(bundle)

    (running_agent.workdir / "join-token").write_text("")  # the used token is gone
    running_agent.start()
    assert running_agent.agent_id == agent_id
    assert _events(running_agent, "agent.identity_files_upgraded")
    assert _events(running_agent, "agent.resumed")
    assert len(_events(running_agent, "agent.attested")) == 1  # only the first run attested
    assert not (data_dir / "agent_svid.pem").exists()
    assert running_agent.persisted_identity()["svid_pem"] == identity["svid_pem"]


def test_an_evicted_join_token_agent_asks_for_a_new_token(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    old_id = running_agent.agent_id
    running_server.cli("agent", "evict", old_id)
    assert running_agent.wait_exit(60) == 1
    assert "create a new join token" in running_agent.logs()
    assert "Traceback" not in running_agent.logs()  # one clear line, not a crash
    assert not (running_agent.data_dir / IDENTITY_FILE).exists()

    running_agent.start(running_server.join_token())
    assert running_agent.agent_id != old_id


def test_a_refused_token_fails_fast_with_the_reason(
    running_server: ServerProcess, agent_factory: AgentFactory
) -> None:
    agent = agent_factory(start=False)
    agent.start("00000000-0000-0000-0000-000000000000", wait=False)
    assert agent.wait_exit(60) == 1
    assert "join token" in agent.logs() and "restart with --join-token" in agent.logs()


def test_an_evicted_x509pop_agent_attests_again_by_itself(
    server_factory: ServerFactory, agent_factory: AgentFactory, tmp_path: Path
) -> None:
    node_ca = build_root_ca(
        TrustDomain.parse("nodes.example"), generate_key(KeyType.EC_P256), timedelta(hours=1)
    )
    (tmp_path / "node-ca.pem").write_bytes(node_ca.certificate.public_bytes(Encoding.PEM))
    server = server_factory(
        name="popserver",
        node_attestors={"x509pop": {"ca_bundle_paths": [str(tmp_path / "node-ca.pem")]}},
    )
    node = node_cert(node_ca, tmp_path / "node", "node-1")
    agent = agent_factory(
        server=server,
        node_attestor={
            "x509pop": {
                "private_key_path": str(node.private_key_path),
                "certificate_path": str(node.certificate_path),
            }
        },
    )
    agent_id = agent.agent_id
    assert agent_id.startswith("spiffe://example.org/insignia/agent/x509pop/")
    server.cli("agent", "evict", agent_id)

    def attested_twice() -> bool:
        return len(_events(agent, "agent.attested")) == 2

    wait_for(attested_twice, 60, "the agent to attest again after eviction")
    assert _events(agent, "agent.evicted_reattesting")
    assert agent.process is not None and agent.process.poll() is None
    agent.wait_ready(30)
    assert agent.agent_id == agent_id


def test_the_agent_renews_its_own_svid_and_keeps_working(
    server_factory: ServerFactory, agent_factory: AgentFactory
) -> None:
    server = server_factory(name="shortagent", agent_svid_ttl="20s")
    agent = agent_factory(server=server)
    first_serial = _agent_serial(agent)

    def renewed_twice() -> bool:
        return len(_events(agent, "agent.renewed")) >= 2

    wait_for(renewed_twice, 90, "two agent SVID renewals")
    assert _agent_serial(agent) != first_serial
    # Still an agent the server accepts: a new entry reaches it and is served.
    register(server, agent, "/after-renewal", f"unix:uid:{os.getuid()}")
    fetched = agent_cli("api", "fetch", "x509", "--socket", str(agent.socket_path))
    assert "spiffe://example.org/after-renewal" in fetched.stdout, fetched.stderr


def _agent_serial(agent: AgentProcess) -> int:
    pem = str(agent.persisted_identity()["svid_pem"]).encode()
    return x509.load_pem_x509_certificates(pem)[0].serial_number


def test_a_join_token_on_the_command_line_is_warned_about(agent_factory: AgentFactory) -> None:
    agent = agent_factory(start=False)
    done = agent_cli(
        "run", "--config", str(agent.config_path), "--join-token", "00000000-0000-0000-0000-0"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "agent.join_token_on_command_line" in done.stdout + done.stderr
    assert "token_file" in done.stdout + done.stderr
