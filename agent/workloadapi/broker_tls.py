"""The Broker endpoint's mutual TLS (SPIFFE Broker Endpoint §3.1, §5).

The agent serves with its own X509-SVID (the one node attestation gave it, renewed by
insignia.agent.identity.keeper) and requires a client certificate that chains to our trust
domain's X.509 authorities. grpc asks for the certificate configuration at every handshake,
so a renewed agent SVID or a changed bundle reaches the next connection without a restart.
The broker's SPIFFE ID is then read from the verified client certificate, and that ID, not
anything the broker says, is what `authorized_brokers` is checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
from cryptography import x509

from insignia.agent.identity.node_attestation import AgentIdentity
from insignia.spiffeid import SpiffeId
from insignia.x509svid import InvalidX509Svid, leaf_spiffe_id

# The key grpc's auth context uses for the peer's leaf certificate, as PEM.
PEER_CERTIFICATE = "x509_pem_cert"

Material = tuple[bytes, bytes, bytes]
"""(certificate chain PEM, private key PEM, client roots PEM): one server configuration."""


def tls_material(identity: AgentIdentity) -> Material:
    chain_pem, key_pem = identity.credentials_pem()
    return chain_pem, key_pem, identity.bundle.x509_pem()


def certificate_configuration(material: Material) -> Any:
    chain_pem, key_pem, roots_pem = material
    return grpc.ssl_server_certificate_configuration(
        [(key_pem, chain_pem)], root_certificates=roots_pem
    )


class RotatingServerCertificate:
    """grpc's certificate-configuration fetcher: a new configuration whenever the agent's
    SVID or trust bundle has changed since the last handshake, None (keep it) otherwise."""

    def __init__(self, current: Callable[[], AgentIdentity]) -> None:
        self._current = current
        self._served = tls_material(current())

    def initial(self) -> Any:
        return certificate_configuration(self._served)

    def __call__(self) -> Any:
        material = tls_material(self._current())
        if material == self._served:
            return None
        self._served = material
        return certificate_configuration(material)


def broker_server_credentials(current: Callable[[], AgentIdentity]) -> grpc.ServerCredentials:
    """mTLS credentials for the Broker endpoint: the agent SVID, client certificates
    required and verified against our trust domain's bundle, both followed as they rotate."""
    fetcher = RotatingServerCertificate(current)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial(), fetcher, require_client_authentication=True
    )


class NoClientIdentity(Exception):
    """The caller presented no X509-SVID we can read a SPIFFE ID from: UNAUTHENTICATED."""


def presented_spiffe_id(auth_context: Mapping[str, Iterable[bytes]]) -> SpiffeId:
    """The SPIFFE ID of the client certificate grpc verified in the handshake, or
    NoClientIdentity naming why there is none."""
    certificates = list(auth_context.get(PEER_CERTIFICATE, ()))
    if not certificates:
        raise NoClientIdentity("the caller presented no client certificate (an X509-SVID)")
    try:
        leaf = x509.load_pem_x509_certificate(certificates[0])
    except ValueError as exc:
        raise NoClientIdentity(f"the client certificate cannot be read: {exc}") from None
    try:
        return leaf_spiffe_id(leaf)
    except InvalidX509Svid as exc:
        raise NoClientIdentity(f"the client certificate is not an X509-SVID: {exc}") from None
