"""Four hosts on a private network: one server, three agents, workloads on each (root only).

The server and each agent run in their own network namespace (tests/integration/netns.py) and
talk over a bridge, as they would across machines. Two agents attest with join tokens, one
with x509pop. The same uid runs a workload on every host, so which identity it receives
depends only on the agent of its host. The scenario then shows, in order: each workload gets
only its own SVID; mTLS works between hosts; with the server's link cut workloads are still
served from the agents' caches; once the link is back, rotation resumes; evicting one agent
stops its workloads' renewals while the other hosts keep rotating.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.harness.agent_clients import pyspiffe, register
from devtools.harness.agent_process import AgentProcess, to_toml
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from devtools.harness.workload_follower import Follower, Record, workload_argv, workload_env
from insignia.keys import KeyType, generate_key
from tests.integration.netns import NetworkLab, network_lab
from tests.unit.attestors.pki import node_cert, pem, root_ca, write_node_files

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.integration]

TRUST_DOMAIN = "example.org"
WORKLOAD_UID = 41201  # the same uid on every host
SVID_TTL = 20  # seconds: rotation (at half life) happens several times during the test
EVENT_TIMEOUT = 60  # generous: two shared cores; every wait returns as soon as its event occurs
JOIN_TOKEN_HOSTS = ("host1", "host2")
X509POP_HOST = "host3"


@dataclass
class Node:
    """An agent host and the workload it runs."""

    host: str
    agent: AgentProcess
    workload_id: str = ""
    watcher: Follower | None = None

    def watch(self) -> Follower:
        assert self.watcher is not None
        return self.watcher


@dataclass
class Cluster:
    lab: NetworkLab
    server: ServerProcess
    nodes: dict[str, Node]


def _agent(workdir: Path, server: ServerProcess) -> AgentProcess:
    return AgentProcess(
        workdir,
        server.trust_domain,
        server.host,
        server.agent_api_port,
        server.attestation_port,
        server.bundle_path,
        # A short RPC deadline makes a failed renewal (server unreachable) show up quickly.
        extra_config={"sync": {"rpc_timeout": "3s"}},
    )


def _use_x509pop(agent: AgentProcess, key_path: Path, cert_path: Path) -> None:
    config = agent.config()
    config["node_attestor"] = {
        "x509pop": {"private_key_path": key_path, "certificate_path": cert_path}
    }
    agent.config_path.write_text(to_toml(config))


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        # Not pytest's tmp_path: under xdist its paths push the daemons' Unix socket paths
        # past the 108-byte limit of sun_path.
        tmp_path = Path(tempfile.mkdtemp(prefix="insignia-mn-"))
        stack.callback(shutil.rmtree, tmp_path, ignore_errors=True)
        lab = stack.enter_context(network_lab("server", *JOIN_TOKEN_HOSTS, X509POP_HOST))

        node_dir = tmp_path / "node-pki"
        node_dir.mkdir()
        ca = root_ca()
        node_key = generate_key(KeyType.EC_P256)
        key_path, cert_path = write_node_files(
            node_dir, node_key, node_cert(ca, node_key, cn=X509POP_HOST, dns=("host3.lab",))
        )
        ca_path = node_dir / "node-ca.pem"
        ca_path.write_bytes(pem(ca.certificate))

        server = ServerProcess(
            tmp_path / "server",
            TRUST_DOMAIN,
            extra_config={
                "agent_api": {"bind_address": lab["server"].address},
                "node_attestors": {"join_token": {}, "x509pop": {"ca_bundle_paths": [ca_path]}},
            },
        )
        stack.callback(server.stop)
        lab.call_in("server", server.start)

        nodes = {}
        for host in (*JOIN_TOKEN_HOSTS, X509POP_HOST):
            agent = _agent(tmp_path / host, server)
            stack.callback(agent.close)
            if host == X509POP_HOST:
                _use_x509pop(agent, key_path, cert_path)
                token = None
            else:
                token = server.join_token()
            lab.call_in(host, functools.partial(agent.start, token, wait=False))
            nodes[host] = Node(host, agent)
        for node in nodes.values():
            node.agent.wait_ready()
        yield Cluster(lab, server, nodes)
        for node in nodes.values():
            if node.watcher is not None:
                node.watcher.stop()


def _spawn_workload(lab: NetworkLab, node: Node, *args: str) -> Follower:
    argv = workload_argv(node.agent.socket_path, *args, uid=WORKLOAD_UID)
    proc = lab.spawn(
        node.host,
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=workload_env(WORKLOAD_UID),
    )
    return Follower(proc, f"{node.host} {args[0]}")


def _run_workload(lab: NetworkLab, node: Node, *args: str) -> dict[str, Any]:
    argv = workload_argv(node.agent.socket_path, *args, uid=WORKLOAD_UID)
    result = lab.run(node.host, argv, check=False, timeout=60, env=workload_env(WORKLOAD_UID))
    lines = result.stdout.strip().splitlines()
    assert lines, f"workload on {node.host} printed nothing: {result.stderr}"
    record: dict[str, Any] = json.loads(lines[-1])
    return record


def _serial(record: Record) -> str:
    serial: str = record["serials"][0]
    return serial


def _rotated_from(serial: str) -> Callable[[Record], bool]:
    """Matches a watch record whose default SVID is no longer `serial`."""
    return lambda r: "serials" in r and _serial(r) != serial


def _log_mark(agent: AgentProcess) -> int:
    return len(agent.log_events())


def _logged_since(agent: AgentProcess, mark: int, event: str) -> bool:
    return any(e.get("event") == event for e in agent.log_events()[mark:])


@pytest.mark.timeout(400)
def test_three_agents_across_hosts(cluster: Cluster) -> None:
    lab, server, nodes = cluster.lab, cluster.server, cluster.nodes

    # --- attestation: two join tokens, one x509pop, each agent on its own host ------------------
    agent_ids = {host: node.agent.agent_id for host, node in nodes.items()}
    assert len(set(agent_ids.values())) == 3
    for host in JOIN_TOKEN_HOSTS:
        assert "/insignia/agent/join_token/" in agent_ids[host]
    assert "/insignia/agent/x509pop/" in agent_ids[X509POP_HOST]

    for host, node in nodes.items():
        node.workload_id = f"spiffe://{TRUST_DOMAIN}/{host}/service"
        register(
            server,
            node.agent,
            f"/{host}/service",
            f"unix:uid:{WORKLOAD_UID}",
            extra=("--x509-svid-ttl", str(SVID_TTL)),
        )

    # --- each workload gets only its own SVID --------------------------------------------------
    # py-spiffe, the independent client, asks each host's agent as the same uid.
    for node in nodes.values():
        answer = pyspiffe(node.agent, "x509", uid=WORKLOAD_UID)
        assert answer.get("ids") == [node.workload_id], answer
    for node in nodes.values():
        node.watcher = _spawn_workload(lab, node, "watch")
        first = node.watch().wait_for(lambda r: "ids" in r, EVENT_TIMEOUT, "with an X509 context")
        assert first["ids"] == [node.workload_id]

    # --- mTLS between workloads on different hosts ------------------------------------------
    host1, host2, host3 = nodes["host1"], nodes["host2"], nodes["host3"]
    echo = _spawn_workload(lab, host1, "serve", lab["host1"].address, host2.workload_id)
    try:
        port = echo.wait_for(lambda r: "port" in r, EVENT_TIMEOUT, "with the echo port")["port"]
        target = (lab["host1"].address, str(port), host1.workload_id)
        answer = _run_workload(lab, host2, "call", *target)
        assert answer == {"reply": f"{host2.workload_id} hello", "peer": host1.workload_id}
        # host3's workload holds a valid SVID of the same trust domain, but is not authorized.
        # The TLS alert shows the refusal came from the handshake, not from the network.
        refused = _run_workload(lab, host3, "call", *target)
        assert "alert" in refused.get("error", ""), refused
        echo.wait_for(
            lambda r: f"peer {host3.workload_id} is not authorized" in r.get("text", ""),
            EVENT_TIMEOUT,
            "logging that it refused host3's workload",
        )
    finally:
        echo.stop()

    # --- the server's link is cut: workloads are served from the agents' caches --------------
    marks = {host: _log_mark(node.agent) for host, node in nodes.items()}
    lab.cut("server")
    for node in nodes.values():
        answer = pyspiffe(node.agent, "x509", uid=WORKLOAD_UID)
        assert answer.get("ids") == [node.workload_id], answer
    # Each agent tries to renew at half life and fails; its cache keeps serving meanwhile.
    stale: dict[str, tuple[str, int]] = {}
    for host, node in nodes.items():
        wait_for(
            functools.partial(_logged_since, node.agent, marks[host], "signer.unavailable"),
            EVENT_TIMEOUT,
            f"{host}'s agent to fail a renewal while the server is unreachable",
        )
        stale[host] = (_serial(node.watch().last()), len(node.watch().records))
        answer = pyspiffe(node.agent, "x509", uid=WORKLOAD_UID)
        assert answer.get("ids") == [node.workload_id], answer
        assert answer["serial"] == stale[host][0]

    # --- the link is back: rotation resumes on every host --------------------------------------
    lab.restore("server")
    for host, node in nodes.items():
        serial, index = stale[host]
        node.watch().wait_for(
            _rotated_from(serial),
            EVENT_TIMEOUT,
            "with a rotated SVID after the link came back",
            start=index,
        )

    # --- evicting host2's agent stops its renewals; the others keep rotating ------------------
    evicted = host2
    before = {host: len(node.watch().records) for host, node in nodes.items()}
    evicted_serial = _serial(evicted.watch().last())
    server.cli("agent", "evict", evicted.agent.agent_id)
    for node in (host1, host3):
        node.watch().wait_for(
            _rotated_from(_serial(node.watch().records[before[node.host] - 1])),
            EVENT_TIMEOUT,
            "with a rotated SVID after another agent was evicted",
            start=before[node.host],
        )
    # A join-token agent cannot attest again with a spent token: it stops, and its workload's
    # stream ends without a single renewal after the eviction.
    assert evicted.agent.process is not None
    exit_code = evicted.agent.process.wait(EVENT_TIMEOUT)
    assert exit_code != 0, evicted.agent.log_tail()
    assert "create a new join token" in evicted.agent.logs()
    final = evicted.watch().wait_for(lambda r: "error" in r, EVENT_TIMEOUT, "ending the stream")
    renewed = [
        r
        for r in evicted.watch().records[before["host2"] :]
        if "serials" in r and _serial(r) != evicted_serial
    ]
    assert renewed == [], (renewed, final)

    # Over the whole run, no workload ever received another host's identity.
    for node in nodes.values():
        seen = {i for r in node.watch().records for i in r.get("ids", ())}
        assert seen == {node.workload_id}, (node.host, seen)
