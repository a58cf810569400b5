"""The trio Workload API client against a real grpc.aio Workload API server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import trio

from insignia.backoff import Backoff
from insignia.bundle import BundleSet
from insignia.jwtsvid import parse_and_validate
from insignia.spiffeid import SpiffeId, TrustDomain
from insignia.workloadapi import (
    TrioWorkloadApiClient,
    WorkloadApiError,
    X509Context,
    resolve_socket,
)
from tests.unit.workload_api_server import TD, Authority, WorkloadApiServer

FAST = Backoff(initial=0.01, maximum=0.05)
WEB = "spiffe://example.org/web"


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[WorkloadApiServer]:
    server = WorkloadApiServer(tmp_path / "api.sock")
    await server.start()
    try:
        yield server
    finally:
        await trio.to_thread.run_sync(server.close)


def client_for(agent: WorkloadApiServer) -> TrioWorkloadApiClient:
    return TrioWorkloadApiClient(f"unix://{agent.socket_path}", backoff=FAST)


class Recorder:
    """Collects a watch's updates and errors; tests wait for a count with a deadline."""

    def __init__(self) -> None:
        self.updates: list[object] = []
        self.errors: list[WorkloadApiError] = []
        self._changed = trio.Event()

    def update(self, item: object) -> None:
        self.updates.append(item)
        self._poke()

    def error(self, error: WorkloadApiError) -> None:
        self.errors.append(error)
        self._poke()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate: Callable[[], bool], within: float = 10) -> None:
        with trio.fail_after(within):
            while not predicate():
                await self._changed.wait()


def serial(item: object) -> int:
    assert isinstance(item, X509Context)
    return item.default_svid.leaf.serial_number


async def test_fetches_svids_jwts_and_bundles(agent: WorkloadApiServer) -> None:
    svid = agent.authority.svid("/web")
    await agent.serve(
        agent.authority.x509_response(svid), agent.authority.jwt_bundles_response(), WEB
    )
    client = client_for(agent)

    context = await client.fetch_x509_context()
    assert context.default_svid.spiffe_id == svid.spiffe_id
    assert context.default_svid.leaf == svid.leaf
    bundle = context.bundles.get_bundle_for_trust_domain(TD)
    assert bundle is not None and bundle.x509_authorities == (agent.authority.ca.certificate,)

    token = await client.fetch_jwt_svid(["orders", "billing"])
    assert str(token.spiffe_id) == WEB
    jwt_bundles = await client.fetch_jwt_bundles()
    validated = parse_and_validate(token.token, jwt_bundles, "billing")
    assert validated.audience == ("orders", "billing")

    spiffe_id, claims = await client.validate_jwt_svid(token.token, "orders")
    assert spiffe_id == SpiffeId.parse(WEB) and claims["aud"] == ["orders", "billing"]
    with pytest.raises(WorkloadApiError) as refused:
        await client.validate_jwt_svid(token.token, "someone-else")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_fetch_without_identity_says_so(agent: WorkloadApiServer) -> None:
    with pytest.raises(WorkloadApiError) as caught:
        await client_for(agent).fetch_x509_context()
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "no identity issued" in caught.value.details


async def test_watch_sends_the_first_context_then_each_rotation(agent: WorkloadApiServer) -> None:
    first, second = agent.authority.svid("/web"), agent.authority.svid("/web")
    await agent.serve(agent.authority.x509_response(first))
    seen = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_for(agent).watch_x509_contexts, seen.update)
        await seen.until(lambda: len(seen.updates) == 1)
        await agent.serve(agent.authority.x509_response(second))
        await seen.until(lambda: len(seen.updates) == 2)
        nursery.cancel_scope.cancel()
    assert [serial(u) for u in seen.updates] == [
        first.leaf.serial_number,
        second.leaf.serial_number,
    ]
    assert agent.calls["FetchX509SVID"] == 1  # one stream carried both


async def test_watch_waits_for_an_identity_to_be_issued(agent: WorkloadApiServer) -> None:
    seen = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: client_for(agent).watch_x509_contexts(seen.update, on_error=seen.error)
        )
        await seen.until(lambda: len(seen.errors) >= 3)  # retried, not given up
        assert {e.code for e in seen.errors} == {grpc.StatusCode.PERMISSION_DENIED}
        svid = agent.authority.svid("/late")
        await agent.serve(agent.authority.x509_response(svid))
        await seen.until(lambda: len(seen.updates) == 1)
        nursery.cancel_scope.cancel()
    assert serial(seen.updates[0]) == svid.leaf.serial_number


async def test_watch_reconnects_after_the_agent_restarts(agent: WorkloadApiServer) -> None:
    before, after = agent.authority.svid("/web"), agent.authority.svid("/web")
    await agent.serve(agent.authority.x509_response(before))
    seen = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: client_for(agent).watch_x509_contexts(seen.update, on_error=seen.error)
        )
        await seen.until(lambda: len(seen.updates) == 1)
        await agent.stop()
        await seen.until(lambda: len(seen.errors) >= 2)  # the stream broke, redials fail
        assert all(e.code == grpc.StatusCode.UNAVAILABLE for e in seen.errors), seen.errors
        await agent.serve(agent.authority.x509_response(after))
        await agent.start()
        await seen.until(lambda: len(seen.updates) == 2)
        nursery.cancel_scope.cancel()
    assert serial(seen.updates[1]) == after.leaf.serial_number


async def test_watch_reopens_a_stream_the_agent_ended(agent: WorkloadApiServer) -> None:
    await agent.serve(agent.authority.x509_response(agent.authority.svid("/web")))
    seen = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: client_for(agent).watch_x509_contexts(seen.update, on_error=seen.error)
        )
        await seen.until(lambda: len(seen.updates) == 1)
        await agent.end_streams()
        await seen.until(lambda: len(seen.updates) == 2)
        nursery.cancel_scope.cancel()
    assert seen.errors[0].code == grpc.StatusCode.UNAVAILABLE, seen.errors
    assert agent.calls["FetchX509SVID"] == 2


async def test_watch_stops_on_a_request_the_agent_will_never_accept(
    agent: WorkloadApiServer,
) -> None:
    await agent.refuse(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
    with trio.fail_after(10), pytest.raises(WorkloadApiError) as caught:
        await client_for(agent).watch_jwt_bundles(lambda _: None)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert agent.calls["FetchJWTBundles"] == 1


async def test_cancelling_a_watch_cancels_the_stream_at_the_agent(
    agent: WorkloadApiServer,
) -> None:
    await agent.serve(None, agent.authority.jwt_bundles_response())
    seen = Recorder()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_for(agent).watch_jwt_bundles, seen.update)
            await seen.until(lambda: len(seen.updates) == 1)
            assert await agent.count_open_streams() == 1
            nursery.cancel_scope.cancel()
        await agent.wait_no_open_streams()
    update = seen.updates[0]
    assert isinstance(update, BundleSet)
    bundle = update.get_bundle_for_trust_domain(TD)
    assert bundle is not None and list(bundle.jwt_authorities) == ["k1"]


async def test_x509_bundles_are_fetched_and_watched_with_federated_ones(
    agent: WorkloadApiServer,
) -> None:
    partner = Authority(TrustDomain("partner.org"))
    authority = agent.authority
    await agent.serve(None, x509_bundles=authority.x509_bundles_response())
    client = client_for(agent)
    assert [b.trust_domain for b in await client.fetch_x509_bundles()] == [TD]
    seen = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.watch_x509_bundles, seen.update)
        await seen.until(lambda: len(seen.updates) == 1)
        await agent.serve(None, x509_bundles=authority.x509_bundles_response(partner.bundle))
        await seen.until(lambda: len(seen.updates) == 2)
        nursery.cancel_scope.cancel()
    latest = seen.updates[1]
    assert isinstance(latest, BundleSet)
    federated = latest.get_bundle_for_trust_domain(partner.trust_domain)
    assert federated is not None
    assert federated.x509_authorities == (partner.ca.certificate,)


def test_socket_comes_from_a_path_an_address_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert resolve_socket(Path("/run/a.sock")) == Path("/run/a.sock")
    assert resolve_socket("unix:///run/b.sock") == Path("/run/b.sock")
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "unix:/run/c.sock")
    assert resolve_socket(None) == Path("/run/c.sock")
