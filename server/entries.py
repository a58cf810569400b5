"""Registration entries: the model, and the validation every entry passes before it is stored.

An entry says "a caller holding these selectors, below this parent, gets this SPIFFE ID".
Everything that reaches the datastore went through `validate_entry`, so the rest of the server
works with typed, canonical values and never re-checks strings.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from insignia._dns import MAX_DNS_NAME_LENGTH, is_dns_label
from insignia._shown import shown
from insignia.daemon.reserved_ids import (
    AGENT_PREFIX,
    RESERVED_REASON,
    SERVER_PATH,
    is_agent_id,
    is_reserved,
)
from insignia.daemon.server_name import SERVER_TLS_NAME, is_reserved_dns_name
from insignia.selectors import InvalidSelector, Selector, canonical
from insignia.server.ca.rotation import longest_svid_ttl
from insignia.spiffeid import InvalidSpiffeId, SpiffeId, TrustDomain

MAX_HINT_LENGTH: Final = 1024
MAX_ENTRY_ID_LENGTH: Final = 255
# Selector values are indexed; PostgreSQL refuses btree rows above ~2.7 kB.
MAX_SELECTOR_VALUE_BYTES: Final = 1024
# Per entry: every one is matched, signed into SVIDs and sent to agents (10,000 selectors and
# DNS names took 3.1 s to create); real entries use a handful.
MAX_SELECTORS: Final = 64
MAX_DNS_NAMES: Final = 64
MAX_FEDERATES_WITH: Final = 64
# Whole seconds: a JWT-SVID of 1 s could be expired by the time it is received.
MIN_JWT_SVID_TTL: Final = 2
# An SVID names a workload, and a workload's ID has a path: X509-SVID §3.1 says a leaf's
# MUST. Entry validation and every signing path (server/signing.py) apply this one rule.
PATH_REQUIRED: Final = "expected a path after the trust domain (an SVID's ID names a workload)"
# 9999-12-31T23:59:59Z, the last second `datetime` (and an X.509 GeneralizedTime) can hold.
MAX_EXPIRES_AT: Final = 253402300799

_ENTRY_ID: Final = re.compile(r"[A-Za-z0-9._-]+")


def server_spiffe_id(trust_domain: TrustDomain) -> SpiffeId:
    """The server's own ID; entries parented to it are node aliases."""
    return SpiffeId(trust_domain, SERVER_PATH)


class InvalidEntry(ValueError):
    """An entry field that failed validation; `field` and `value` name it."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"invalid entry {field} {shown(value)}: {reason}")


@dataclass(frozen=True, slots=True)
class RegistrationEntry:
    """A validated entry. TTL 0 means "the server default". `revision` counts updates."""

    id: str
    spiffe_id: SpiffeId
    parent_id: SpiffeId
    selectors: tuple[Selector, ...]
    x509_svid_ttl: int = 0
    jwt_svid_ttl: int = 0
    wit_svid_ttl: int = 0
    dns_names: tuple[str, ...] = ()
    federates_with: tuple[TrustDomain, ...] = ()
    hint: str = ""
    admin: bool = False
    downstream: bool = False
    expires_at: datetime | None = None
    revision: int = 0
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def is_node_alias(self) -> bool:
        return self.parent_id.path == SERVER_PATH

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True, slots=True)
class EntryLimits:
    """What the server allows: its trust domain and the longest SVID TTLs its CA can honour.
    WIT-SVIDs take the JWT-SVID limits: both are tokens signed by a bare key of the same life."""

    trust_domain: TrustDomain
    max_x509_svid_ttl: int
    max_jwt_svid_ttl: int

    @classmethod
    def for_ca(cls, trust_domain: TrustDomain, ca_ttl: timedelta) -> EntryLimits:
        longest = int(longest_svid_ttl(ca_ttl).total_seconds())
        return cls(trust_domain, longest, longest)


@dataclass(frozen=True, slots=True)
class Defaults:
    """The server's default SVID TTLs, which a TTL of 0 (an entry's, a mint request's) means.
    A WIT-SVID's default is the JWT-SVID's (`default_jwt_svid_ttl`)."""

    x509_svid_ttl: timedelta
    jwt_svid_ttl: timedelta

    def x509(self, seconds: int) -> timedelta:
        return ttl_or_default(seconds, self.x509_svid_ttl)

    def jwt(self, seconds: int) -> timedelta:
        return ttl_or_default(seconds, self.jwt_svid_ttl)

    def wit(self, seconds: int) -> timedelta:
        return ttl_or_default(seconds, self.jwt_svid_ttl)


def ttl_or_default(seconds: int, default: timedelta) -> timedelta:
    """A TTL in whole seconds, 0 standing for `default`; the one place that rule lives."""
    if seconds < 0:
        raise ValueError(f"ttl {seconds}: expected a positive number of seconds")
    return timedelta(seconds=seconds) if seconds else default


def new_entry_id() -> str:
    return uuid.uuid4().hex


def validate_entry(
    *,
    spiffe_id: str | SpiffeId,
    parent_id: str | SpiffeId,
    selectors: Iterable[str | Selector],
    limits: EntryLimits,
    x509_svid_ttl: int = 0,
    jwt_svid_ttl: int = 0,
    wit_svid_ttl: int = 0,
    dns_names: Iterable[str] = (),
    federates_with: Iterable[str | TrustDomain] = (),
    hint: str = "",
    admin: bool = False,
    downstream: bool = False,
    expires_at: datetime | None = None,
    entry_id: str | None = None,
    now: datetime | None = None,
) -> RegistrationEntry:
    """Build a canonical entry from untrusted input or raise `InvalidEntry` naming the field.

    Pass `entry_id` to keep an existing entry's id on update; the datastore owns `revision`
    and `created_at` of stored entries.
    """
    now = now if now is not None else datetime.now(UTC)
    td = limits.trust_domain
    sid = _member_id("spiffe_id", spiffe_id, td)
    if is_reserved(sid):
        raise InvalidEntry("spiffe_id", str(sid), RESERVED_REASON)
    pid = _member_id("parent_id", parent_id, td)
    if is_reserved(pid) and not (pid.path == SERVER_PATH or is_agent_id(pid)):
        raise InvalidEntry(
            "parent_id",
            str(pid),
            f"expected the server ID, an agent ID ({AGENT_PREFIX}...) or a workload ID",
        )
    if pid == sid:
        raise InvalidEntry("parent_id", str(pid), "an entry cannot be its own parent")
    return RegistrationEntry(
        id=_entry_id(entry_id),
        spiffe_id=sid,
        parent_id=pid,
        selectors=_selectors(selectors),
        x509_svid_ttl=_ttl("x509_svid_ttl", x509_svid_ttl, limits.max_x509_svid_ttl),
        jwt_svid_ttl=_ttl("jwt_svid_ttl", jwt_svid_ttl, limits.max_jwt_svid_ttl, MIN_JWT_SVID_TTL),
        wit_svid_ttl=_ttl("wit_svid_ttl", wit_svid_ttl, limits.max_jwt_svid_ttl, MIN_JWT_SVID_TTL),
        dns_names=_dns_names(dns_names),
        federates_with=_federates_with(federates_with, td),
        hint=_hint(hint),
        admin=_flag("admin", admin),
        downstream=_flag("downstream", downstream),
        expires_at=_expires_at(expires_at, now),
        created_at=now,
    )


def _member_id(name: str, value: str | SpiffeId, td: TrustDomain) -> SpiffeId:
    try:
        sid = value if isinstance(value, SpiffeId) else SpiffeId.parse(value)
    except InvalidSpiffeId as exc:
        raise InvalidEntry(name, value, exc.reason) from exc
    if not sid.member_of(td):
        raise InvalidEntry(name, str(sid), f"expected an ID in trust domain {td}")
    if not sid.path:
        raise InvalidEntry(name, str(sid), PATH_REQUIRED)
    return sid


def _entry_id(value: str | None) -> str:
    if value is None:
        return new_entry_id()
    if not isinstance(value, str) or not _ENTRY_ID.fullmatch(value):
        raise InvalidEntry("id", value, "expected characters [A-Za-z0-9._-]")
    if len(value) > MAX_ENTRY_ID_LENGTH:
        raise InvalidEntry("id", value, f"longer than {MAX_ENTRY_ID_LENGTH} characters")
    return value


def _selectors(values: Iterable[str | Selector]) -> tuple[Selector, ...]:
    if isinstance(values, str):
        raise InvalidEntry("selectors", values, "expected a list of 'type:value' selectors")
    values = list(values)
    _at_most("selectors", len(values), MAX_SELECTORS)
    parsed: list[Selector] = []
    for value in values:
        if isinstance(value, Selector):
            parsed.append(value)
            continue
        if not isinstance(value, str):
            raise InvalidEntry("selectors", value, "expected a 'type:value' string")
        try:
            parsed.append(Selector.parse(value))
        except InvalidSelector as exc:
            raise InvalidEntry("selectors", value, exc.reason) from exc
    if not parsed:
        raise InvalidEntry("selectors", [], "at least one selector is required")
    for sel in parsed:
        if len(sel.value.encode()) > MAX_SELECTOR_VALUE_BYTES:
            raise InvalidEntry(
                "selectors", str(sel), f"value longer than {MAX_SELECTOR_VALUE_BYTES} bytes"
            )
    return canonical(parsed)


def _ttl(name: str, value: int, maximum: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEntry(name, value, "expected whole seconds")
    if value < 0:
        raise InvalidEntry(name, value, "expected 0 (server default) or a positive number")
    if value > maximum:
        raise InvalidEntry(name, value, f"longer than {maximum} s, the longest the CA's ttl allows")
    if 0 < value < minimum:
        raise InvalidEntry(name, value, f"too short; expected at least {minimum} s")
    return value


def normalize_dns_name(value: str) -> str:
    """IDNA A-label, lower case, RFC 1123 labels; a leading `*.` wildcard label is allowed.

    The server's own TLS name is refused: an SVID carrying it could pose as the server."""
    if not isinstance(value, str) or not value:
        raise InvalidEntry("dns_names", value, "expected a non-empty DNS name")
    wildcard, rest = (True, value[2:]) if value.startswith("*.") else (False, value)
    try:
        ascii_name = rest.encode("idna").decode("ascii").lower() if rest else ""
    except UnicodeError as exc:
        raise InvalidEntry("dns_names", value, f"not a valid IDNA name: {exc}") from exc
    labels = ascii_name.split(".")
    for label in labels:
        if not is_dns_label(label):
            raise InvalidEntry(
                "dns_names",
                value,
                f"label {shown(label)}: expected 1-63 of [a-z0-9-], "
                "not starting or ending with '-'",
            )
    name = ("*." if wildcard else "") + ascii_name
    if len(name) > MAX_DNS_NAME_LENGTH:
        raise InvalidEntry("dns_names", value, f"longer than {MAX_DNS_NAME_LENGTH} characters")
    if is_reserved_dns_name(name):
        raise InvalidEntry(
            "dns_names", value, f"{SERVER_TLS_NAME!r} is reserved: agents trust it as the server"
        )
    return name


def _dns_names(values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InvalidEntry("dns_names", values, "expected a list of DNS names")
    values = list(values)
    _at_most("dns_names", len(values), MAX_DNS_NAMES)
    # Order is kept: the first name is the one a certificate's subject CN may carry.
    return tuple(dict.fromkeys(normalize_dns_name(v) for v in values))


def _federates_with(
    values: Iterable[str | TrustDomain], own: TrustDomain
) -> tuple[TrustDomain, ...]:
    if isinstance(values, str):
        raise InvalidEntry("federates_with", values, "expected a list of trust domains")
    values = list(values)
    _at_most("federates_with", len(values), MAX_FEDERATES_WITH)
    result: set[TrustDomain] = set()
    for value in values:
        if not isinstance(value, TrustDomain | str):
            raise InvalidEntry("federates_with", value, "expected a trust domain name")
        try:
            td = value if isinstance(value, TrustDomain) else TrustDomain.parse(value)
        except InvalidSpiffeId as exc:
            raise InvalidEntry("federates_with", value, exc.reason) from exc
        if td == own:
            raise InvalidEntry("federates_with", str(td), "an entry cannot federate with its own")
        result.add(td)
    return tuple(sorted(result, key=str))


def _at_most(name: str, count: int, limit: int) -> None:
    if count > limit:
        raise InvalidEntry(name, f"{count} values", f"at most {limit} are allowed per entry")


def expires_at_from_unix(seconds: int) -> datetime | None:
    """An entry's expiry from the wire's Unix seconds (0: never); out of range is refused
    here, before `datetime` fails with an OSError or OverflowError."""
    if seconds == 0:
        return None
    if not 1 <= seconds <= MAX_EXPIRES_AT:
        raise InvalidEntry(
            "expires_at", seconds, f"expected Unix seconds in 1..{MAX_EXPIRES_AT} (0: never)"
        )
    return datetime.fromtimestamp(seconds, UTC)


def _hint(value: str) -> str:
    if not isinstance(value, str):
        raise InvalidEntry("hint", value, "expected a string")
    if len(value) > MAX_HINT_LENGTH:
        raise InvalidEntry("hint", value, f"longer than {MAX_HINT_LENGTH}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InvalidEntry("hint", value, "contains control characters")
    return value


def _flag(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise InvalidEntry(name, value, "expected true or false")
    return value


def _expires_at(value: datetime | None, now: datetime) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidEntry("expires_at", value, "expected a timezone-aware time")
    if value <= now:
        raise InvalidEntry("expires_at", value.isoformat(), "already in the past")
    return value.astimezone(UTC)
