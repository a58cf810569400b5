"""The live Workload API source: readiness, rotation into mTLS, JWT checks, the thread façade."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trio

from insignia.authorize import NotAuthorized, one_of
from insignia.backoff import Backoff
from insignia.bundle import Bundle, BundleSet
from insignia.jwt_http import authorization_header, validate_authorization
from insignia.jwtsvid import AudienceMismatch
from insignia.sources import NoX509Svid, X509Source
from insignia.spiffeid import TrustDomain
from insignia.spiffetls import TlsStream, client_context, server_context
from insignia.workloadapi import (
    SourceNotReady,
    ThreadedX509Source,
    TrioWorkloadApiClient,
    WorkloadApiError,
    WorkloadX509Source,
    merge_bundles,
    open_x509_source,
)
from insignia.x509svid import X509Svid
from tests.unit.workload_api_server import TD, Authority, WorkloadApiServer

FAST = Backoff(initial=0.01, maximum=0.05)
A_ID = "spiffe://example.org/service-a"
B_ID = "spiffe://example.org/service-b"


async def start_agent(path: Path, authority: Authority) -> WorkloadApiServer:
    server = WorkloadApiServer(path, authority)
    await server.start()
    return server


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[tuple[WorkloadApiServer, WorkloadApiServer]]:
    """Two Workload API endpoints of one trust domain: the views of workloads A and B."""
    authority = Authority()
    a = await start_agent(tmp_path / "a.sock", authority)
    b = await start_agent(tmp_path / "b.sock", authority)
    for server, spiffe_id in ((a, A_ID), (b, B_ID)):
        svid = authority.svid(spiffe_id.removeprefix(TD.id_string()))
        await server.serve(
            authority.x509_response(svid), authority.jwt_bundles_response(), spiffe_id
        )
    try:
        yield a, b
    finally:
        for server in (a, b):
            await trio.to_thread.run_sync(server.close)


async def echo_peer_id(stream: TlsStream) -> None:
    await stream.receive_some()
    await stream.send_all(str(stream.peer_id).encode())


async def handshake(
    server_source: X509Source, client_source: X509Source, allowed: str
) -> tuple[str, int]:
    """One mTLS exchange: what the server saw as the client's ID, and the server's serial.

    A refused client raises trio.BrokenResourceError (with TLS 1.3 the client learns of it
    from the server's alert on its first read)."""
    server_tls = server_context(server_source, authorize=one_of(allowed))
    client_tls = client_context(client_source, authorize=one_of(A_ID))

    async def exchange(port: int) -> tuple[str, int]:
        async with await client_tls.connect_tcp("127.0.0.1", port) as stream:
            await stream.send_all(b"who am I?")
            seen = (await stream.receive_some()).decode()
            leaf = stream.connection.get_peer_certificate(as_cryptography=True)
        assert leaf is not None
        return seen, leaf.serial_number

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, server_tls.serve(echo_peer_id), 0)
        try:
            result: tuple[str, int] | trio.BrokenResourceError = await exchange(
                listeners[0].socket.getsockname()[1]
            )
        except trio.BrokenResourceError as exc:
            result = exc
        nursery.cancel_scope.cancel()
    if isinstance(result, trio.BrokenResourceError):
        raise result
    return result


async def test_mtls_between_two_live_sources_follows_rotation(
    agents: tuple[WorkloadApiServer, WorkloadApiServer],
) -> None:
    a, b = agents
    async with (
        open_x509_source(a.socket_path, backoff=FAST) as source_a,
        open_x509_source(f"unix://{b.socket_path}", backoff=FAST) as source_b,
    ):
        assert str(source_a.get_x509_svid().spiffe_id) == A_ID
        seen, first_serial = await handshake(source_a, source_b, B_ID)
        assert seen == B_ID
        assert first_serial == source_a.get_x509_svid().leaf.serial_number

        rotated = a.authority.svid("/service-a")
        await a.serve(a.authority.x509_response(rotated), a.authority.jwt_bundles_response())
        with trio.fail_after(10):
            while source_a.get_x509_svid().leaf != rotated.leaf:
                await source_a.wait_for_update()
        _, second_serial = await handshake(source_a, source_b, B_ID)
        assert second_serial == rotated.leaf.serial_number != first_serial

        # A refuses B when its policy names someone else.
        with pytest.raises(trio.BrokenResourceError, match="alert"):
            await handshake(source_a, source_b, "spiffe://example.org/other")


async def test_bundles_carry_x509_and_jwt_authorities_for_token_checks(
    agents: tuple[WorkloadApiServer, WorkloadApiServer],
) -> None:
    a, b = agents
    token = (await TrioWorkloadApiClient(b.socket_path).fetch_jwt_svid(["service-a"])).token
    async with open_x509_source(a.socket_path, backoff=FAST) as source:
        bundle = source.get_bundle_for_trust_domain(TD)
        assert bundle is not None
        assert bundle.x509_authorities == (a.authority.ca.certificate,)
        assert list(bundle.jwt_authorities) == [a.authority.jwt_kid]
        header = authorization_header(token)
        svid = validate_authorization(header, source, "service-a", authorize=one_of(B_ID))
        assert str(svid.spiffe_id) == B_ID
        with pytest.raises(AudienceMismatch):
            validate_authorization(header, source, "service-c")
        with pytest.raises(NotAuthorized):
            validate_authorization(header, source, "service-a", authorize=one_of(A_ID))


async def test_not_ready_in_time_says_what_is_missing_and_why(tmp_path: Path) -> None:
    agent = await start_agent(tmp_path / "api.sock", Authority())
    try:
        with pytest.raises(SourceNotReady) as caught:
            async with open_x509_source(agent.socket_path, ready_timeout=0.5, backoff=FAST):
                raise AssertionError("must not be reached")
    finally:
        await trio.to_thread.run_sync(agent.close)
    message = str(caught.value)
    assert "X.509 context or JWT bundles" in message
    assert "PERMISSION_DENIED: no identity issued" in message
    assert caught.value.last_error is not None
    assert caught.value.last_error.code == grpc.StatusCode.PERMISSION_DENIED


async def test_becomes_ready_when_the_identity_is_issued(tmp_path: Path) -> None:
    agent = await start_agent(tmp_path / "api.sock", Authority())
    source = WorkloadX509Source(TrioWorkloadApiClient(agent.socket_path, backoff=FAST))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source.run)
            with pytest.raises(NoX509Svid):
                source.get_x509_svid()
            assert source.missing() == ("X.509 context", "JWT bundles")
            svid = agent.authority.svid("/late")
            await agent.serve(
                agent.authority.x509_response(svid), agent.authority.jwt_bundles_response()
            )
            with trio.fail_after(10):
                await source.wait_ready()
            assert source.get_x509_svid().leaf == svid.leaf
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(agent.close)


async def test_picker_chooses_among_several_svids(tmp_path: Path) -> None:
    authority = Authority()
    agent = await start_agent(tmp_path / "api.sock", authority)
    first, second = authority.svid("/one"), authority.svid("/two")
    await agent.serve(authority.x509_response(first, second))

    def by_path(svids: tuple[X509Svid, ...]) -> X509Svid:
        return next(s for s in svids if s.spiffe_id.path == "/two")

    try:
        async with open_x509_source(agent.socket_path, jwt_bundles=False, picker=by_path) as source:
            assert source.get_x509_svid().spiffe_id == second.spiffe_id
            assert source.x509_context is not None and len(source.x509_context.svids) == 2
    finally:
        await trio.to_thread.run_sync(agent.close)


async def test_threaded_source_serves_blocking_code(
    agents: tuple[WorkloadApiServer, WorkloadApiServer],
) -> None:
    a, _ = agents

    def blocking_user() -> tuple[str, bool]:
        with ThreadedX509Source(a.socket_path, backoff=FAST) as source:
            svid = source.get_x509_svid()
            bundle = source.get_bundle_for_trust_domain(TD)
        with pytest.raises(RuntimeError, match="closed"):
            source.get_x509_svid()
        return str(svid.spiffe_id), bundle is not None and bool(bundle.jwt_authorities)

    assert await trio.to_thread.run_sync(blocking_user) == (A_ID, True)


async def test_threaded_source_raises_the_startup_failure(tmp_path: Path) -> None:
    agent = await start_agent(tmp_path / "api.sock", Authority())
    await agent.refuse(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")

    def blocking_user() -> None:
        ThreadedX509Source(agent.socket_path, ready_timeout=10, backoff=FAST)

    try:
        with pytest.raises(WorkloadApiError, match="security header"):
            await trio.to_thread.run_sync(blocking_user)
    finally:
        await trio.to_thread.run_sync(agent.close)


def test_merge_joins_each_trust_domain_s_two_halves() -> None:
    authority, partner = Authority(), Authority(TrustDomain("partner.org"))
    x509_only = BundleSet.of(
        [
            Bundle(TD, authority.bundle.x509_authorities),
            Bundle(partner.trust_domain, partner.bundle.x509_authorities),
        ]
    )
    jwt_only = BundleSet.of([Bundle(TD, jwt_authorities=authority.bundle.jwt_authorities)])
    merged = merge_bundles(x509_only, jwt_only)
    assert merged.get_bundle_for_trust_domain(TD) == authority.bundle
    partner_bundle = merged.get_bundle_for_trust_domain(partner.trust_domain)
    assert partner_bundle is not None and not partner_bundle.jwt_authorities
    assert merge_bundles(BundleSet(), jwt_only).get_bundle_for_trust_domain(TD) == Bundle(
        TD, jwt_authorities=authority.bundle.jwt_authorities
    )


async def test_errors_leave_the_block_bare_not_in_exception_groups(
    agents: tuple[WorkloadApiServer, WorkloadApiServer],
) -> None:
    a, _ = agents

    class Oops(Exception):
        pass

    with pytest.raises(Oops):
        async with open_x509_source(a.socket_path, backoff=FAST):
            raise Oops
    await a.refuse(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
    with pytest.raises(WorkloadApiError, match="INVALID_ARGUMENT"):
        async with open_x509_source(a.socket_path, backoff=FAST):
            raise AssertionError("must not be reached")
