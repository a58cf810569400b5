"""Signing SVIDs for callers: the checks a CSR must pass, then the X.509, JWT or WIT signature.

The agent API and the admin API's `mint` both come through here, so a CSR is refused the same
way everywhere: bad signature, a CA request, a URI SAN other than the one ID asked for, or any
SAN the server did not decide on itself (DNS names come from the entry, never the CSR).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from insignia.bundle import public_key_to_jwk
from insignia.daemon.reserved_ids import AGENT_PREFIX, is_agent_id
from insignia.daemon.server_name import SERVER_TLS_NAME, is_reserved_dns_name
from insignia.jwtsvid import AudienceLimits
from insignia.keys import InvalidKey, PrivateKey, key_type_of
from insignia.server.ca.jwt_signing import sign_jwt_svid
from insignia.server.ca.wit_signing import sign_wit_svid
from insignia.server.ca.x509_leaf import CsrRequest, InvalidCsr, issue_leaf, parse_csr
from insignia.server.ca.x509ca import SigningAuthority
from insignia.server.entries import MIN_JWT_SVID_TTL, PATH_REQUIRED
from insignia.spiffeid import InvalidSpiffeId, SpiffeId, TrustDomain
from insignia.wit import confirmation_key

# A JWK is a few hundred bytes (RSA-4096: ~800); anything much larger is not one.
MAX_JWK_BYTES = 4096


class SigningRefused(ValueError):
    """A signing request the server will not honour; `reason` is sent back to the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoActiveAuthority(RuntimeError):
    """The CA has no usable active key: the first seconds of a fresh start, or while an
    active key tainted through another server waits for its successor (docs/ha.md)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"no active {kind} authority yet; retry shortly")
        self.kind = kind


def checked_csr(der: bytes, spiffe_id: SpiffeId, *, id_optional: bool = False) -> CsrRequest:
    """Parse `der` and insist it asks for exactly `spiffe_id` and nothing more.

    `id_optional`: for agent SVIDs, the agent may not know its ID before attestation (it
    depends on the attestor), so a CSR without any URI SAN is accepted too (as SPIRE does).
    """
    request = _checked_shape(der)
    if request.uri_sans != (str(spiffe_id),) and not (id_optional and not request.uri_sans):
        raise SigningRefused(
            f"CSR refused: URI SANs {list(request.uri_sans)}; expected exactly [{spiffe_id}]"
        )
    return request


def checked_agent_csr(der: bytes, trust_domain: TrustDomain) -> SpiffeId | None:
    """Before attestation: every check an agent's CSR can pass without knowing the agent ID.

    The attestor decides the ID, and may use up something single-use doing so (a join
    token), so a CSR that would be refused anyway is refused first. Returns the agent ID the
    CSR names, if it names one (`checked_csr` later insists it is the attested one).
    """
    request = _checked_shape(der)
    if not request.uri_sans:
        return None
    expected = f"expected none or one agent ID of {trust_domain.id_string()}{AGENT_PREFIX}..."
    if len(request.uri_sans) != 1:
        raise SigningRefused(f"CSR refused: URI SANs {list(request.uri_sans)}; {expected}")
    try:
        agent_id = SpiffeId.parse(request.uri_sans[0])
    except InvalidSpiffeId as exc:
        raise SigningRefused(f"CSR refused: {exc}; {expected}") from exc
    if not agent_id.member_of(trust_domain) or not is_agent_id(agent_id):
        raise SigningRefused(f"CSR refused: URI SAN {agent_id}; {expected}")
    return agent_id


def _checked_shape(der: bytes) -> CsrRequest:
    """The checks that do not depend on the ID asked for: a valid, self-signed leaf request
    with a supported key and no SANs but URIs."""
    try:
        request = parse_csr(der)
    except InvalidCsr as exc:
        raise SigningRefused(f"CSR refused: {exc}") from exc
    if request.requests_ca:
        raise SigningRefused("CSR refused: it asks for a CA certificate (BasicConstraints CA=true)")
    if request.dns_names:
        raise SigningRefused(
            f"CSR refused: extra DNS SANs {list(request.dns_names)}; DNS names come from the entry"
        )
    if request.other_sans:  # IP, e-mail, directory names, ...
        raise SigningRefused(f"CSR refused: extra SANs {list(request.other_sans)}")
    try:
        key_type_of(request.public_key)
    except InvalidKey as exc:
        raise SigningRefused(f"CSR refused: {exc}") from exc
    return request


@dataclass(frozen=True, slots=True)
class SignedX509:
    chain_der: bytes
    expires_at: datetime
    serial_number: int
    fingerprint: str  # SHA-256 of the leaf's DER, hex (see `svid_fingerprint`)


def svid_fingerprint(leaf: x509.Certificate) -> str:
    """What identifies one certificate exactly: a serial can be reused by another CA."""
    return leaf.fingerprint(hashes.SHA256()).hex()


def sign_x509_svid(
    authority: SigningAuthority | None,
    csr_der: bytes,
    spiffe_id: SpiffeId,
    ttl: timedelta,
    dns_names: Sequence[str] = (),
    now: datetime | None = None,
    *,
    id_optional: bool = False,
) -> SignedX509:
    """Check the CSR and sign it; NotAfter is clamped to the CA's (issue_leaf does that).

    The server's TLS name is refused here too, whatever the caller validated: this is the one
    path every workload X509-SVID takes (the server's own SVID is built in server/tls.py)."""
    _check_path(spiffe_id)
    if authority is None:
        raise NoActiveAuthority("X.509")
    reserved = [name for name in dns_names if is_reserved_dns_name(name)]
    if reserved:
        raise SigningRefused(
            f"DNS names {reserved} refused: {SERVER_TLS_NAME!r} is reserved for the server's "
            "own certificate (agents trust it as the server)"
        )
    request = checked_csr(csr_der, spiffe_id, id_optional=id_optional)
    leaf = issue_leaf(request.public_key, spiffe_id, ttl, authority, dns_names, now)
    return SignedX509(
        leaf.der + authority.chain_der,
        leaf.not_after,
        leaf.serial_number,
        hashlib.sha256(leaf.der).hexdigest(),  # as `svid_fingerprint`, without a parse
    )


def _check_path(spiffe_id: SpiffeId) -> None:
    if not spiffe_id.path:
        raise SigningRefused(f"{spiffe_id}: {PATH_REQUIRED}")


@dataclass(frozen=True, slots=True)
class SignedJwt:
    token: str
    issued_at: int
    expires_at: int


def sign_jwt(
    active: tuple[str, PrivateKey] | None,
    key_not_after: datetime | None,
    spiffe_id: SpiffeId,
    audience: Sequence[str],
    ttl: timedelta,
    now: datetime,
    limits: AudienceLimits,
    issuer: str = "",
) -> SignedJwt:
    """A JWT-SVID whose `exp` never passes the signing key's own expiry.

    InvalidAudience (checked first, before any key is touched) when `audience` breaks `limits`.
    """
    audience = limits.check(audience)
    _check_path(spiffe_id)
    kid, key, ttl = _signing_key("JWT", active, key_not_after, ttl, now)
    token = sign_jwt_svid(spiffe_id, audience, ttl, key, kid, now=now, issuer=issuer or None)
    iat = int(now.timestamp())
    return SignedJwt(token, iat, iat + int(ttl.total_seconds()))


def _signing_key(
    what: str,
    active: tuple[str, PrivateKey] | None,
    key_not_after: datetime | None,
    ttl: timedelta,
    now: datetime,
) -> tuple[str, PrivateKey, timedelta]:
    """The kid and key that sign a token of `what`, and its TTL cut to the key's expiry."""
    if ttl < timedelta(seconds=MIN_JWT_SVID_TTL):
        raise SigningRefused(
            f"ttl {ttl.total_seconds():g} s is too short for a {what}-SVID; "
            f"expected at least {MIN_JWT_SVID_TTL} s"
        )
    if active is None or key_not_after is None:
        raise NoActiveAuthority(what)
    kid, key = active
    ttl = min(ttl, key_not_after - now)
    if ttl < timedelta(seconds=MIN_JWT_SVID_TTL):  # the key expires first: wait for the next
        raise NoActiveAuthority(what)
    return kid, key, ttl


def sign_wit(
    active: tuple[str, PrivateKey] | None,
    key_not_after: datetime | None,
    spiffe_id: SpiffeId,
    public_jwk: str,
    ttl: timedelta,
    now: datetime,
) -> SignedJwt:
    """A WIT-SVID binding `public_jwk` (the workload's key as a JWK with `alg`, made by the
    agent), whose `exp` never passes the signing key's own expiry. The JWK is re-encoded
    from the parsed key, so only its public members and `alg` reach the token."""
    _check_path(spiffe_id)
    if len(public_jwk) > MAX_JWK_BYTES:
        raise SigningRefused(f"public key JWK is over {MAX_JWK_BYTES} bytes")
    try:
        jwk = json.loads(public_jwk)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise SigningRefused(f"public key is not JSON: {exc}") from None
    try:
        key, alg = confirmation_key(jwk)
    except ValueError as exc:
        raise SigningRefused(f"public key: {exc}") from None
    kid, signer, ttl = _signing_key("WIT", active, key_not_after, ttl, now)
    cnf = {**public_key_to_jwk(key), "alg": alg}
    token = sign_wit_svid(spiffe_id, cnf, ttl, signer, kid, now)
    iat = int(now.timestamp())
    return SignedJwt(token, iat, iat + int(ttl.total_seconds()))
