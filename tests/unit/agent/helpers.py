"""Real certificates, entries and cache contents for the agent's unit tests (no mocks)."""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography.hazmat.primitives import serialization

from insignia.agent.cache.entries import Entry
from insignia.agent.cache.store import BundleView, Cache, SyncDelta, X509SvidRecord
from insignia.agent.svids.rotation import SvidTiming, half_life_renewal
from insignia.agent.svids.signing import authority_ids
from insignia.bundle import Bundle
from insignia.keys import KeyType, generate_key, private_key_to_der
from insignia.selectors import Selector
from insignia.server.ca.x509_leaf import build_leaf
from insignia.server.ca.x509ca import SigningAuthority
from insignia.spiffeid import SpiffeId, TrustDomain
from tests.unit.common import NOW, TD


def sels(*texts: str) -> frozenset[Selector]:
    return frozenset(Selector.parse(t) for t in texts)


def make_entry(
    entry_id: str,
    path: str,
    *selectors: str,
    hint: str = "",
    created_at: int = 1000,
    federates_with: tuple[str, ...] = (),
    x509_ttl: int = 3600,
    expires_at: int = 0,
) -> Entry:
    return Entry(
        id=entry_id,
        spiffe_id=SpiffeId.parse(f"spiffe://{TD}{path}"),
        parent_id=f"spiffe://{TD}/insignia/agent/join_token/x",
        selectors=sels(*selectors),
        x509_svid_ttl=x509_ttl,
        jwt_svid_ttl=300,
        dns_names=(),
        federates_with=tuple(TrustDomain.parse(t) for t in federates_with),
        hint=hint,
        admin=False,
        downstream=False,
        expires_at=expires_at,
        revision=1,
        created_at=created_at,
    )


def bundle_view(ca: SigningAuthority, **federated: SigningAuthority) -> BundleView:
    feds = {
        TrustDomain.parse(name.replace("_", ".")): Bundle(
            TrustDomain.parse(name.replace("_", ".")), (fca.certificate,)
        )
        for name, fca in federated.items()
    }
    return BundleView(Bundle(TD, (ca.certificate,)), feds)


def issue(
    ca: SigningAuthority, entry: Entry, now: datetime = NOW, ttl: timedelta = timedelta(hours=1)
) -> X509SvidRecord:
    key = generate_key(KeyType.EC_P256)
    leaf = build_leaf(key.public_key(), entry.spiffe_id, ttl, ca, now=now)
    chain = (leaf, *ca.chain)
    der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in chain)
    nb, na = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    timing = SvidTiming(
        nb, na, half_life_renewal(nb, na), authority_ids(chain), entry.signing_fields
    )
    return X509SvidRecord(entry.id, entry.spiffe_id, der, private_key_to_der(key), timing)


def filled_cache(ca: SigningAuthority, *entries: Entry, sign: bool = True) -> Cache:
    cache = Cache(TD)
    cache.apply(SyncDelta("store", 1, True, entries, (), bundle_view(ca)))
    if sign:
        cache.put_x509(issue(ca, e) for e in entries)
    return cache
