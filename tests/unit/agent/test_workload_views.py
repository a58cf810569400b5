from datetime import timedelta

import pytest

from insignia.agent.cache.store import BundleView, SyncDelta
from insignia.agent.workloadapi.views import (
    NoIdentity,
    SvidsExpired,
    jwt_bundles,
    named_targets,
    x509_bundles,
    x509_view,
)
from insignia.bundle import Bundle
from insignia.x509svid import X509Svid
from tests.unit.agent.helpers import filled_cache, issue, make_entry, sels
from tests.unit.common import NOW, TD, make_ca

CALLER = sels("unix:uid:1000")


def test_x509_view_serves_exactly_the_callers_identities():
    ca = make_ca()
    mine = make_entry("m", "/mine", "unix:uid:1000", hint="main")
    theirs = make_entry("t", "/theirs", "unix:uid:2000")
    cache = filled_cache(ca, mine, theirs)
    view = x509_view(cache, CALLER, NOW)
    assert [s.spiffe_id for s in view.response.svids] == ["spiffe://example.org/mine"]
    svid = view.response.svids[0]
    parsed = X509Svid.parse_der(svid.x509_svid, svid.x509_svid_key)
    assert str(parsed.spiffe_id) == svid.spiffe_id and svid.hint == "main"
    assert Bundle.parse_der(TD, svid.bundle).x509_authorities == (ca.certificate,)
    assert view.pending == ()


def test_unsigned_svids_are_pending_and_expired_ones_are_an_outage():
    ca = make_ca()
    e = make_entry("m", "/mine", "unix:uid:1000")
    cache = filled_cache(ca, e, sign=False)
    assert x509_view(cache, CALLER, NOW).pending == (e,)
    cache = filled_cache(ca, e)
    with pytest.raises(SvidsExpired, match="cannot reach a server"):
        x509_view(cache, CALLER, NOW + timedelta(hours=2))


def test_one_valid_svid_is_served_beside_an_expired_one():
    ca = make_ca()
    fresh = make_entry("f", "/fresh", "unix:uid:1000")
    stale = make_entry("s", "/stale", "unix:uid:1000")
    cache = filled_cache(ca, fresh, stale, sign=False)
    cache.put_x509([issue(ca, fresh), issue(ca, stale, NOW - timedelta(hours=2))])
    view = x509_view(cache, CALLER, NOW)
    assert [s.spiffe_id for s in view.response.svids] == ["spiffe://example.org/fresh"]
    assert view.pending == (stale,)


def test_no_matching_entry_is_no_identity_everywhere():
    cache = filled_cache(make_ca(), make_entry("t", "/t", "unix:uid:2000"))
    for build in (x509_view, x509_bundles, jwt_bundles):
        with pytest.raises(NoIdentity, match="no identity issued"):
            build(cache, CALLER, NOW)


def test_federated_bundles_only_for_entries_that_federate():
    ca, fed_ca, other_ca = make_ca(), make_ca(), make_ca()
    e = make_entry("m", "/mine", "unix:uid:1000", federates_with=("partner.org",))
    cache = filled_cache(ca, e)
    from insignia.spiffeid import TrustDomain

    view = BundleView(
        Bundle(TD, (ca.certificate,)),
        {
            TrustDomain.parse("partner.org"): Bundle(
                TrustDomain.parse("partner.org"), (fed_ca.certificate,)
            ),
            TrustDomain.parse("stranger.org"): Bundle(
                TrustDomain.parse("stranger.org"), (other_ca.certificate,)
            ),
        },
    )
    cache.apply(SyncDelta("s", 2, False, (), (), view))
    # keyed by the trust domain's SPIFFE ID, as the proto says and SPIRE sends
    fed_ids = x509_view(cache, CALLER, NOW).response.federated_bundles
    assert set(fed_ids) == {"spiffe://partner.org"}
    both = {"spiffe://example.org", "spiffe://partner.org"}
    assert set(x509_bundles(cache, CALLER, NOW)) == both
    assert set(jwt_bundles(cache, CALLER, NOW)) == both


def test_named_targets_all_or_the_named_one():
    ca = make_ca()
    a = make_entry("a", "/a", "unix:uid:1000", created_at=1)
    b = make_entry("b", "/b", "unix:uid:1000", created_at=2)
    cache = filled_cache(ca, a, b)
    assert [e.id for e in named_targets(cache, CALLER, NOW, "")] == ["a", "b"]
    assert [e.id for e in named_targets(cache, CALLER, NOW, "spiffe://example.org/b")] == ["b"]
    with pytest.raises(NoIdentity):
        named_targets(cache, CALLER, NOW, "spiffe://example.org/someone-else")
