"""The server's signing authorities: X.509 CAs, JWT and WIT keys, their slots, and the bundle.

State is an immutable `CaState` swapped whole, so gRPC handlers on the event loop always see a
consistent set while a rotation step builds the next state in a worker thread. Decisions come
from `insignia.server.ca.rotation`; this module adds keys, certificates and the journal records that
let a restart pick up the same slots (`CaKeyRecord`, stored by the datastore).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from insignia.bundle import JwtPublicKey, load_der_certificates
from insignia.keys import (
    KeyType,
    PrivateKey,
    generate_key,
    private_key_from_pem,
    public_key_from_der,
    public_key_to_der,
)
from insignia.server.ca.keymanager import KeyManager
from insignia.server.ca.rotation import AuthorityRecord, AuthorityState
from insignia.server.ca.x509ca import SigningAuthority, build_intermediate_ca, build_root_ca
from insignia.server.datastore.records import AuthorityKind, CaKeyRecord
from insignia.spiffeid import TrustDomain


class UpstreamError(ValueError):
    """The configured upstream CA files cannot be used; names the file and the problem."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"upstream CA {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class Upstream:
    """An upstream CA: the authority that signs our CA, and the root that goes in the bundle."""

    authority: SigningAuthority
    root: x509.Certificate


def load_upstream(cert_file: Path, key_file: Path) -> Upstream:
    """Read the upstream CA cert (followed by its chain up to the root) and its key."""
    try:
        certs = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise UpstreamError(cert_file, f"cannot read PEM certificates: {exc}") from exc
    try:
        key = private_key_from_pem(key_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise UpstreamError(key_file, f"cannot read the PEM private key: {exc}") from exc
    root = certs[-1]
    if root.issuer != root.subject:
        raise UpstreamError(cert_file, "must end with the self-signed root of the upstream chain")
    chain = tuple(certs[:-1]) if len(certs) > 1 else ()
    try:
        return Upstream(SigningAuthority(certs[0], key, chain), root)
    except ValueError as exc:
        raise UpstreamError(cert_file, str(exc)) from exc


@dataclass(frozen=True)
class X509Slot:
    record: AuthorityRecord
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # CA cert then upstream intermediates (no root)
    authority: SigningAuthority | None  # None when the key manager lost the key


@dataclass(frozen=True)
class KeySlot:
    """A bare signing key named by its `kid`: a JWT-SVID or a WIT-SVID authority."""

    record: AuthorityRecord
    public_key: JwtPublicKey
    private_key: PrivateKey | None


# Authorities that are bare keys (no certificate); each kind rotates on its own.
KeyKind = Literal["jwt", "wit"]
KEY_KINDS: tuple[KeyKind, ...] = ("jwt", "wit")


@dataclass(frozen=True)
class CaState:
    x509: tuple[X509Slot, ...] = ()
    jwt: tuple[KeySlot, ...] = ()
    wit: tuple[KeySlot, ...] = ()

    def slots(self, kind: AuthorityKind) -> Sequence[X509Slot | KeySlot]:
        return self.x509 if kind == "x509" else self.key_slots(kind)

    def key_slots(self, kind: KeyKind) -> tuple[KeySlot, ...]:
        return self.jwt if kind == "jwt" else self.wit

    def records(self, kind: AuthorityKind) -> list[AuthorityRecord]:
        return [s.record for s in self.slots(kind)]

    def active_x509(self) -> SigningAuthority | None:
        """The CA that signs now; none while the active one is tainted (through another
        server) and not yet replaced: a tainted key signs nothing more."""
        slot = next((s for s in self.x509 if _signs(s.record)), None)
        return slot.authority if slot else None

    def _active_key_slot(self, kind: KeyKind) -> KeySlot | None:
        return next((s for s in self.key_slots(kind) if _signs(s.record)), None)

    def active_key(self, kind: KeyKind) -> tuple[str, PrivateKey] | None:
        """The kid and private key that sign tokens of `kind` now, if this server has one."""
        slot = self._active_key_slot(kind)
        if slot is None or slot.private_key is None:
            return None
        return slot.record.authority_id, slot.private_key

    def active_key_not_after(self, kind: KeyKind) -> datetime | None:
        slot = self._active_key_slot(kind)
        return slot.record.not_after if slot else None

    def with_slots(self, kind: AuthorityKind, slots: Sequence[X509Slot | KeySlot]) -> CaState:
        """A copy whose slots of `kind` are `slots`."""
        if kind == "x509":
            return replace(self, x509=tuple(s for s in slots if isinstance(s, X509Slot)))
        keys = tuple(s for s in slots if isinstance(s, KeySlot))
        return replace(self, jwt=keys) if kind == "jwt" else replace(self, wit=keys)

    def tainted(self, kind: AuthorityKind) -> list[str]:
        return [r.authority_id for r in self.records(kind) if r.tainted]


def x509_authority_id(certificate: x509.Certificate) -> str:
    """Hex SubjectKeyIdentifier: the name the bundle, taint lists and CLI use for a CA."""
    try:
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return ski.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest.hex()


def key_name(kind: AuthorityKind, authority_id: str) -> str:
    return f"{kind}-{authority_id}"


@dataclass(frozen=True)
class CaSettings:
    trust_domain: TrustDomain
    x509_key_type: KeyType
    jwt_key_type: KeyType
    ttl: timedelta
    upstream: Upstream | None = None


def _signs(record: AuthorityRecord) -> bool:
    return record.state is AuthorityState.ACTIVE and not record.tainted


def new_x509_slot(settings: CaSettings, keys: KeyManager, now: datetime) -> X509Slot:
    """Generate a key and a CA certificate, as a prepared slot (blocking: key generation)."""
    td = settings.trust_domain
    key = generate_key(settings.x509_key_type)
    if settings.upstream is None:
        authority = build_root_ca(td, key, settings.ttl, now)
    else:
        parent = settings.upstream.authority
        cert = build_intermediate_ca(parent, key.public_key(), td, settings.ttl, now)
        authority = SigningAuthority(cert, key, (cert, *parent.chain))  # root excluded
    authority_id = x509_authority_id(authority.certificate)
    keys.store(key_name("x509", authority_id), key)
    record = AuthorityRecord(
        authority_id,
        AuthorityState.PREPARED,
        authority.certificate.not_valid_before_utc,
        authority.certificate.not_valid_after_utc,
    )
    return X509Slot(record, authority.certificate, authority.chain, authority)


def new_key_slot(kind: KeyKind, settings: CaSettings, keys: KeyManager, now: datetime) -> KeySlot:
    """A fresh JWT or WIT signing key with a random `kid`, as a prepared slot. Hex, so a kid
    can never start with '-' and be taken for an option by `authority jwt taint KID`; 128
    random bits, so a kid is unique across the whole bundle (WIT-SVID §6.1)."""
    kid = secrets.token_hex(16)
    key = generate_key(settings.jwt_key_type)
    keys.store(key_name(kind, kid), key)
    record = AuthorityRecord(kid, AuthorityState.PREPARED, now, now + settings.ttl)
    return KeySlot(record, key.public_key(), key)


# --- journal records ------------------------------------------------------------------------


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def to_records(state: CaState, server_id: str) -> list[CaKeyRecord]:
    out = []
    for s in state.x509:
        out.append(
            CaKeyRecord(
                kind="x509",
                key_id=s.record.authority_id,
                slot="x509",
                status=s.record.state.value,
                public_key=public_key_to_der(s.certificate.public_key()),
                not_after=s.record.not_after,
                not_before=s.record.not_before,
                certificate=b"".join(_der(c) for c in (s.chain or (s.certificate,))),
                tainted=s.record.tainted,
                server_id=server_id,
            )
        )
    for kind in KEY_KINDS:
        out.extend(_key_record(kind, j, server_id) for j in state.key_slots(kind))
    return out


def _key_record(kind: KeyKind, j: KeySlot, server_id: str) -> CaKeyRecord:
    return CaKeyRecord(
        kind=kind,
        key_id=j.record.authority_id,
        slot=kind,
        status=j.record.state.value,
        public_key=public_key_to_der(j.public_key),
        not_after=j.record.not_after,
        not_before=j.record.not_before,
        tainted=j.record.tainted,
        server_id=server_id,
    )


def from_records(records: Sequence[CaKeyRecord], keys: KeyManager) -> CaState:
    """Rebuild the state from the journal. A slot whose key is gone (memory key manager
    after a restart) can no longer sign: an active one is demoted to old, so it stays in the
    bundle until it expires, and a prepared one is dropped."""
    x509_slots: list[X509Slot] = []
    key_slots: dict[KeyKind, list[KeySlot]] = {kind: [] for kind in KEY_KINDS}
    for rec in records:
        if rec.revoked:
            continue
        record = authority_record(rec)
        if rec.kind == "x509":
            assert rec.certificate is not None
            certs = load_der_certificates(rec.certificate)
            # A self-signed CA has an empty chain (the root is in the bundle); see x509ca.
            chain = () if certs[0].issuer == certs[0].subject else certs
            key = keys.load(key_name("x509", rec.key_id))
            authority = SigningAuthority(certs[0], key, chain) if key is not None else None
            slot = X509Slot(_without_key(record, key), certs[0], chain, authority)
            if slot.record.state is not AuthorityState.PREPARED or key is not None:
                x509_slots.append(slot)
        else:
            public = public_key_from_der(rec.public_key)
            key = keys.load(key_name(rec.kind, rec.key_id))
            jslot = KeySlot(_without_key(record, key), public, key)
            if jslot.record.state is not AuthorityState.PREPARED or key is not None:
                key_slots[rec.kind].append(jslot)
    return CaState(tuple(x509_slots), tuple(key_slots["jwt"]), tuple(key_slots["wit"]))


def authority_record(rec: CaKeyRecord) -> AuthorityRecord:
    """What the rotation rules see of a journal row (whoever's it is)."""
    return AuthorityRecord(
        rec.key_id, AuthorityState(rec.status), rec.not_before, rec.not_after, rec.tainted
    )


def x509_certificate(rec: CaKeyRecord) -> x509.Certificate:
    """The CA certificate of an X.509 journal row (its chain follows it in the DER)."""
    assert rec.certificate is not None
    return load_der_certificates(rec.certificate)[0]


def _without_key(record: AuthorityRecord, key: PrivateKey | None) -> AuthorityRecord:
    if key is None and record.state is AuthorityState.ACTIVE:
        return replace(record, state=AuthorityState.OLD)
    return record
