"""SPIFFE mTLS on trio streams: present the source's SVID, accept peers by SPIFFE rules.

A peer is accepted when its chain verifies against the bundle of the trust domain in its own
leaf URI SAN (`insignia.x509svid.verify_chain`), never by hostname, and the authorizer admits
its SPIFFE ID. Both checks run inside OpenSSL's verify callback, so a refused peer gets a TLS
alert during the handshake, and the verified ID is then on `TlsStream.peer_id`.

Every `wrap` asks the source for its current SVID and every verification asks it for the
current bundle, so rotation reaches the next connection with no restart. OpenSSL cannot
change a context's extra chain certificates per connection, so one `SSL.Context` is built per
SVID and reused until the source hands out another.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from cryptography import x509
from OpenSSL import SSL, crypto

from insignia._tls_stream import TlsStream
from insignia.authorize import Authorizer, NotAuthorized
from insignia.bundle import BundleSource
from insignia.sources import X509Source
from insignia.spiffeid import SpiffeId
from insignia.x509svid import X509Svid, verify_chain

__all__ = [
    "PeerRefused",
    "TlsContext",
    "TlsHandshakeError",
    "TlsStream",
    "client_context",
    "server_context",
]

DEFAULT_HANDSHAKE_TIMEOUT = 10.0

# stdlib logging: the SDK does not impose a logging library; the daemons route it to structlog.
_log = logging.getLogger(__name__)


class TlsHandshakeError(trio.BrokenResourceError):
    """The TLS handshake did not complete: transport failure, timeout, or an alert."""


class PeerRefused(TlsHandshakeError):
    """We refused the peer: its chain is not a valid SVID here, or its ID is not authorized.

    `error` is the `InvalidX509Svid` or `NotAuthorized` that decided it.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(f"peer refused: {error}")
        self.error = error


class _Side(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


@dataclass
class _PeerCheck:
    """Per-connection verification state, reached from OpenSSL's callback via app data."""

    bundles: BundleSource
    authorize: Authorizer
    presented: dict[int, x509.Certificate] = field(default_factory=dict)
    leaf: x509.Certificate | None = None
    peer_id: SpiffeId | None = None
    error: Exception | None = None

    def on_certificate(self, depth: int, cert: x509.Certificate) -> bool:
        # OpenSSL walks the chain it built from the peer's certificates top-down and ends at
        # the leaf (depth 0); there the whole presented chain is known and is judged at once.
        # OpenSSL's own verdict is ignored: it has no trust store, SPIFFE rules decide.
        self.presented[depth] = cert
        if depth != 0:
            return True
        self.leaf = self.peer_id = None
        try:
            chain = [self.presented[d] for d in sorted(self.presented)]
            peer_id = verify_chain(chain, self.bundles)
            if not self.authorize(peer_id):
                raise NotAuthorized(peer_id, self.authorize)
        except Exception as exc:  # an authorizer's own failure also refuses the peer
            self.error = exc
            return False
        self.leaf, self.peer_id = cert, peer_id
        return True


def _verify_callback(
    conn: SSL.Connection, cert: crypto.X509, _errno: int, depth: int, _ok: int
) -> bool:
    check = conn.get_app_data()
    return isinstance(check, _PeerCheck) and check.on_certificate(depth, cert.to_cryptography())


class TlsContext:
    """Turns trio streams into mutually authenticated TLS streams for one side."""

    def __init__(
        self,
        side: _Side,
        source: X509Source,
        authorize: Authorizer,
        handshake_timeout: float,
    ) -> None:
        self.source = source
        self.authorize = authorize
        self.handshake_timeout = handshake_timeout
        self._side = side
        self._cached: tuple[X509Svid, SSL.Context] | None = None

    def __repr__(self) -> str:
        return f"{self._side.value}_context(authorize={self.authorize!r})"

    async def wrap(self, transport: trio.abc.Stream) -> TlsStream:
        """Handshake over `transport` and return the verified stream (peer_id is set).

        Takes ownership of `transport`: it is closed if the handshake fails. Raises
        `PeerRefused` when we refused the peer, `TlsHandshakeError` for anything else.
        """
        check = _PeerCheck(self.source, self.authorize)
        try:
            svid = self.source.get_x509_svid()
        except Exception as exc:
            await trio.aclose_forcefully(transport)
            raise TlsHandshakeError(f"no X509-SVID to present: {exc}") from exc
        conn = SSL.Connection(self._ssl_context(svid), None)
        conn.set_app_data(check)
        if self._side is _Side.SERVER:
            conn.set_accept_state()
        else:
            conn.set_connect_state()
        stream = TlsStream(transport, conn)

        def verified_peer() -> SpiffeId:
            # Fail closed should OpenSSL ever finish without judging the leaf it holds.
            leaf = conn.get_peer_certificate(as_cryptography=True)
            if check.peer_id is None or leaf is None or check.leaf != leaf:
                raise PeerRefused(check.error or ValueError("peer certificate was not verified"))
            return check.peer_id

        try:
            with trio.fail_after(self.handshake_timeout):
                await stream.do_handshake(verified_peer)
        except PeerRefused:
            await trio.aclose_forcefully(stream)
            raise
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            await trio.aclose_forcefully(stream)
            if check.error is not None:
                raise PeerRefused(check.error) from exc
            if isinstance(exc, trio.TooSlowError):
                raise TlsHandshakeError(
                    f"TLS handshake took longer than {self.handshake_timeout} s"
                ) from exc
            raise TlsHandshakeError(f"TLS handshake failed: {exc}") from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream

    def serve(
        self, handler: Callable[[TlsStream], Awaitable[object]]
    ) -> Callable[[trio.abc.Stream], Awaitable[None]]:
        """A `trio.serve_tcp` handler: handshake, run `handler`, close. A refused or failed
        handshake is logged and dropped so that one bad client cannot stop the listener."""

        async def serve_one(transport: trio.abc.Stream) -> None:
            try:
                stream = await self.wrap(transport)
            except TlsHandshakeError as exc:
                _log.info("tls handshake failed: %s", exc)
                return
            async with stream:
                await handler(stream)

        return serve_one

    async def connect_tcp(self, host: str, port: int) -> TlsStream:
        """Open a TCP connection and handshake over it (client side)."""
        return await self.wrap(await trio.open_tcp_stream(host, port))

    def _ssl_context(self, svid: X509Svid) -> SSL.Context:
        cached = self._cached
        if cached is not None and (cached[0] is svid or cached[0] == svid):
            return cached[1]
        server = self._side is _Side.SERVER
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server else SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        # Resumption would skip the certificate (and so our check) on the next connection;
        # renegotiation could swap the peer's certificate under an established peer_id.
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.use_certificate(svid.leaf)
        ctx.use_privatekey(svid.private_key)
        for cert in svid.chain[1:]:
            ctx.add_extra_chain_cert(cert)
        ctx.check_privatekey()
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if server else 0)
        ctx.set_verify(mode, _verify_callback)
        self._cached = (svid, ctx)
        return ctx


def server_context(
    source: X509Source,
    *,
    authorize: Authorizer,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> TlsContext:
    """mTLS server side: requires a client SVID admitted by `authorize`."""
    return TlsContext(_Side.SERVER, source, authorize, handshake_timeout)


def client_context(
    source: X509Source,
    *,
    authorize: Authorizer,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> TlsContext:
    """mTLS client side: presents our SVID, accepts a server SVID admitted by `authorize`."""
    return TlsContext(_Side.CLIENT, source, authorize, handshake_timeout)
