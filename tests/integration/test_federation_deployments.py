"""Two complete deployments, a.test and b.test, federating both ways over each bundle
endpoint profile (issue 16, test 1): their workloads talk mTLS across the domains through
py-spiffe + spiffe-tls (separate processes, other uids) and through our SDK, and a
JWT-SVID of b.test validates in a.test's Workload API. Test 2: b.test rotates its CA under
a.test's workloads. Test 3: a.test deletes its relationship (created through the CLI) and
then a static bundle of b.test (`bundle delete --mode dissociate`): b.test leaves a.test's
workloads and mTLS from b.test fails with a verification error.

Workloads: on a.test's agent uid A (`/py`) and uid 0 (`/sdk`, this process) federate with
b.test, uid B (`/alone`) does not; on b.test's agent uid B (`/py`) and uid 0 (`/sdk`)
federate with a.test.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from devtools.harness.agent_clients import (
    UID_A,
    UID_B,
    agent_cli,
    pyspiffe,
    register,
    spiffetls_client,
    spiffetls_server,
)
from devtools.harness.federated_pair import Deployment, federated_pair
from devtools.harness.waiting import wait_for, wait_for_async
from insignia.authorize import NotAuthorized, any_member_of
from insignia.bundle import Bundle, BundleSet
from insignia.spiffeid import TrustDomain
from insignia.spiffetls import (
    PeerRefused,
    TlsContext,
    TlsHandshakeError,
    TlsStream,
    client_context,
    server_context,
)
from insignia.workloadapi import (
    TrioWorkloadApiClient,
    WorkloadApiError,
    WorkloadX509Source,
    open_x509_source,
)
from insignia.x509svid import InvalidX509Svid, UntrustedTrustDomain, verify_chain

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.slow]

Pair = tuple[Deployment, Deployment]


def federate(deployment: Deployment, path: str, uid: int, peer: str | None) -> None:
    extra = ("--federates-with", peer) if peer else ()
    register(deployment.server, deployment.agent, path, f"unix:uid:{uid}", extra=extra)


def receives_bundle_of(deployment: Deployment, uid: int, peer: str) -> bool:
    got: dict[str, Any] = pyspiffe(deployment.agent, "bundles", uid=uid)
    return peer in got.get("x509", {}) and peer in got.get("svid_bundles", {})


@pytest.fixture(scope="module", params=["https_spiffe", "https_web"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    root = Path(tempfile.mkdtemp(prefix="insignia-fed-"))
    try:
        with federated_pair(root, request.param) as (a, b):
            federate(a, "/py", UID_A, "b.test")
            federate(a, "/sdk", 0, "b.test")
            federate(a, "/alone", UID_B, None)
            federate(b, "/py", UID_B, "a.test")
            federate(b, "/sdk", 0, "a.test")
            for side, uid, peer in ((a, UID_A, "b.test"), (b, UID_B, "a.test")):
                wait_for(
                    partial(receives_bundle_of, side, uid, peer),
                    30,
                    f"{peer} at {side.trust_domain}'s workload",
                )
            yield a, b
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_pyspiffe_workloads_of_the_two_domains_talk_mtls(pair: Pair) -> None:
    a, b = pair
    with spiffetls_server(UID_A, a.agent, b.spiffe_id("/py")) as (server, port):
        client = spiffetls_client(UID_B, b.agent, a.spiffe_id("/py"), f"127.0.0.1:{port}")
        assert client.returncode == 0, client.stderr
        assert client.stdout == "hello ping\n"
        assert server.wait(30) == 0


def test_a_workload_without_the_federation_does_not_trust_the_peer(pair: Pair) -> None:
    a, b = pair
    assert not receives_bundle_of(a, UID_B, "b.test")
    with spiffetls_server(UID_B, b.agent, a.spiffe_id("/alone")) as (server, port):
        client = spiffetls_client(UID_B, a.agent, b.spiffe_id("/py"), f"127.0.0.1:{port}")
        assert client.returncode != 0
        assert "certificate verify failed" in client.stderr, client.stderr
        assert server.wait(30) != 0


@pytest.fixture
async def sources(pair: Pair) -> AsyncIterator[tuple[WorkloadX509Source, WorkloadX509Source]]:
    a, b = pair
    async with (
        open_x509_source(a.agent.endpoint, ready_timeout=30) as in_a,
        open_x509_source(b.agent.endpoint, ready_timeout=30) as in_b,
    ):
        yield in_a, in_b


async def echo_once(server_tls: TlsContext, client_tls: TlsContext) -> tuple[str, str, bytes]:
    """One mTLS echo through our SDK: (the server's view of the client's ID, the client's
    view of the server's ID, the reply)."""
    seen: list[str] = []

    async def echo(stream: TlsStream) -> None:
        seen.append(str(stream.peer_id))
        await stream.send_all(b"hello " + await stream.receive_some())

    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_tcp, server_tls.serve(echo), 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(30):
            async with await client_tls.connect_tcp("127.0.0.1", port) as stream:
                await stream.send_all(b"ping\n")
                reply = await stream.receive_some()
                server_seen = str(stream.peer_id)
        nursery.cancel_scope.cancel()
    return seen[0], server_seen, reply


async def test_our_sdk_workloads_of_the_two_domains_talk_mtls(
    pair: Pair, sources: tuple[WorkloadX509Source, WorkloadX509Source]
) -> None:
    a, b = pair
    in_a, in_b = sources
    assert in_a.get_bundle_for_trust_domain(TrustDomain.parse(b.trust_domain)) is not None
    server_tls = server_context(in_a, authorize=any_member_of("b.test"))
    client_tls = client_context(in_b, authorize=any_member_of("a.test"))
    client_id, server_id, reply = await echo_once(server_tls, client_tls)
    assert (client_id, server_id, reply) == (
        b.spiffe_id("/sdk"),
        a.spiffe_id("/sdk"),
        b"hello ping\n",
    )


async def test_our_sdk_refuses_a_foreign_domain_it_was_not_asked_to_accept(
    pair: Pair, sources: tuple[WorkloadX509Source, WorkloadX509Source]
) -> None:
    in_a, in_b = sources
    client_tls = client_context(in_b, authorize=any_member_of("b.test"))  # a.test not asked
    with pytest.RaisesGroup(PeerRefused, flatten_subgroups=True) as refused:
        await echo_once(server_context(in_a, authorize=any_member_of("b.test")), client_tls)
    [error] = refused.value.exceptions
    assert isinstance(error, PeerRefused) and isinstance(error.error, NotAuthorized)
    assert "peer spiffe://a.test/sdk is not authorized: expected any_member_of('b.test')" in str(
        error
    )


async def test_our_sdk_and_spiffe_tls_across_the_domains(
    pair: Pair, sources: tuple[WorkloadX509Source, WorkloadX509Source]
) -> None:
    a, b = pair
    _, in_b = sources
    with spiffetls_server(UID_A, a.agent, b.spiffe_id("/sdk")) as (server, port):
        client_tls = client_context(in_b, authorize=any_member_of("a.test"))
        with trio.fail_after(30):
            async with await client_tls.connect_tcp("127.0.0.1", port) as stream:
                assert str(stream.peer_id) == a.spiffe_id("/py")
                await stream.send_all(b"ping\n")
                assert await stream.receive_some() == b"hello ping\n"
        assert await trio.to_thread.run_sync(server.wait, 30) == 0


async def test_a_jwt_svid_of_b_validates_in_the_workload_api_of_a(pair: Pair) -> None:
    a, b = pair
    token = (await TrioWorkloadApiClient(b.agent.socket_path).fetch_jwt_svid(["a-api"])).token
    spiffe_id, claims = await TrioWorkloadApiClient(a.agent.socket_path).validate_jwt_svid(
        token, "a-api"
    )
    assert str(spiffe_id) == b.spiffe_id("/sdk")
    assert claims["aud"] == ["a-api"]
    # the agent CLI (the README's walkthrough) and py-spiffe, other callers, agree...
    cli = agent_cli(
        "api",
        "validate",
        "jwt",
        "--socket",
        str(a.agent.socket_path),
        "--audience",
        "a-api",
        "--svid",
        token,
    )
    assert f"SPIFFE ID : {b.spiffe_id('/sdk')}" in cli.stdout, cli.stderr
    validated = pyspiffe(a.agent, "validate", token, "a-api", uid=UID_A)
    assert validated == {"spiffe_id": b.spiffe_id("/sdk"), "aud": ["a-api"]}
    # ...but not a caller whose entry does not federate with b.test, nor another audience.
    alone = pyspiffe(a.agent, "validate", token, "a-api", uid=UID_B)
    assert alone["error"] == "INVALID_ARGUMENT", alone
    other = pyspiffe(a.agent, "validate", token, "elsewhere", uid=UID_A)
    assert other["error"] == "INVALID_ARGUMENT", other


# --- issue 16, test 2: b.test rotates its CA under a.test's workloads ------------------------

B = TrustDomain.parse("b.test")


def authorities_of(pem: bytes) -> frozenset[bytes]:
    return frozenset(c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(pem))


class BundleWatch:
    """What a.test's workload last received for b.test on its FetchX509Bundles stream."""

    def __init__(self) -> None:
        self.updates = 0
        self.b_authorities: frozenset[bytes] = frozenset()

    def update(self, bundles: BundleSet) -> None:
        bundle = bundles.get_bundle_for_trust_domain(B)
        self.updates += 1
        self.b_authorities = frozenset(
            c.public_bytes(Encoding.DER) for c in (bundle.x509_authorities if bundle else ())
        )

    async def until(self, wanted: frozenset[bytes], what: str) -> None:
        # a.test fetches at most every MIN_REFRESH (30 s) whatever b.test's hint: one
        # refresh, then the change log to the agent and the stream to the workload.
        await wait_for_async(lambda: self.b_authorities == wanted, 90, what)


@pytest.fixture
def rotating_pair(tmp_path: Path) -> Iterator[Pair]:
    """A fresh pair whose b.test endpoint hints a 1 s refresh (a.test clamps it to 30 s)."""
    with federated_pair(tmp_path, "https_spiffe", refresh_hint="1s") as (a, b):
        federate(a, "/sdk", 0, "b.test")
        federate(a, "/py", UID_A, "b.test")
        federate(b, "/sdk", 0, "a.test")
        federate(b, "/py", UID_B, "a.test")
        wait_for(partial(receives_bundle_of, a, UID_A, "b.test"), 30, "b.test at a.test")
        yield a, b


@pytest.mark.timeout(400)
async def test_a_ca_rotation_of_b_reaches_a_and_mtls_keeps_working(rotating_pair: Pair) -> None:
    a, b = rotating_pair
    old = authorities_of(b.server.bundle_pem())
    old_id = next(
        x["authority_id"]
        for x in b.server.cli_json("authority", "x509", "show")["authorities"]
        if x["state"] == "active"
    )
    watch = BundleWatch()
    async with (
        open_x509_source(a.agent.endpoint, ready_timeout=30) as in_a,
        open_x509_source(b.agent.endpoint, ready_timeout=30) as in_b,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(
            partial(TrioWorkloadApiClient(a.agent.socket_path).watch_x509_bundles, watch.update)
        )
        await watch.until(old, "b.test's bundle at a.test's workload")

        async def mtls_works() -> None:
            server_tls = server_context(in_a, authorize=any_member_of("b.test"))
            client_tls = client_context(in_b, authorize=any_member_of("a.test"))
            client_id, server_id, reply = await echo_once(server_tls, client_tls)
            assert (client_id, server_id, reply) == (
                b.spiffe_id("/sdk"),
                a.spiffe_id("/sdk"),
                b"hello ping\n",
            )

        await mtls_works()
        b.server.cli("authority", "x509", "prepare")
        both = authorities_of(b.server.bundle_pem())
        [new] = both - old
        await watch.until(both, "the prepared key of b.test at a.test's workload")
        await mtls_works()

        b.server.cli("authority", "x509", "activate")
        b.server.cli("authority", "x509", "taint", old_id)
        new_only = Bundle(B, (x509.load_der_x509_certificate(new),))

        def signed_by_new() -> bool:
            try:
                verify_chain(in_b.get_x509_svid().chain, new_only)
            except InvalidX509Svid:
                return False
            return True

        await wait_for_async(signed_by_new, 60, "b.test's workload SVID from the new key")
        await mtls_works()

        b.server.cli("authority", "x509", "revoke", old_id)
        assert authorities_of(b.server.bundle_pem()) == {new}
        await watch.until(frozenset({new}), "the old key of b.test gone from a.test")
        await mtls_works()
        nursery.cancel_scope.cancel()
    assert watch.updates >= 3
    # spiffe-tls, in other processes, after the whole rotation
    with spiffetls_server(UID_A, a.agent, b.spiffe_id("/py")) as (server, port):
        client = await trio.to_thread.run_sync(
            partial(spiffetls_client, UID_B, b.agent, a.spiffe_id("/py"), f"127.0.0.1:{port}")
        )
        assert client.returncode == 0, client.stderr
        assert await trio.to_thread.run_sync(server.wait, 30) == 0


# --- issue 16, test 3: a.test stops federating with b.test ---------------------------------


@pytest.fixture
def deletable_pair(tmp_path: Path) -> Iterator[Pair]:
    """A fresh https_spiffe pair whose a.test relationship lives in the datastore (CLI)."""
    with federated_pair(tmp_path, "https_spiffe", a_through_cli=True) as (a, b):
        federate(a, "/sdk", 0, "b.test")
        federate(a, "/py", UID_A, "b.test")
        federate(b, "/sdk", 0, "a.test")
        federate(b, "/py", UID_B, "a.test")
        for side, uid, peer in ((a, UID_A, "b.test"), (b, UID_B, "a.test")):
            wait_for(
                partial(receives_bundle_of, side, uid, peer), 30, f"{peer} at {side.trust_domain}"
            )
        yield a, b


async def refused_handshake(
    server_tls: TlsContext, client_tls: TlsContext
) -> tuple[TlsHandshakeError, trio.BrokenResourceError]:
    """One connection the server refuses: its error, and the client's (with TLS 1.3 the
    client learns of the refusal on its first read, from the server's alert)."""
    errors: dict[str, trio.BrokenResourceError] = {}

    async def run(side: str, exchange: Callable[[], Awaitable[object]]) -> None:
        try:
            await exchange()
        except trio.BrokenResourceError as exc:
            errors[side] = exc

    async def client(port: int) -> None:
        async with await client_tls.connect_tcp("127.0.0.1", port) as stream:
            await stream.send_all(b"ping\n")
            await stream.receive_some()

    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    with trio.fail_after(30):
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(run, "client", partial(client, listener.socket.getsockname()[1]))
            transport = await listener.accept()
            await run("server", partial(server_tls.wrap, transport))
    assert set(errors) == {"server", "client"}, errors
    assert isinstance(errors["server"], TlsHandshakeError), errors
    return errors["server"], errors["client"]


@pytest.mark.timeout(300)
async def test_deleting_the_relationship_ends_mtls_from_the_peer(deletable_pair: Pair) -> None:
    a, b = deletable_pair
    shown = a.server.cli_json("federation", "show", "--trust-domain", "b.test")
    assert shown["from_config"] is False
    b_authorities = authorities_of(b.server.bundle_pem())
    token = (await TrioWorkloadApiClient(b.agent.socket_path).fetch_jwt_svid(["a-api"])).token
    in_a_api = TrioWorkloadApiClient(a.agent.socket_path)
    assert str((await in_a_api.validate_jwt_svid(token, "a-api"))[0]) == b.spiffe_id("/sdk")
    watch = BundleWatch()
    async with (
        open_x509_source(a.agent.endpoint, ready_timeout=30) as in_a,
        open_x509_source(b.agent.endpoint, ready_timeout=30) as in_b,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(partial(in_a_api.watch_x509_bundles, watch.update))
        await watch.until(b_authorities, "b.test's bundle at a.test's workload")
        server_tls = server_context(in_a, authorize=any_member_of("b.test"))
        client_tls = client_context(in_b, authorize=any_member_of("a.test"))
        assert (await echo_once(server_tls, client_tls))[2] == b"hello ping\n"

        async def b_is_refused() -> None:
            server_error, client_error = await refused_handshake(server_tls, client_tls)
            assert isinstance(server_error, PeerRefused), server_error
            assert isinstance(server_error.error, UntrustedTrustDomain), server_error
            assert str(server_error) == (
                "peer refused: no X.509 authorities for trust domain b.test of spiffe://b.test/sdk"
            )
            assert "tlsv1 alert unknown ca" in str(client_error), client_error

        out = a.server.cli("federation", "delete", "--trust-domain", "b.test").stdout
        assert out.strip() == "deleted the federation relationship with b.test"
        await watch.until(frozenset(), "b.test's bundle gone from a.test's workload")
        await b_is_refused()
        assert (await in_a_api.fetch_jwt_bundles()).get_bundle_for_trust_domain(B) is None
        with pytest.raises(WorkloadApiError) as invalid:
            await in_a_api.validate_jwt_svid(token, "a-api")
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT, invalid.value
        assert invalid.value.details == "no JWT authorities for trust domain b.test"

        # The entries still name b.test, so a static bundle of it reaches them again; `bundle
        # delete --mode dissociate` takes it away and b.test out of the entries.
        a.server.cli(
            "bundle", "set", "--id", "spiffe://b.test", "--path", str(b.server.bundle_path)
        )
        await watch.until(b_authorities, "the static bundle of b.test at a.test's workload")
        assert (await echo_once(server_tls, client_tls))[2] == b"hello ping\n"
        out = a.server.cli(
            "bundle", "delete", "--id", "spiffe://b.test", "--mode", "dissociate"
        ).stdout
        assert out.strip() == "deleted the bundle of b.test; 2 entries dissociated"
        await watch.until(frozenset(), "the static bundle of b.test gone from a.test")
        await b_is_refused()
        nursery.cancel_scope.cancel()
    for path in ("/sdk", "/py"):
        [entry] = a.server.cli_json("entry", "show", "--spiffe-id", a.spiffe_id(path))["entries"]
        assert entry["federates_with"] == [], entry
    # spiffe-tls in other processes: a.test's server now fails to verify b.test's client.
    with spiffetls_server(UID_A, a.agent, b.spiffe_id("/py")) as (server, port):
        client = await trio.to_thread.run_sync(
            partial(spiffetls_client, UID_B, b.agent, a.spiffe_id("/py"), f"127.0.0.1:{port}")
        )
        assert client.returncode != 0, client.stdout
        assert await trio.to_thread.run_sync(server.wait, 30) != 0
        assert server.stderr is not None
        server_stderr = server.stderr.read().decode()
    assert "certificate verify failed" in server_stderr, server_stderr
    assert "tlsv1 alert unknown ca" in client.stderr, client.stderr
