"""One GET of a peer's bundle endpoint, bounded in time and size, with the peer
authenticated by its profile (SPIFFE Federation §5):

- https_web: Web PKI, the relationship's `web_ca_file` or else the system's roots (or
  `SSL_CERT_FILE`), and the URL's host name;
- https_spiffe: the chain must verify against the trust anchors given (the bootstrap bundle,
  then the last bundle fetched) and the leaf must carry exactly `endpoint_id`.

Every failure is a `FetchFailed` of one line; nothing the peer sends is trusted further
than the checks in `acceptance`.
"""

from __future__ import annotations

import ssl

import h11
import trio
from cryptography import x509

from insignia.bundle import Bundle
from insignia.server.federation.acceptance import MAX_BUNDLE_BYTES
from insignia.server.federation.relationship import Relationship
from insignia.x509svid import InvalidX509Svid, leaf_spiffe_id

FETCH_TIMEOUT = 10.0
_RECEIVE = 65536


class FetchFailed(Exception):
    """The endpoint could not be reached, did not authenticate, or answered badly."""


def client_context(relationship: Relationship, anchors: Bundle | None) -> ssl.SSLContext:
    if relationship.profile == "https_web":
        cafile = relationship.web_ca_file
        try:
            return ssl.create_default_context(cafile=None if cafile is None else str(cafile))
        except (OSError, ssl.SSLError) as exc:
            raise FetchFailed(f"web_ca_file {cafile}: {_one_line(exc)}") from None
    if anchors is None or not anchors.x509_authorities:
        raise FetchFailed(
            "https_spiffe needs the endpoint trust domain's bundle: give a bootstrap bundle "
            "(trust_domain_bundle) or store one with `bundle set`"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # the SPIFFE ID is checked instead, after the handshake
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=anchors.x509_pem().decode("ascii"))
    return context


def check_endpoint_id(relationship: Relationship, leaf_der: bytes | None) -> None:
    """https_spiffe: the endpoint's leaf must name the configured SPIFFE ID."""
    if relationship.endpoint_id is None:
        return
    if leaf_der is None:
        raise FetchFailed("the endpoint presented no certificate")
    try:
        presented = leaf_spiffe_id(x509.load_der_x509_certificate(leaf_der))
    except (ValueError, InvalidX509Svid) as exc:
        raise FetchFailed(f"the endpoint's certificate is not an X509-SVID: {exc}") from None
    if presented != relationship.endpoint_id:
        raise FetchFailed(
            f"the endpoint presented {presented}, expected {relationship.endpoint_id}"
        )


async def fetch_bundle(
    relationship: Relationship,
    anchors: Bundle | None,
    *,
    limit: int = MAX_BUNDLE_BYTES,
) -> bytes:
    """The body of a 200 answer to GET, at most `limit` bytes, within FETCH_TIMEOUT;
    FetchFailed otherwise."""
    timeout = FETCH_TIMEOUT
    context = client_context(relationship, anchors)
    host, port = relationship.host_port
    try:
        with trio.fail_after(timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
            async with stream:
                await stream.do_handshake()
                check_endpoint_id(relationship, stream.getpeercert(binary_form=True))
                return await _get(stream, host, relationship.target, limit)
    except trio.TooSlowError:
        raise FetchFailed(f"no whole answer within {timeout:g} s") from None
    except OSError as exc:
        raise FetchFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__ or exc
        raise FetchFailed(f"TLS or connection failure: {_one_line(cause)}") from None
    except h11.RemoteProtocolError as exc:
        raise FetchFailed(f"bad HTTP answer: {exc}") from None


async def _get(
    stream: trio.SSLStream[trio.SocketStream], host: str, target: str, limit: int
) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=target,
        headers=[("host", host), ("accept", "application/json"), ("connection", "close")],
    )
    await stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(_RECEIVE)))
            continue
        if isinstance(event, h11.Response):
            if event.status_code != 200:
                raise FetchFailed(f"the endpoint answered HTTP {event.status_code}")
            for name, value in event.headers:
                if name == b"content-length" and int(value) > limit:
                    raise FetchFailed(f"bundle is over {limit} bytes (content-length {int(value)})")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                raise FetchFailed(f"bundle is over {limit} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            raise FetchFailed("the endpoint closed the connection before the answer ended")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
