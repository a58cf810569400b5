"""What one workload sees: Workload API responses built from the cache and its selectors.

Pure functions of (cache state, caller selectors, time), so the authorization rule "a caller
gets exactly the identities its selectors entitle it to, with the bundles of its own and its
federated trust domains" is tested without sockets or processes.

Bundle maps are keyed by the trust domain's SPIFFE ID (`spiffe://example.org`), as the
Workload API proto says and SPIRE sends; SDKs (ours included) accept the bare name too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from insignia_proto import workload_pb2 as pb

from insignia.agent.cache.entries import Entry
from insignia.agent.cache.store import BundleView, Cache, X509SvidRecord
from insignia.agent.svids.rotation import RenewReason, wit_renew_reason
from insignia.bundle import Bundle
from insignia.selectors import Selector
from insignia.spiffeid import TrustDomain


class NoIdentity(Exception):
    """The caller's selectors match no entry: the Workload API answers PERMISSION_DENIED."""

    def __init__(self, selectors: frozenset[Selector]) -> None:
        shown = ", ".join(sorted(str(s) for s in selectors)) or "none"
        super().__init__(f"no identity issued (selectors: {shown})")
        self.selectors = selectors


class SvidsExpired(Exception):
    """Every X509-SVID of the caller has expired (the agent has not reached a server for
    longer than their TTL): the Workload API answers UNAVAILABLE, as SPIRE does."""

    def __init__(self, expired_at: datetime) -> None:
        super().__init__(
            f"the X509-SVIDs of this workload expired at {expired_at.isoformat()} and the "
            "agent cannot reach a server to renew them"
        )
        self.expired_at = expired_at


@dataclass(frozen=True, slots=True)
class X509View:
    """The caller's X.509 identities that have an SVID now, and whether any are still pending."""

    response: pb.X509SVIDResponse
    served: tuple[X509SvidRecord, ...]
    pending: tuple[Entry, ...]


def _entitled(cache: Cache, selectors: frozenset[Selector], now: datetime) -> list[Entry]:
    entries = cache.entitled(selectors, now.timestamp())
    if not entries:
        raise NoIdentity(selectors)
    return entries


def _federated(
    bundles: BundleView, entries: list[Entry], own: TrustDomain
) -> dict[TrustDomain, Bundle]:
    """Federated bundles the caller's entries federate with (never the local one twice)."""
    wanted = {td for e in entries for td in e.federates_with if td != own}
    return {td: bundles.federated[td] for td in sorted(wanted, key=str) if td in bundles.federated}


def x509_view(cache: Cache, selectors: frozenset[Selector], now: datetime) -> X509View:
    """FetchX509SVID's message for the caller; NoIdentity when nothing matches, SvidsExpired
    when nothing is valid and only expired SVIDs are left."""
    entries = _entitled(cache, selectors, now)
    bundles = cache.bundles
    local_der = bundles.local.x509_der() if bundles is not None else b""
    svids = []
    served = []
    pending = []
    expired = []
    for entry in entries:
        record = cache.x509_svid(entry.id)
        if record is None or record.timing.not_after <= now:
            pending.append(entry)
            if record is not None:
                expired.append(record.timing.not_after)
            continue
        served.append(record)
        svids.append(
            pb.X509SVID(
                spiffe_id=str(record.spiffe_id),
                x509_svid=record.chain_der,
                x509_svid_key=record.key_der,
                bundle=local_der,
                hint=entry.hint,
            )
        )
    if not svids and expired:
        raise SvidsExpired(max(expired))
    federated = {}
    if bundles is not None:
        fed = _federated(bundles, entries, cache.trust_domain)
        federated = {td.id_string(): b.x509_der() for td, b in fed.items()}
    response = pb.X509SVIDResponse(svids=svids, federated_bundles=federated)
    return X509View(response, tuple(served), tuple(pending))


E = TypeVar("E", bytes, str)


def _bundle_map(
    cache: Cache,
    selectors: frozenset[Selector],
    now: datetime,
    encode: Callable[[Bundle], E],
    keep: Callable[[Bundle], bool] = lambda _bundle: True,
) -> dict[str, E]:
    """Trust domain ID -> encoded bundle: our own domain first, then those the caller
    federates with (those `keep` accepts); empty before the first sync."""
    entries = _entitled(cache, selectors, now)
    view = cache.bundles
    if view is None:
        return {}
    feds: dict[TrustDomain, Bundle] = _federated(view, entries, cache.trust_domain)
    chosen = [view.local, *feds.values()]
    return {b.trust_domain.id_string(): encode(b) for b in chosen if keep(b)}


def x509_bundles(cache: Cache, selectors: frozenset[Selector], now: datetime) -> dict[str, bytes]:
    """FetchX509Bundles' map: trust domain ID -> concatenated DER."""
    return _bundle_map(cache, selectors, now, Bundle.x509_der)


def jwt_bundles(cache: Cache, selectors: frozenset[Selector], now: datetime) -> dict[str, bytes]:
    """FetchJWTBundles' map: trust domain ID -> JWKS JSON."""
    return _bundle_map(cache, selectors, now, Bundle.jwks)


def wit_bundles(cache: Cache, selectors: frozenset[Selector], now: datetime) -> dict[str, str]:
    """FetchWITBundles' map: trust domain ID -> JWKS of its WIT-SVID keys. A trust domain
    without WIT keys does not sign WIT-SVIDs (WIT-SVID §6.2) and is left out."""
    return _bundle_map(cache, selectors, now, Bundle.wit_jwks, lambda b: bool(b.wit_authorities))


@dataclass(frozen=True, slots=True)
class WitView:
    """The caller's WIT-SVIDs that exist now, the entries to (re)sign, and when to look again."""

    response: pb.WITSVIDResponse
    due: tuple[tuple[Entry, RenewReason], ...]
    stale_at: datetime | None


def wit_view(
    cache: Cache, selectors: frozenset[Selector], now: datetime, spiffe_id: str
) -> WitView:
    """FetchWITSVID's message: every unexpired WIT-SVID of the caller's entries (or of the one
    named), served while its successor is signed; NoIdentity when nothing matches."""
    tainted = cache.bundles.tainted_wit if cache.bundles is not None else frozenset()
    svids = []
    due = []
    times = []
    for entry in named_targets(cache, selectors, now, spiffe_id):
        record = cache.wit_svid(entry.id)
        timing = record.timing if record is not None else None
        reason = wit_renew_reason(timing, entry.wit_svid_ttl, now, tainted)
        if reason is not None:
            due.append((entry, reason))
        if record is None or record.timing.expires_at <= now:
            continue
        times += [record.timing.expires_at, record.timing.renew_at]
        svids.append(
            pb.WITSVID(
                spiffe_id=str(record.spiffe_id),
                wit_svid=record.token,
                wit_svid_key=record.key_jwk,
                hint=entry.hint,
            )
        )
    stale_at = min((t for t in times if t > now), default=None)
    return WitView(pb.WITSVIDResponse(svids=svids), tuple(due), stale_at)


def named_targets(
    cache: Cache, selectors: frozenset[Selector], now: datetime, spiffe_id: str
) -> list[Entry]:
    """The entries FetchJWTSVID and FetchWITSVID serve: all of the caller's, or the one it
    named."""
    entries = _entitled(cache, selectors, now)
    if not spiffe_id:
        return entries
    chosen = [e for e in entries if str(e.spiffe_id) == spiffe_id]
    if not chosen:
        raise NoIdentity(selectors)
    return chosen[:1]
