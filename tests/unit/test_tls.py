"""SPIFFE mTLS on trio streams: who gets in, who is refused, rotation, and interop."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from OpenSSL import SSL

from insignia.authorize import NotAuthorized, any_id, any_member_of, one_of
from insignia.bundle import Bundle
from insignia.keys import KeyType, PrivateKey, generate_key, private_key_to_pem
from insignia.server.ca.x509_leaf import build_leaf
from insignia.server.ca.x509ca import SigningAuthority, build_intermediate_ca, build_root_ca
from insignia.sources import StaticSource
from insignia.spiffeid import SpiffeId, TrustDomain
from insignia.spiffetls import (
    PeerRefused,
    TlsContext,
    TlsHandshakeError,
    TlsStream,
    client_context,
    server_context,
)
from insignia.x509svid import (
    ChainVerificationFailed,
    ExpiredCertificate,
    InvalidUriSan,
    UntrustedTrustDomain,
    X509Svid,
)
from tests.unit.common import TD

SERVER_ID = SpiffeId.parse("spiffe://example.org/service/a")
CLIENT_ID = SpiffeId.parse("spiffe://example.org/service/b")
PEER_SCRIPT = Path(__file__).with_name("spiffetls_peer.py")


@dataclass
class Pki:
    """A root CA and an intermediate that signs SVIDs, as an Insignia server would."""

    trust_domain: TrustDomain
    root: SigningAuthority
    issuer: SigningAuthority

    @classmethod
    def create(cls, trust_domain: TrustDomain = TD) -> Pki:
        start = datetime.now(UTC) - timedelta(days=1)
        root = build_root_ca(trust_domain, generate_key(KeyType.EC_P256), timedelta(days=2), start)
        key = generate_key(KeyType.EC_P256)
        cert = build_intermediate_ca(root, key.public_key(), trust_domain, timedelta(days=2), start)
        return cls(trust_domain, root, SigningAuthority(cert, key, (cert,)))

    @property
    def bundle(self) -> Bundle:
        return Bundle(self.trust_domain, (self.root.certificate,))

    def svid(
        self,
        spiffe_id: SpiffeId,
        key_type: KeyType = KeyType.EC_P256,
        now: datetime | None = None,
        ttl: timedelta = timedelta(hours=1),
    ) -> X509Svid:
        key = generate_key(key_type)
        leaf = build_leaf(key.public_key(), spiffe_id, ttl, self.issuer, now=now)
        return X509Svid(spiffe_id, (leaf, *self.issuer.chain), key)

    def source(self, spiffe_id: SpiffeId, *extra: Bundle) -> StaticSource:
        return StaticSource(self.svid(spiffe_id), [self.bundle, *extra])


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


@dataclass
class Outcome:
    stream: TlsStream | None = None
    error: BaseException | None = None


async def _wrap_into(ctx: TlsContext, transport: trio.abc.Stream, out: Outcome) -> None:
    try:
        out.stream = await ctx.wrap(transport)
    except TlsHandshakeError as exc:
        out.error = exc


async def handshake(server: TlsContext, client: TlsContext) -> tuple[Outcome, Outcome]:
    """Both handshakes over an in-memory stream pair; each side's stream or error."""
    s_transport, c_transport = trio.testing.memory_stream_pair()
    s_out, c_out = Outcome(), Outcome()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_wrap_into, server, s_transport, s_out)
            nursery.start_soon(_wrap_into, client, c_transport, c_out)
    return s_out, c_out


async def start_server(
    server: TlsContext, handler: Callable[[TlsStream], Awaitable[None]], nursery: trio.Nursery
) -> int:
    """Start `server` on a free loopback port in `nursery`; the port."""
    serve = partial(trio.serve_tcp, host="127.0.0.1")
    listeners = await nursery.start(serve, server.serve(handler), 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some()
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


def refusal(outcome: Outcome) -> BaseException:
    assert isinstance(outcome.error, PeerRefused), outcome
    return outcome.error.error


async def test_authorized_peers_talk_and_see_each_others_spiffe_id(pki: Pki) -> None:
    server = server_context(pki.source(SERVER_ID), authorize=one_of(CLIENT_ID))
    client = client_context(pki.source(CLIENT_ID), authorize=one_of(SERVER_ID))
    s, c = await handshake(server, client)
    assert s.stream is not None and c.stream is not None
    assert s.stream.peer_id == CLIENT_ID
    assert c.stream.peer_id == SERVER_ID
    await c.stream.send_all(b"x" * 100_000)
    assert await receive_exactly(s.stream, 100_000) == b"x" * 100_000
    await s.stream.send_all(b"pong")
    await s.stream.aclose()
    assert await receive_exactly(c.stream, 4) == b"pong"
    assert await c.stream.receive_some() == b""  # close_notify arrived: a clean EOF
    await c.stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await c.stream.send_all(b"late")


async def test_cancelled_receive_leaves_the_stream_usable(pki: Pki) -> None:
    server = server_context(pki.source(SERVER_ID), authorize=any_id())
    client = client_context(pki.source(CLIENT_ID), authorize=any_id())
    s, c = await handshake(server, client)
    assert s.stream is not None and c.stream is not None
    server_stream = s.stream
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_stream.receive_some)
        await trio.testing.wait_all_tasks_blocked()  # parked waiting for the transport
        nursery.cancel_scope.cancel()
    await c.stream.send_all(b"after cancel")
    assert await receive_exactly(server_stream, 12) == b"after cancel"


@pytest.mark.parametrize("key_type", [KeyType.EC_P384, KeyType.RSA_2048])
async def test_other_key_types_work_on_both_sides(pki: Pki, key_type: KeyType) -> None:
    server_src = StaticSource(pki.svid(SERVER_ID, key_type), [pki.bundle])
    client_src = StaticSource(pki.svid(CLIENT_ID, key_type), [pki.bundle])
    s, c = await handshake(
        server_context(server_src, authorize=any_member_of(TD)),
        client_context(client_src, authorize=any_member_of(TD)),
    )
    assert s.stream is not None and s.stream.peer_id == CLIENT_ID
    assert c.stream is not None and c.stream.peer_id == SERVER_ID


async def test_full_duplex_over_tcp_loopback(pki: Pki) -> None:
    size = 16_000_000  # beyond socket buffers: both sides must send and read at once
    seen: list[SpiffeId] = []

    async def echo(stream: TlsStream) -> None:
        seen.append(stream.peer_id)
        while data := await stream.receive_some():
            await stream.send_all(data)

    server = server_context(pki.source(SERVER_ID), authorize=one_of(CLIENT_ID))
    client = client_context(pki.source(CLIENT_ID), authorize=one_of(SERVER_ID))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await start_server(server, echo, nursery)
            stream = await client.connect_tcp("127.0.0.1", port)
            payload = bytes(range(256)) * (size // 256)
            received = bytearray()

            async def read_all() -> None:
                while len(received) < len(payload):
                    received.extend(await stream.receive_some())

            async with trio.open_nursery() as io:
                io.start_soon(read_all)
                await stream.send_all(payload)
            assert bytes(received) == payload
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert seen == [CLIENT_ID]


async def test_unauthorized_id_is_refused_by_the_server(pki: Pki) -> None:
    intruder = SpiffeId.parse("spiffe://example.org/service/c")
    server = server_context(pki.source(SERVER_ID), authorize=one_of(CLIENT_ID))
    client = client_context(pki.source(intruder), authorize=any_member_of(TD))
    s, c = await handshake(server, client)
    error = refusal(s)
    assert isinstance(error, NotAuthorized) and error.peer_id == intruder
    # TLS 1.3: the client finished first; the server's alert reaches its first read.
    if c.stream is not None:
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await c.stream.receive_some()


async def test_client_refuses_a_server_it_did_not_ask_for(pki: Pki) -> None:
    server = server_context(pki.source(SERVER_ID), authorize=any_member_of(TD))
    client = client_context(pki.source(CLIENT_ID), authorize=one_of("spiffe://example.org/db"))
    s, c = await handshake(server, client)
    error = refusal(c)
    assert isinstance(error, NotAuthorized) and error.peer_id == SERVER_ID
    assert s.stream is None  # the client's alert stopped the server's handshake too


async def test_certificate_from_another_ca_is_refused(pki: Pki) -> None:
    rogue = Pki.create(TD)  # same trust domain name, different CA
    server = server_context(pki.source(SERVER_ID), authorize=any_member_of(TD))
    # The client trusts the real CA (so it accepts the server) but holds a rogue SVID.
    client_src = StaticSource(rogue.svid(CLIENT_ID), [pki.bundle])
    client = client_context(client_src, authorize=any_id())
    s, _ = await handshake(server, client)
    assert isinstance(refusal(s), ChainVerificationFailed)


async def test_unknown_trust_domain_is_refused(pki: Pki) -> None:
    other = Pki.create(TrustDomain("other.org"))
    server = server_context(pki.source(SERVER_ID), authorize=any_id())
    client = client_context(
        other.source(SpiffeId.parse("spiffe://other.org/b"), pki.bundle), authorize=any_id()
    )
    s, _ = await handshake(server, client)
    assert isinstance(refusal(s), UntrustedTrustDomain)


async def test_federated_trust_domain_is_accepted_with_its_bundle(pki: Pki) -> None:
    other = Pki.create(TrustDomain("other.org"))
    partner = SpiffeId.parse("spiffe://other.org/b")
    server = server_context(pki.source(SERVER_ID, other.bundle), authorize=one_of(partner))
    client = client_context(other.source(partner, pki.bundle), authorize=one_of(SERVER_ID))
    s, c = await handshake(server, client)
    assert s.stream is not None and s.stream.peer_id == partner
    assert c.stream is not None and c.stream.peer_id == SERVER_ID


async def test_expired_certificate_is_refused(pki: Pki) -> None:
    past = datetime.now(UTC) - timedelta(hours=3)
    expired = pki.svid(CLIENT_ID, now=past, ttl=timedelta(hours=1))
    server = server_context(pki.source(SERVER_ID), authorize=any_id())
    client = client_context(StaticSource(expired, [pki.bundle]), authorize=any_id())
    s, _ = await handshake(server, client)
    assert isinstance(refusal(s), ExpiredCertificate)


def raw_client_context(chain: tuple[x509.Certificate, ...], key: PrivateKey) -> SSL.Context:
    """A plain pyOpenSSL client that presents `chain` and checks nothing itself."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.use_certificate(chain[0])
    ctx.use_privatekey(key)
    for cert in chain[1:]:
        ctx.add_extra_chain_cert(cert)
    ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


async def raw_handshake(
    server: TlsContext, client: SSL.Context, session: SSL.Session | None = None
) -> tuple[Outcome, SSL.Connection]:
    """Our server against a raw client; the raw client's failure is left to the caller."""
    s_transport, c_transport = trio.testing.memory_stream_pair()
    conn = SSL.Connection(client, None)
    if session is not None:
        conn.set_session(session)
    conn.set_connect_state()
    raw = TlsStream(c_transport, conn)
    s_out = Outcome()

    async def accept_then_close() -> None:
        await _wrap_into(server, s_transport, s_out)
        if s_out.stream is not None:
            await s_out.stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_then_close)
            try:
                await raw.do_handshake(lambda: SERVER_ID)
                await raw.receive_some()  # TLS 1.3: a refusal shows up after our Finished
            except trio.BrokenResourceError:
                pass
    return s_out, conn


async def test_certificate_without_spiffe_id_is_refused(pki: Pki) -> None:
    key = generate_key(KeyType.EC_P256)
    now = datetime.now(UTC)
    web_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "web")]))
        .issuer_name(pki.issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("web.example.org")]), False)
        .sign(pki.issuer.private_key, pki.issuer.signature_hash)
    )
    server = server_context(pki.source(SERVER_ID), authorize=any_id())
    s, _ = await raw_handshake(server, raw_client_context((web_cert, *pki.issuer.chain), key))
    assert isinstance(refusal(s), InvalidUriSan)


async def test_rotation_applies_to_the_next_handshake(pki: Pki) -> None:
    server_src = pki.source(SERVER_ID)
    client_src = pki.source(CLIENT_ID)
    server = server_context(server_src, authorize=one_of(CLIENT_ID))
    client = client_context(client_src, authorize=one_of(SERVER_ID))

    def leaves(s: Outcome, c: Outcome) -> tuple[x509.Certificate | None, ...]:
        assert s.stream is not None and c.stream is not None
        return (
            c.stream.connection.get_peer_certificate(as_cryptography=True),
            s.stream.connection.get_peer_certificate(as_cryptography=True),
        )

    first = await handshake(server, client)
    assert leaves(*first) == (server_src.get_x509_svid().leaf, client_src.get_x509_svid().leaf)
    old_server_leaf = server_src.get_x509_svid().leaf
    server_src.set_x509_svid(pki.svid(SERVER_ID))
    client_src.set_x509_svid(pki.svid(CLIENT_ID))
    second = await handshake(server, client)
    assert leaves(*second) == (server_src.get_x509_svid().leaf, client_src.get_x509_svid().leaf)
    assert leaves(*second)[0] != old_server_leaf
    # the connection made before the rotation keeps working
    s_old, c_old = first
    assert s_old.stream is not None and c_old.stream is not None
    await c_old.stream.send_all(b"still here")
    assert await receive_exactly(s_old.stream, 10) == b"still here"


async def test_bundle_rotation_applies_to_the_next_handshake(pki: Pki) -> None:
    server_src = pki.source(SERVER_ID)
    server = server_context(server_src, authorize=any_id())
    client = client_context(pki.source(CLIENT_ID), authorize=any_id())
    s, _ = await handshake(server, client)
    assert s.stream is not None
    server_src.set_bundle(Pki.create(TD).bundle)  # the old CA is no longer trusted
    s, _ = await handshake(server, client)
    assert isinstance(refusal(s), ChainVerificationFailed)


async def test_resumption_cannot_skip_verification(pki: Pki) -> None:
    server = server_context(pki.source(SERVER_ID), authorize=one_of(CLIENT_ID))
    svid = pki.svid(CLIENT_ID)
    client = raw_client_context(svid.chain, svid.private_key)
    first, conn = await raw_handshake(server, client)
    assert first.stream is not None and first.stream.peer_id == CLIENT_ID
    session = conn.get_session()
    assert session is not None
    # Offering the first connection's session still gets a full, verified handshake.
    second, _ = await raw_handshake(server, client, session)
    assert second.stream is not None and second.stream.peer_id == CLIENT_ID


async def test_handshake_timeout(pki: Pki) -> None:
    server = server_context(pki.source(SERVER_ID), authorize=any_id(), handshake_timeout=0.2)
    s_transport, _silent_client = trio.testing.memory_stream_pair()
    with pytest.raises(TlsHandshakeError, match=r"longer than 0\.2 s") as info:
        await server.wrap(s_transport)
    assert not isinstance(info.value, PeerRefused)


async def test_a_source_without_svid_fails_the_handshake_and_closes_the_transport(
    pki: Pki,
) -> None:
    server = server_context(StaticSource(bundles=[pki.bundle]), authorize=any_id())
    s_transport, c_transport = trio.testing.memory_stream_pair()
    with pytest.raises(TlsHandshakeError, match="no X509-SVID"):
        await server.wrap(s_transport)
    assert await c_transport.receive_some() == b""  # closed, not leaked


async def test_serve_survives_a_refused_client(pki: Pki) -> None:
    served: list[SpiffeId] = []

    async def record(stream: TlsStream) -> None:
        served.append(stream.peer_id)
        await stream.send_all(b"ok")

    server = server_context(pki.source(SERVER_ID), authorize=one_of(CLIENT_ID))
    intruder = SpiffeId.parse("spiffe://example.org/service/c")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_server(server, record, nursery)
            bad = client_context(pki.source(intruder), authorize=any_id())
            with pytest.raises(trio.BrokenResourceError):
                stream = await bad.connect_tcp("127.0.0.1", port)
                await stream.receive_some()
            good = client_context(pki.source(CLIENT_ID), authorize=one_of(SERVER_ID))
            stream = await good.connect_tcp("127.0.0.1", port)
            assert await receive_exactly(stream, 2) == b"ok"
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert served == [CLIENT_ID]


# ------------------------------------------------------------------ independent peers


def write_svid_files(directory: Path, svid: X509Svid, bundle: Bundle) -> dict[str, Path]:
    paths = {name: directory / f"{name}.pem" for name in ("svid", "key", "bundle")}
    paths["svid"].write_bytes(svid.chain_pem())
    paths["key"].write_bytes(private_key_to_pem(svid.private_key))
    paths["bundle"].write_bytes(bundle.x509_pem())
    return paths


async def echo_line(stream: TlsStream) -> None:
    line = await stream.receive_some()
    await stream.send_all(b"hello " + line + str(stream.peer_id).encode())


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
async def test_openssl_s_client_with_svid_files(pki: Pki, tmp_path: Path, version: str) -> None:
    client_files = write_svid_files(tmp_path, pki.svid(CLIENT_ID), pki.bundle)
    server = server_context(pki.source(SERVER_ID), authorize=one_of(CLIENT_ID))

    async def s_client(*args: str) -> subprocess.CompletedProcess[bytes]:
        command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", version]
        command += ["-verify_return_error", "-CAfile", str(client_files["bundle"]), "-ign_eof"]
        return await trio.run_process(
            [*command, *args],
            stdin=b"ping\n",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await start_server(server, echo_line, nursery)
            svid, key = str(client_files["svid"]), str(client_files["key"])
            done = await s_client("-cert", svid, "-key", key, "-cert_chain", svid)
            out = done.stdout.decode()
            assert "Verify return code: 0 (ok)" in out, done.stderr.decode()
            assert f"hello ping\n{CLIENT_ID}" in out
            # Without a client certificate the server refuses the handshake.
            refused = await s_client()
            assert "hello" not in refused.stdout.decode()
            assert "alert" in refused.stderr.decode(), refused.stderr.decode()
            nursery.cancel_scope.cancel()


def peer_command(mode: str, files: dict[str, Path], allowed: SpiffeId, *extra: str) -> list[str]:
    """spiffetls_peer.py on SVID files (py-spiffe lives in its own process)."""
    source = "files:" + ",".join([*(str(files[k]) for k in ("svid", "key", "bundle")), TD.name])
    return [sys.executable, str(PEER_SCRIPT), mode, source, str(allowed), *extra]


async def test_spiffe_tls_client_against_our_server(pki: Pki, tmp_path: Path) -> None:
    files = write_svid_files(tmp_path, pki.svid(CLIENT_ID), pki.bundle)
    server = server_context(pki.source(SERVER_ID), authorize=one_of(CLIENT_ID))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port = await start_server(server, echo_line, nursery)
            done = await trio.run_process(
                peer_command("client", files, SERVER_ID, f"127.0.0.1:{port}"),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()
            assert done.stdout.decode() == f"hello ping\n{CLIENT_ID}"
            nursery.cancel_scope.cancel()


async def test_our_client_against_spiffe_tls_server(pki: Pki, tmp_path: Path) -> None:
    files = write_svid_files(tmp_path, pki.svid(SERVER_ID), pki.bundle)
    client = client_context(pki.source(CLIENT_ID), authorize=one_of(SERVER_ID))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            run = partial(trio.run_process, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            proc = await nursery.start(run, peer_command("server", files, CLIENT_ID))
            assert proc.stdout is not None
            first = b""
            while b"\n" not in first:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"peer exited before printing its port: {first!r}"
                first += chunk
            assert first.startswith(b"port "), first
            port = int(first.split()[1])
            stream = await client.connect_tcp("127.0.0.1", port)
            assert stream.peer_id == SERVER_ID
            await stream.send_all(b"ping\n")
            assert await receive_exactly(stream, 11) == b"hello ping\n"
            await stream.aclose()
        assert proc.returncode == 0
