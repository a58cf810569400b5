"""The unauthenticated attestation port bounds what a peer can hold: time, size, streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from insignia_proto import agent_pb2, agent_pb2_grpc

from tests.integration.conftest import ServerFactory
from tests.integration.server_agent_client import attestation_channel
from tests.integration.server_fixtures import ServerProcess

pytestmark = pytest.mark.integration


def silent_attest(server: ServerProcess, release: threading.Event) -> Iterator[object]:
    """Open Attest and send nothing until `release` is set; yields the response stream."""

    def nothing() -> Iterator[agent_pb2.AttestRequest]:
        release.wait(60)
        return
        yield  # a generator that never produces a message

    with attestation_channel(server) as channel:
        stub = agent_pb2_grpc.AgentAPIStub(channel)
        yield stub.Attest(nothing(), timeout=60)


def test_a_silent_attestation_is_cut_off_at_the_deadline(server_factory: ServerFactory) -> None:
    server = server_factory(agent_api={"attestation_timeout": "1s"})
    release = threading.Event()
    try:
        for stream in silent_attest(server, release):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as cut:
                next(stream)  # type: ignore[call-overload]
            elapsed = time.monotonic() - started
    finally:
        release.set()
    assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "within 1s" in (cut.value.details() or "")
    assert elapsed < 15  # the server's 1 s deadline, not the client's 60 s


def test_streams_beyond_the_cap_are_refused(server_factory: ServerFactory) -> None:
    server = server_factory(agent_api={"max_concurrent_attestations": 1})
    release = threading.Event()
    try:
        for _held in silent_attest(server, release):
            with attestation_channel(server) as channel, pytest.raises(grpc.RpcError) as over:
                params = agent_pb2.AttestParams(attestor="join_token", payload=b"{}")
                request = agent_pb2.AttestRequest(params=params)
                # wait for the held stream to be counted by the server: retry until refused
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    stub = agent_pb2_grpc.AgentAPIStub(channel)
                    try:
                        list(stub.Attest(iter([request]), timeout=10))
                    except grpc.RpcError as exc:
                        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
    finally:
        release.set()
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_an_oversized_payload_is_refused(running_server: ServerProcess) -> None:
    server = running_server
    token = server.join_token()
    params = agent_pb2.AttestParams(attestor="join_token", payload=b"x" * (65 * 1024))
    with attestation_channel(server) as channel, pytest.raises(grpc.RpcError) as refused:
        stub = agent_pb2_grpc.AgentAPIStub(channel)
        list(stub.Attest(iter([agent_pb2.AttestRequest(params=params)]), timeout=30))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # nothing reached the attestor: the token is still good
    from tests.integration.server_agent_client import attest_join_token

    assert attest_join_token(server, token).agent_id == server.agent_id(token)
