"""WIT-SVIDs in the agent: when a token and key pair are made again, what FetchWITSVID and
FetchWITBundles serve, and what the cache keeps (pure code, real keys and tokens)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from insignia.agent.cache.store import BundleView, SyncDelta, WitSvidRecord
from insignia.agent.svids.rotation import RenewReason, WitTiming, wit_renew_reason
from insignia.agent.svids.wit import WitRefused, checked_token
from insignia.agent.workloadapi.views import NoIdentity, wit_bundles, wit_view
from insignia.bundle import Bundle, public_key_to_jwk
from insignia.keys import KeyType, generate_key, private_key_to_jwk
from insignia.server.ca.wit_signing import sign_wit_svid
from insignia.spiffeid import SpiffeId
from tests.unit.agent.helpers import filled_cache, make_entry, sels
from tests.unit.common import NOW, TD, make_ca

CALLER = sels("unix:uid:1000")
TIMING = WitTiming(NOW + timedelta(minutes=10), NOW + timedelta(minutes=5), "k1", 600)


@pytest.mark.parametrize(
    ("timing", "ttl", "at", "tainted", "expected"),
    [
        (None, 600, NOW, frozenset(), RenewReason.MISSING),
        (TIMING, 600, NOW, frozenset(), None),
        (TIMING, 600, NOW + timedelta(minutes=5), frozenset(), RenewReason.HALF_LIFE),
        (TIMING, 600, NOW + timedelta(minutes=10), frozenset(), RenewReason.EXPIRED),
        (TIMING, 600, NOW, frozenset({"k1"}), RenewReason.TAINTED),
        (TIMING, 900, NOW, frozenset(), RenewReason.ENTRY_CHANGED),
    ],
)
def test_when_a_wit_svid_is_made_again(timing, ttl, at, tainted, expected):
    assert wit_renew_reason(timing, ttl, at, tainted) is expected


def record(entry_id: str, path: str, timing: WitTiming = TIMING) -> WitSvidRecord:
    entry = make_entry(entry_id, path, "unix:uid:1000")
    key = generate_key(KeyType.EC_P256)
    return WitSvidRecord(
        entry_id,
        entry.spiffe_id,
        f"token-{entry_id}",
        json.dumps(private_key_to_jwk(key)),
        NOW,
        timing,
    )


def test_the_view_serves_live_tokens_and_names_what_is_due():
    mine = replace(make_entry("m", "/mine", "unix:uid:1000", hint="main"), wit_svid_ttl=600)
    other = replace(make_entry("o", "/other", "unix:uid:1000"), wit_svid_ttl=600)
    theirs = make_entry("t", "/theirs", "unix:uid:2000")
    cache = filled_cache(make_ca(), mine, other, theirs)
    first = wit_view(cache, CALLER, NOW, "")
    assert list(first.response.svids) == [] and [e.id for e, _ in first.due] == ["m", "o"]
    assert first.stale_at is None  # nothing to serve yet: the cache wakes the stream
    cache.put_wit([record("m", "/mine"), record("t", "/theirs")])
    view = wit_view(cache, CALLER, NOW, "")
    (svid,) = view.response.svids
    assert (svid.spiffe_id, svid.wit_svid, svid.hint) == (
        "spiffe://example.org/mine",
        "token-m",
        "main",
    )
    assert json.loads(svid.wit_svid_key)["d"]  # the private JWK travels to its workload
    assert [(e.id, r) for e, r in view.due] == [("o", RenewReason.MISSING)]
    assert view.stale_at == TIMING.renew_at
    named = wit_view(cache, CALLER, NOW, "spiffe://example.org/mine")
    assert [s.spiffe_id for s in named.response.svids] == ["spiffe://example.org/mine"]
    with pytest.raises(NoIdentity):
        wit_view(cache, CALLER, NOW, "spiffe://example.org/theirs")
    with pytest.raises(NoIdentity):
        wit_view(cache, sels("unix:uid:3000"), NOW, "")
    # past half life the old token is still served while its successor is signed
    late = wit_view(cache, CALLER, TIMING.renew_at, "spiffe://example.org/mine")
    assert len(late.response.svids) == 1 and late.due[0][1] is RenewReason.HALF_LIFE
    # an expired one is not
    assert not wit_view(
        cache, CALLER, TIMING.expires_at, "spiffe://example.org/mine"
    ).response.svids


def test_a_removed_or_renamed_entry_takes_its_wit_along():
    entry = make_entry("m", "/mine", "unix:uid:1000")
    cache = filled_cache(make_ca(), entry)
    cache.put_wit([record("m", "/mine")])
    renamed = replace(entry, spiffe_id=SpiffeId.parse("spiffe://example.org/new"))
    cache.apply(SyncDelta("store", 2, False, (renamed,)))
    assert cache.wit_svid("m") is None
    cache.put_wit([record("m", "/mine")])  # signed for the old ID while in flight: dropped
    assert cache.wit_svid("m") is None


def test_wit_bundles_leave_out_trust_domains_without_wit_keys():
    ca = make_ca()
    entry = make_entry("m", "/mine", "unix:uid:1000")
    cache = filled_cache(ca, entry)
    assert wit_bundles(cache, CALLER, NOW) == {}  # no WIT keys: an empty map, not an error
    key = generate_key(KeyType.EC_P256).public_key()
    local = Bundle(TD, (ca.certificate,), wit_authorities={"w1": key})
    cache.apply(SyncDelta("store", 2, False, (), (), BundleView(local)))
    (only,) = wit_bundles(cache, CALLER, NOW).values()
    assert Bundle.parse_wit_jwks(TD, only).wit_authorities == {"w1": key}


def test_the_agent_checks_what_the_server_signed():
    entry = make_entry("m", "/mine", "unix:uid:1000")
    workload = generate_key(KeyType.EC_P256)
    jwk = {**public_key_to_jwk(workload.public_key()), "alg": "ES256"}
    signer = generate_key(KeyType.EC_P256)
    token = sign_wit_svid(entry.spiffe_id, jwk, timedelta(minutes=5), signer, "k9", NOW)
    kid, claims = checked_token(token, entry, jwk)
    assert kid == "k9" and claims["sub"] == "spiffe://example.org/mine"
    other = {**public_key_to_jwk(generate_key(KeyType.EC_P256).public_key()), "alg": "ES256"}
    with pytest.raises(WitRefused, match="binds another key"):
        checked_token(token, entry, other)
    with pytest.raises(WitRefused, match="sub="):
        checked_token(token, make_entry("x", "/else", "unix:uid:1"), jwk)
