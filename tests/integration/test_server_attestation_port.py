"""The unauthenticated attestation port bounds what a peer can hold: time, size, streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
from insignia_proto import agent_pb2, agent_pb2_grpc

from devtools.harness.agent_api_client import attest_join_token, attestation_channel
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration


@contextmanager
def silent_attest(server: ServerProcess) -> Iterator[Iterator[agent_pb2.AttestResponse]]:
    """An open Attest stream on which the client sends nothing (until the block ends)."""
    release = threading.Event()

    def nothing() -> Iterator[agent_pb2.AttestRequest]:
        release.wait(60)
        yield from ()

    with attestation_channel(server) as channel:
        try:
            yield agent_pb2_grpc.AgentAPIStub(channel).Attest(nothing(), timeout=60)
        finally:
            release.set()


def attest_params(server: ServerProcess, payload: bytes) -> grpc.RpcError | None:
    """One Attest carrying only params; the error it ended with (None: it succeeded)."""
    request = agent_pb2.AttestRequest(
        params=agent_pb2.AttestParams(attestor="join_token", payload=payload)
    )
    with attestation_channel(server) as channel:
        try:
            list(agent_pb2_grpc.AgentAPIStub(channel).Attest(iter([request]), timeout=30))
        except grpc.RpcError as exc:
            return exc
    return None


def test_a_silent_attestation_is_cut_off_at_the_deadline(server_factory: ServerFactory) -> None:
    server = server_factory(agent_api={"attestation_timeout": "1s"})
    with silent_attest(server) as stream, pytest.raises(grpc.RpcError) as cut:
        started = time.monotonic()
        next(stream)
    assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "within 1s" in (cut.value.details() or "")
    assert time.monotonic() - started < 15  # the server's 1 s deadline, not the client's 60 s


def test_streams_beyond_the_cap_are_refused(server_factory: ServerFactory) -> None:
    server = server_factory(agent_api={"max_concurrent_attestations": 1})
    with silent_attest(server) as _held:  # unreferenced, grpc would cancel the call

        def refusal() -> str | None:
            """The RESOURCE_EXHAUSTED details ("" is falsy, so wait_for keeps polling)."""
            error = attest_params(server, b"{}")
            ok = error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return (error.details() or "?") if ok and error is not None else None

        details = wait_for(refusal, 15, "a second attestation to be refused")
    assert "max_concurrent_attestations" in details


def test_an_oversized_payload_is_refused(running_server: ServerProcess) -> None:
    server = running_server
    token = server.join_token()
    error = attest_params(server, b"x" * (65 * 1024))
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # it never reached the attestor: the token is still good
    assert attest_join_token(server, token).agent_id == server.agent_id(token)
