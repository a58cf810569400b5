"""Real Envoys taking their certificates and validation context from the agent over SDS.

curl-like client -> Envoy A (plain HTTP in, mTLS out) -> Envoy B (mTLS in, SPIFFE validator,
only A's SPIFFE ID) -> a small HTTP backend. Each Envoy runs under its own uid with its own
entry and reaches the agent through a pipe address to the Workload API socket. A last Envoy,
misconfigured on purpose, NACKs what it gets, and the agent logs Envoy's error detail.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from devtools.harness.agent_clients import UID_A, UID_B, register
from devtools.harness.agent_process import AgentProcess
from devtools.harness.envoy_process import (
    ApiType,
    EnvoyProcess,
    client_bootstrap,
    server_bootstrap,
)
from devtools.harness.ports import free_port
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.slow]

UID_C = 41003
FRONT = "spiffe://example.org/front"
BACK = "spiffe://example.org/back"
DAY = ("--x509-svid-ttl", "86400")  # only a taint, not the schedule, rotates them here


def get(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Mesh:
    def __init__(self, tmp_path: Path, agent: AgentProcess, backend: int, api: ApiType) -> None:
        sock = agent.socket_path
        self.b_port, self.a_port, self.c_port = free_port(), free_port(), free_port()
        self.b = EnvoyProcess(
            tmp_path / "envoy-b",
            server_bootstrap(sock, self.b_port, free_port(), FRONT, backend, api),
            uid=UID_B,
        )
        self.a = EnvoyProcess(
            tmp_path / "envoy-a",
            client_bootstrap(sock, self.a_port, free_port(), self.b_port, BACK, api),
            uid=UID_A,
        )
        self.c = EnvoyProcess(
            tmp_path / "envoy-c",
            client_bootstrap(sock, self.c_port, free_port(), self.b_port, BACK, api),
            uid=UID_C,
        )
        self.all = (self.b, self.a, self.c)

    def stop(self) -> None:
        for envoy in self.all:
            envoy.stop()


@pytest.fixture(params=["GRPC", "DELTA_GRPC"])
def mesh(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    running_server: ServerProcess,
    running_agent: AgentProcess,
    http_backend: int,
) -> Iterator[Mesh]:
    for path, uid in (("/front", UID_A), ("/back", UID_B), ("/intruder", UID_C)):
        register(running_server, running_agent, path, f"unix:uid:{uid}", extra=DAY)
    mesh = Mesh(tmp_path, running_agent, http_backend, request.param)
    try:
        for envoy in mesh.all:
            envoy.start()
        yield mesh
    finally:
        mesh.stop()


def test_two_envoys_speak_mtls_with_sds_certificates_and_refuse_a_third(mesh: Mesh) -> None:
    assert get(mesh.a_port) == (200, "backend\n")
    status, body = get(mesh.c_port)  # C's SVID is /intruder: B's SAN match refuses it
    assert status == 503 and "remote connection failure" in body


def test_a_taint_reaches_every_envoy_and_requests_keep_succeeding(
    mesh: Mesh, running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    before = [(envoy, envoy.cert_serials()) for envoy in (mesh.a, mesh.b)]
    assert all(serials for _, serials in before)
    failures: list[object] = []
    done = threading.Event()
    sent = 0

    def keep_asking() -> None:
        nonlocal sent
        while not done.is_set():
            answer = get(mesh.a_port)
            sent += 1
            if answer != (200, "backend\n"):
                failures.append(answer)

    thread = threading.Thread(target=keep_asking, daemon=True)
    thread.start()
    old = running_server.cli_json("authority", "x509", "show")
    old_id = next(a for a in old["authorities"] if a["state"] == "active")["authority_id"]
    running_server.cli("authority", "x509", "prepare")
    running_server.cli("authority", "x509", "activate")
    tainted_at = time.monotonic()
    running_server.cli("authority", "x509", "taint", old_id)
    for envoy, serials in before:
        wait_for(
            lambda: not (envoy.cert_serials() & serials),  # noqa: B023 (waited for at once)
            30,
            f"envoy on admin port {envoy.admin_port} to hold a new certificate",
        )
    took = time.monotonic() - tainted_at
    wait_for(lambda: sent >= 5, 30, "requests during the rotation")
    done.set()
    thread.join(30)
    print(f"taint -> both Envoys hold new certificates: {took:.2f}s")
    assert failures == []
    assert get(mesh.a_port) == (200, "backend\n")


def test_fetch_secrets_answers_only_the_callers_own_identities(
    running_server: ServerProcess, running_agent: AgentProcess
) -> None:
    register(running_server, running_agent, "/mine", f"unix:uid:{os.getuid()}")
    register(running_server, running_agent, "/front", f"unix:uid:{UID_A}")
    with grpc.insecure_channel(f"unix:{running_agent.socket_path}") as channel:
        fetch = channel.unary_unary(
            "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
            discovery_pb2.DiscoveryRequest.SerializeToString,
            discovery_pb2.DiscoveryResponse.FromString,
        )
        names = ["default", FRONT, "spiffe://example.org/mine", "nonsense"]
        response = fetch(discovery_pb2.DiscoveryRequest(resource_names=names), timeout=30)
    secrets = []
    for packed in response.resources:
        secret = secret_pb2.Secret()
        assert packed.Unpack(secret)
        secrets.append(secret.name)
    assert secrets == ["default", "spiffe://example.org/mine"]  # not UID_A's /front


def sds_stat(envoy: EnvoyProcess, name: str) -> int:
    """One of Envoy's own counters for its "ROOTCA" secret (`sds.ROOTCA.<name>`, /stats)."""
    for line in envoy.admin("/stats?filter=^sds\\.").splitlines():
        key, _, value = line.partition(": ")
        if key == f"sds.ROOTCA.{name}":
            return int(value)
    raise AssertionError(f"no sds.ROOTCA.{name} in Envoy's stats")


@pytest.mark.parametrize("api", ["GRPC", "DELTA_GRPC"])
def test_envoys_nack_is_logged_with_its_detail_once_per_change(
    tmp_path: Path, running_server: ServerProcess, running_agent: AgentProcess, api: ApiType
) -> None:
    """Envoy told to take its certificate from "ROOTCA" gets a validation context and
    rejects it: a NACK carrying Envoy's own error, which the agent logs. The next change of
    that secret is sent, and rejected, once more. (Envoy itself ignores an identical
    re-push, so the Go client's quiet window in test_interop_go_sds.py is what proves the
    agent sends none.)"""
    register(running_server, running_agent, "/back", f"unix:uid:{UID_B}")
    bootstrap = server_bootstrap(
        running_agent.socket_path, free_port(), free_port(), FRONT, None, api, svid_name="ROOTCA"
    )
    envoy = EnvoyProcess(tmp_path / "envoy", bootstrap, uid=UID_B)

    def nacks() -> list[str]:
        events = running_agent.log_events()
        return [str(e["error"]) for e in events if e.get("event") == "sds.nack"]

    try:
        envoy.start()
        wait_for(lambda: sds_stat(envoy, "update_rejected") == 1, 30, "Envoy's rejection")
        wait_for(lambda: nacks() != [], 30, "Envoy's NACK in the agent log")
        rejected = envoy.log().split("Secret rejected: ", 1)[1].splitlines()[0]
        assert "private key" in rejected
        assert nacks() == [rejected]  # Envoy's own words, as its log has them
        running_server.cli("authority", "x509", "prepare")  # ROOTCA changes: one more push
        wait_for(lambda: sds_stat(envoy, "update_rejected") >= 2, 30, "the next rejection")
        wait_for(lambda: len(nacks()) >= 2, 30, "the second NACK in the agent log")
        assert sds_stat(envoy, "update_rejected") == 2
        assert len(nacks()) == 2
    finally:
        envoy.stop()
