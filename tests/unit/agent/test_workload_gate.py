"""The Workload API gate without sockets: lookup, attestation reuse, same-process refusals."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest

from insignia.agent.workloadapi.gate import (
    RECENT_ATTESTATION_TTL,
    ConnectionNotOwned,
    Refused,
    WorkloadAttestationFailed,
    WorkloadGate,
)
from insignia.daemon.peercred.credentials import (
    CallerTable,
    PeerCredentials,
    PidFd,
    process_executable,
    process_start_time,
)
from insignia.selectors import Selector

NAME = "insignia-" + "ab" * 16
SELECTORS = frozenset({Selector.parse("unix:uid:1000")})


@pytest.fixture
def me() -> Iterator[PeerCredentials]:
    """This very process as a caller: alive, so the same-process check passes."""
    pid = os.getpid()
    pidfd = PidFd(os.pidfd_open(pid))
    yield PeerCredentials(
        pid,
        os.geteuid(),
        os.getegid(),
        pidfd,
        process_start_time(pid),
        process_executable(pid),
        0,
    )
    pidfd.close()


class Attestor:
    """Counts attestations and answers with `SELECTORS` or the given failure."""

    def __init__(self, failure: WorkloadAttestationFailed | None = None) -> None:
        self.calls = 0
        self.failure = failure

    async def __call__(self, caller: PeerCredentials) -> frozenset[Selector]:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return SELECTORS


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _gate(caller: PeerCredentials, attest: Attestor, clock: Clock) -> tuple[WorkloadGate, str]:
    table = CallerTable()
    return WorkloadGate(table, attest, clock), table.register(NAME, caller)


def test_an_attestation_is_reused_briefly_then_renewed(me: PeerCredentials) -> None:
    attest, clock = Attestor(), Clock()
    gate, peer = _gate(me, attest, clock)
    first = asyncio.run(gate.admit(peer))
    assert first.selectors == SELECTORS and first.fresh and attest.calls == 1
    again = asyncio.run(gate.admit(peer))
    assert not again.fresh and attest.calls == 1
    clock.now += RECENT_ATTESTATION_TTL + 0.01
    assert asyncio.run(gate.admit(peer)).fresh and attest.calls == 2


def test_an_unknown_peer_is_unauthenticated(me: PeerCredentials) -> None:
    gate, _ = _gate(me, Attestor(), Clock())
    with pytest.raises(Refused) as info:
        asyncio.run(gate.admit("unix:"))
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_replaced_process_is_refused_even_from_the_reuse_cache(me: PeerCredentials) -> None:
    replaced = replace(me, start_time=me.start_time + 1)
    gate, peer = _gate(replaced, Attestor(), Clock())
    with pytest.raises(Refused) as info:
        asyncio.run(gate.admit(peer))
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.reason == "process_replaced"
    assert "during attestation" in info.value.message


def test_attestation_failure_is_unavailable_and_a_shared_connection_denied(
    me: PeerCredentials,
) -> None:
    timeout = WorkloadAttestationFailed("timeout", "no selectors within 5s")
    gate, peer = _gate(me, Attestor(timeout), Clock())
    with pytest.raises(Refused) as info:
        asyncio.run(gate.admit(peer))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.reason == "timeout"
    assert info.value.message == "workload attestation failed: no selectors within 5s"

    gate, peer = _gate(me, Attestor(ConnectionNotOwned("held by process 7")), Clock())
    with pytest.raises(Refused) as info:
        asyncio.run(gate.admit(peer))
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.reason == "connection_not_owned"


def test_a_failed_attestation_is_not_remembered(me: PeerCredentials) -> None:
    attest, clock = Attestor(WorkloadAttestationFailed("timeout", "slow")), Clock()
    gate, peer = _gate(me, attest, clock)
    for _ in range(2):
        with pytest.raises(Refused):
            asyncio.run(gate.admit(peer))
    assert attest.calls == 2


def test_a_closed_connection_leaves_nothing_in_the_gate(me: PeerCredentials) -> None:
    table = CallerTable()
    gate = WorkloadGate(table, Attestor(), Clock())
    caller = replace(me)  # this test's own object: only the table and the gate may hold it
    peer = table.register(NAME, caller)
    assert asyncio.run(gate.admit(peer)).fresh
    table.remove(peer)  # what the front does when the connection ends
    ref = weakref.ref(caller)
    del caller
    gc.collect()
    assert ref() is None, "the gate still holds a closed connection's caller"


def test_a_connection_closed_during_its_attestation_is_not_remembered(
    me: PeerCredentials,
) -> None:
    table = CallerTable()
    caller = replace(me)
    peer = table.register(NAME, caller)

    async def attest_then_close(_caller: PeerCredentials) -> frozenset[Selector]:
        table.remove(peer)
        return SELECTORS

    gate = WorkloadGate(table, attest_then_close, Clock())
    assert asyncio.run(gate.admit(peer)).selectors == SELECTORS
    ref = weakref.ref(caller)
    del caller
    gc.collect()
    assert ref() is None, "the gate remembered a connection that had already closed"
