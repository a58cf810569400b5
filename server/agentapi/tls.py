"""The server's own identity on the agent API, and the two TLS listeners' credentials.

grpcio's server credentials either require and verify a client certificate or never ask for
one (`GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY` vs
`GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE` in its Cython layer; there is no "request but do not
require"). So Attest, which runs before the agent has an SVID, is served on a server-auth-only
port, and every other RPC on a port that requires an agent SVID chaining to our bundle.

Both use `dynamic_ssl_server_credentials`: grpc asks `fetch()` on every new connection, so a
rotated server SVID or a new bundle applies to the next handshake without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from insignia.daemon.server_name import SERVER_TLS_NAME
from insignia.keys import KeyType, generate_key, private_key_to_pem
from insignia.server.ca.x509_leaf import build_leaf
from insignia.server.ca.x509ca import SigningAuthority
from insignia.server.entries import server_spiffe_id
from insignia.spiffeid import TrustDomain


@dataclass(frozen=True)
class ServerIdentity:
    """The server's X509-SVID (PEM chain, leaf first) and its PEM key."""

    chain_pem: bytes
    key_pem: bytes
    not_before: datetime
    not_after: datetime

    def renew_at(self) -> datetime:
        return self.not_before + (self.not_after - self.not_before) / 2


def issue_server_identity(
    authority: SigningAuthority, trust_domain: TrustDomain, ttl: timedelta, now: datetime
) -> ServerIdentity:
    key = generate_key(KeyType.EC_P256)
    leaf = build_leaf(
        key.public_key(), server_spiffe_id(trust_domain), ttl, authority, (SERVER_TLS_NAME,), now
    )
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, *authority.chain))
    return ServerIdentity(
        chain, private_key_to_pem(key), leaf.not_valid_before_utc, leaf.not_valid_after_utc
    )


class DynamicCredentials:
    """Server credentials whose certificate (and client roots) can be swapped at any time.

    `update()` runs on the event loop; `_fetch` runs on grpc's threads under the GIL and only
    reads one attribute, so no lock is needed.
    """

    def __init__(self, identity: ServerIdentity, roots_pem: bytes | None) -> None:
        self._require_client = roots_pem is not None
        self._pending: grpc.ServerCertificateConfiguration | None = None
        initial = self._config(identity, roots_pem)
        self.credentials = grpc.dynamic_ssl_server_credentials(
            initial,
            self._fetch,  # type: ignore[arg-type]  # grpc documents None as "unchanged"
            require_client_authentication=self._require_client,
        )

    def _config(
        self, identity: ServerIdentity, roots_pem: bytes | None
    ) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(identity.key_pem, identity.chain_pem)], root_certificates=roots_pem
        )

    def update(self, identity: ServerIdentity, roots_pem: bytes | None) -> None:
        if self._require_client and roots_pem is None:
            raise ValueError("the mTLS listener needs client roots")
        self._pending = self._config(identity, roots_pem if self._require_client else None)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        pending, self._pending = self._pending, None
        return pending


def peer_certificate(context: grpc.aio.ServicerContext[object, object]) -> x509.Certificate | None:
    """The client's leaf certificate from the TLS session, if it presented one."""
    pems = list(context.auth_context().get("x509_pem_cert", ()))
    return _parse_pem(pems[0]) if pems else None


_PARSED: dict[bytes, x509.Certificate] = {}


def _parse_pem(pem: bytes) -> x509.Certificate:
    """Parse with a small cache: an agent presents the same cert on every RPC of a connection."""
    cert = _PARSED.get(pem)
    if cert is None:
        if len(_PARSED) > 4096:
            _PARSED.clear()
        cert = _PARSED[pem] = x509.load_pem_x509_certificate(pem)
    return cert
