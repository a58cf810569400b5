"""Records the datastore keeps besides registration entries, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, get_args

from insignia.selectors import Selector
from insignia.server.datastore.errors import InvalidRecord
from insignia.server.entries import RegistrationEntry
from insignia.spiffeid import SpiffeId, TrustDomain

AuthorityKind = Literal["x509", "jwt", "wit"]
AuthorityStatus = Literal["prepared", "active", "old"]
ChangeKind = Literal["entry", "agent", "bundle", "ca_key", "federation"]
ChangeOp = Literal["created", "updated", "deleted"]

AUTHORITY_KINDS: tuple[str, ...] = get_args(AuthorityKind)
AUTHORITY_STATUSES: tuple[str, ...] = get_args(AuthorityStatus)


def _now() -> datetime:
    return datetime.now(UTC)


def require_aware(name: str, value: datetime | None) -> None:
    """Naive times are ambiguous across hosts, so every stored time is timezone-aware."""
    if value is not None and value.tzinfo is None:
        raise InvalidRecord(name, value, "expected a timezone-aware time")


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An attested agent. `serial_number` is that of its current SVID (decimal string);
    `new_serial_number` that of a renewed SVID it has not used yet ("" when none). The
    `*svid_fingerprint`s are the SHA-256 (hex) of those SVIDs' DER: a serial alone can be
    copied by any other CA the bundle trusts (an upstream's sibling), the whole certificate
    cannot. "" means recorded before schema 0002 (the serial alone is checked until renewal)."""

    spiffe_id: SpiffeId
    attestation_type: str
    serial_number: str
    expires_at: datetime
    selectors: tuple[Selector, ...] = ()
    banned: bool = False
    can_reattest: bool = False
    new_serial_number: str = ""
    svid_fingerprint: str = ""
    new_svid_fingerprint: str = ""
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        if not self.attestation_type:
            raise InvalidRecord("attestation_type", self.attestation_type, "is empty")
        for name in ("expires_at", "created_at", "updated_at"):
            require_aware(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class BundleRecord:
    """A trust bundle in SPIFFE bundle format (JWKS JSON). `sequence` grows on every write."""

    trust_domain: TrustDomain
    document: str
    sequence: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FederationRecord:
    """A federation relationship as stored (checked by `insignia.server.federation`, which
    turns it into a `Relationship`). `bootstrap_bundle` is SPIFFE bundle JSON, "" for none."""

    trust_domain: TrustDomain
    bundle_endpoint_url: str
    profile: str
    endpoint_spiffe_id: str = ""
    bootstrap_bundle: str = ""
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CaKeyRecord:
    """One signing authority in the CA journal. The private key lives in the key manager.

    Taint and revocation are one-way: a write never clears them, so a server that has not yet
    seen another server's `authority ... taint` of its key cannot undo it by saving its slots.
    `public_key` is SubjectPublicKeyInfo DER. `certificate` is the CA certificate DER for
    X.509 authorities (chain to an upstream root appended, concatenated DER) and None for JWT.
    """

    kind: AuthorityKind
    key_id: str
    slot: str
    status: AuthorityStatus
    public_key: bytes
    not_after: datetime
    not_before: datetime
    certificate: bytes | None = None
    tainted: bool = False
    revoked: bool = False
    created_at: datetime = field(default_factory=_now)
    server_id: str = ""  # the server holding the private key ("" = before schema 0003)

    def __post_init__(self) -> None:
        if self.kind not in AUTHORITY_KINDS:
            raise InvalidRecord("kind", self.kind, f"expected one of {AUTHORITY_KINDS}")
        if self.status not in AUTHORITY_STATUSES:
            raise InvalidRecord("status", self.status, f"expected one of {AUTHORITY_STATUSES}")
        if not self.key_id:
            raise InvalidRecord("key_id", self.key_id, "is empty")
        if self.kind == "x509" and not self.certificate:
            raise InvalidRecord("certificate", self.certificate, "an X.509 authority needs one")
        for name in ("not_after", "not_before", "created_at"):
            require_aware(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class ServerRecord:
    """One server sharing the database, as it last reported itself."""

    id: str
    addresses: dict[str, str]
    x509_key_id: str
    jwt_key_id: str
    started_at: datetime
    heartbeat_at: datetime

    def __post_init__(self) -> None:
        if not self.id:
            raise InvalidRecord("server id", self.id, "is empty")
        for name in ("started_at", "heartbeat_at"):
            require_aware(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One committed change. `subject` is the entry id, agent SPIFFE ID, trust domain name,
    or `<kind>:<key_id>` of a CA key. Revisions only grow and are never reused."""

    revision: int
    kind: ChangeKind
    op: ChangeOp
    subject: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EntrySnapshot:
    """All entries as of `revision`: follow with `events_since(revision)` to stay current."""

    entries: list[RegistrationEntry]
    revision: int
