"""Registration entries as the agent holds them, and which of them a workload is entitled to.

Entries arrive from the server's Sync stream as protobuf messages; they are parsed once at
that boundary into frozen values with validated SPIFFE IDs and selectors, so nothing past
the boundary has to re-check them. `entitled` is the whole authorization decision of the
Workload API: a pure function of the entries and the selectors the attestors found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from insignia_proto import agent_pb2

from insignia.selectors import InvalidSelector, Selector, canonical, matches
from insignia.spiffeid import InvalidSpiffeId, SpiffeId, TrustDomain


class UnservableEntry(ValueError):
    """An entry from the server that the agent refuses to serve; names the entry and field."""

    def __init__(self, entry_id: str, reason: str) -> None:
        super().__init__(f"entry {entry_id!r}: {reason}")
        self.entry_id = entry_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SigningFields:
    """What goes into an X.509-SVID: a change to any of these means the SVID is re-signed."""

    spiffe_id: SpiffeId
    x509_svid_ttl: int
    dns_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    spiffe_id: SpiffeId
    parent_id: str
    selectors: frozenset[Selector]
    x509_svid_ttl: int
    jwt_svid_ttl: int
    dns_names: tuple[str, ...]
    federates_with: tuple[TrustDomain, ...]
    hint: str
    admin: bool
    downstream: bool
    expires_at: int  # unix seconds, 0 = never
    revision: int
    created_at: int  # unix seconds
    wit_svid_ttl: int = 0  # 0 from a server (or cache file) older than WIT-SVIDs

    @property
    def signing_fields(self) -> SigningFields:
        return SigningFields(self.spiffe_id, self.x509_svid_ttl, self.dns_names)

    def expired(self, now: float) -> bool:
        return self.expires_at != 0 and now >= self.expires_at

    @classmethod
    def from_proto(cls, msg: agent_pb2.Entry) -> Entry:
        if not msg.id:
            raise UnservableEntry(msg.id, "empty id")
        try:
            spiffe_id = SpiffeId.parse(msg.spiffe_id)
            selectors = canonical(Selector.parse(s) for s in msg.selectors)
            federates = tuple(TrustDomain.parse(td) for td in msg.federates_with)
        except (InvalidSpiffeId, InvalidSelector) as exc:
            raise UnservableEntry(msg.id, str(exc)) from exc
        if not selectors:
            raise UnservableEntry(msg.id, "no selectors; an entry must name at least one")
        if msg.x509_svid_ttl <= 0 or msg.jwt_svid_ttl <= 0:
            raise UnservableEntry(
                msg.id,
                f"TTLs must be positive, got x509={msg.x509_svid_ttl} jwt={msg.jwt_svid_ttl}",
            )
        return cls(
            id=msg.id,
            spiffe_id=spiffe_id,
            parent_id=msg.parent_id,
            selectors=frozenset(selectors),
            x509_svid_ttl=msg.x509_svid_ttl,
            jwt_svid_ttl=msg.jwt_svid_ttl,
            dns_names=tuple(msg.dns_names),
            federates_with=federates,
            hint=msg.hint,
            admin=msg.admin,
            downstream=msg.downstream,
            expires_at=msg.expires_at,
            revision=msg.revision,
            created_at=msg.created_at,
            wit_svid_ttl=max(0, msg.wit_svid_ttl),
        )

    def to_proto(self) -> agent_pb2.Entry:
        """The Sync form (the agent's cache file stores entries as the server sent them)."""
        return agent_pb2.Entry(
            id=self.id,
            spiffe_id=str(self.spiffe_id),
            parent_id=self.parent_id,
            selectors=sorted(str(s) for s in self.selectors),
            x509_svid_ttl=self.x509_svid_ttl,
            jwt_svid_ttl=self.jwt_svid_ttl,
            dns_names=list(self.dns_names),
            federates_with=[str(td) for td in self.federates_with],
            hint=self.hint,
            admin=self.admin,
            downstream=self.downstream,
            expires_at=self.expires_at,
            revision=self.revision,
            created_at=self.created_at,
            wit_svid_ttl=self.wit_svid_ttl,
        )


def _age_order(entry: Entry) -> tuple[int, str]:
    return (entry.created_at, entry.id)


def entitled(entries: Iterable[Entry], selectors: frozenset[Selector], now: float) -> list[Entry]:
    """The entries a workload with `selectors` receives, oldest first.

    An entry matches when every one of its selectors was found on the caller. Several entries
    sharing a hint would make the hint ambiguous, so, as in SPIRE, only the oldest one with a
    given hint is served; entries without a hint are all served.
    """
    matched = sorted(
        (e for e in entries if matches(e.selectors, selectors) and not e.expired(now)),
        key=_age_order,
    )
    seen_hints: set[str] = set()
    result: list[Entry] = []
    for entry in matched:
        if entry.hint:
            if entry.hint in seen_hints:
                continue
            seen_hints.add(entry.hint)
        result.append(entry)
    return result
