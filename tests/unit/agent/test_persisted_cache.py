"""The cache file holds what a restarted agent needs to serve while no server answers."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from insignia.agent.cache.persisted import restore, snapshot
from insignia.agent.cache.store import BundleView, Cache, SyncDelta
from insignia.spiffeid import SpiffeId, TrustDomain
from tests.unit.agent.helpers import bundle_view, filled_cache, make_entry
from tests.unit.common import NOW, TD, make_ca

AGENT = SpiffeId.parse("spiffe://example.org/insignia/agent/join_token/a")


def _round_trip(cache: Cache, at: timedelta = timedelta()) -> tuple[Cache, int]:
    payload = json.loads(json.dumps(snapshot(cache, AGENT, NOW)))  # what the file carries
    fresh = Cache(TD)
    return fresh, restore(fresh, payload, AGENT, NOW + at)


def test_entries_revision_bundles_and_svids_come_back_as_they_were():
    ca, fed = make_ca(), make_ca(td=TrustDomain.parse("other.org"))
    a = make_entry("a", "/a", "unix:uid:1", federates_with=("other.org",))
    b = make_entry("b", "/b", "unix:uid:2", "unix:gid:3", hint="b")
    cache = filled_cache(ca, a, b)
    view = bundle_view(ca, other_org=fed)
    tainted = BundleView(view.local, view.federated, frozenset({"ab"}), frozenset({"kid"}))
    cache.apply(SyncDelta("store", 2, False, (), (), tainted))
    restored, svids = _round_trip(cache)
    assert svids == 2
    assert dict(restored.entries) == dict(cache.entries)
    assert (restored.store_id, restored.revision) == (cache.store_id, cache.revision)
    assert restored.bundles == cache.bundles
    assert dict(restored.x509_svids()) == dict(cache.x509_svids())


def test_expired_svids_are_not_restored_but_their_entries_are():
    cache = filled_cache(make_ca(), make_entry("a", "/a", "unix:uid:1"))
    restored, svids = _round_trip(cache, at=timedelta(hours=2))
    assert svids == 0 and restored.x509_svid("a") is None
    assert set(restored.entries) == {"a"}


def test_a_file_written_for_another_agent_is_refused():
    cache = filled_cache(make_ca(), make_entry("a", "/a", "unix:uid:1"))
    payload = snapshot(cache, SpiffeId.parse("spiffe://example.org/insignia/agent/x/b"), NOW)
    assert payload is not None
    with pytest.raises(ValueError, match="written for"):
        restore(Cache(TD), payload, AGENT, NOW)


def test_nothing_to_save_before_the_first_sync():
    assert snapshot(Cache(TD), AGENT, NOW) is None
