from datetime import timedelta

from insignia.agent.cache.store import (
    MAX_JWT_CACHE_BYTES_PER_ENTRY,
    Cache,
    JwtSvidRecord,
    SyncDelta,
)
from insignia.jwtsvid import MAX_TOKEN_BYTES
from tests.unit.agent.helpers import bundle_view, issue, make_entry, sels
from tests.unit.common import NOW, TD, make_ca

HOUR = timedelta(hours=1)


class Recorder:
    def __init__(self, *selectors: str) -> None:
        self.selectors = sels(*selectors)
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def test_full_update_replaces_the_view_and_drops_svids_of_removed_entries():
    ca = make_ca()
    a, b = make_entry("a", "/a", "unix:uid:1"), make_entry("b", "/b", "unix:uid:2")
    cache = Cache(TD)
    cache.apply(SyncDelta("s1", 5, True, (a, b), (), bundle_view(ca)))
    cache.put_x509([issue(ca, a), issue(ca, b)])
    cache.apply(SyncDelta("s1", 6, True, (b,), (), bundle_view(ca)))
    assert set(cache.entries) == {"b"}
    assert cache.x509_svid("a") is None and cache.x509_svid("b") is not None
    assert (cache.store_id, cache.revision) == ("s1", 6)


def test_delta_adds_changes_and_deletes():
    ca = make_ca()
    a, b = make_entry("a", "/a", "unix:uid:1"), make_entry("b", "/b", "unix:uid:2")
    cache = Cache(TD)
    cache.apply(SyncDelta("s", 1, True, (a,), (), bundle_view(ca)))
    cache.apply(SyncDelta("s", 2, False, (b,), ("a",)))
    assert set(cache.entries) == {"b"}
    assert cache.bundles is not None  # a delta without bundle keeps the bundle


def test_only_concerned_subscribers_wake():
    ca = make_ca()
    a = make_entry("a", "/a", "unix:uid:1")
    cache = Cache(TD)
    cache.apply(SyncDelta("s", 1, True, (a,), (), bundle_view(ca)))
    one, two = Recorder("unix:uid:1", "unix:gid:1"), Recorder("unix:uid:2")
    cache.subscribe(one)
    cache.subscribe(two)
    cache.put_x509([issue(ca, a)])
    assert (one.wakes, two.wakes) == (1, 0)
    cache.apply(SyncDelta("s", 2, False, (make_entry("b", "/b", "unix:uid:2"),)))
    assert (one.wakes, two.wakes) == (1, 1)
    cache.apply(SyncDelta("s", 3, False, (), (), bundle_view(make_ca())))
    assert (one.wakes, two.wakes) == (2, 2)
    cache.unsubscribe(one)
    cache.apply(SyncDelta("s", 4, False, (), ("a",)))
    assert one.wakes == 2


def test_an_unchanged_entry_or_bundle_wakes_nobody():
    ca = make_ca()
    a = make_entry("a", "/a", "unix:uid:1")
    view = bundle_view(ca)
    cache = Cache(TD)
    cache.apply(SyncDelta("s", 1, True, (a,), (), view))
    sub = Recorder("unix:uid:1")
    cache.subscribe(sub)
    change = cache.apply(SyncDelta("s", 2, False, (a,), (), bundle_view(ca)))
    assert not change and sub.wakes == 0


def test_svid_for_a_deleted_or_changed_entry_is_not_stored():
    ca = make_ca()
    a = make_entry("a", "/a", "unix:uid:1")
    cache = Cache(TD)
    cache.apply(SyncDelta("s", 1, True, (a,), (), bundle_view(ca)))
    stale = issue(ca, a)
    cache.apply(SyncDelta("s", 2, False, (make_entry("a", "/renamed", "unix:uid:1"),)))
    cache.put_x509([stale])
    assert cache.x509_svid("a") is None


def test_jwt_cache_is_per_audience_set_and_bounded():
    ca = make_ca()
    a = make_entry("a", "/a", "unix:uid:1")
    cache = Cache(TD)
    cache.apply(SyncDelta("s", 1, True, (a,), (), bundle_view(ca)))

    def record(token: str, ttl: timedelta = HOUR) -> JwtSvidRecord:
        return JwtSvidRecord(a.spiffe_id, token, "kid", NOW, NOW + ttl)

    cache.put_jwt("a", frozenset({"x", "y"}), record("t1"), NOW)
    assert cache.jwt_svid("a", frozenset({"y", "x"})).token == "t1"
    assert cache.jwt_svid("a", frozenset({"x"})) is None
    # Bounded by bytes: maximal tokens and audiences fill the entry's budget in few sets.
    big = "t" * MAX_TOKEN_BYTES
    sets = [frozenset({f"{i:03}" + "a" * 252}) for i in range(100)]
    for i, audience in enumerate(sets):
        cache.put_jwt("a", audience, record(big + str(i)), NOW)
    kept = [a for a in sets if cache.jwt_svid("a", a) is not None]
    assert cache.jwt_svid("a", frozenset({"x", "y"})) is None
    assert kept == sets[-len(kept) :]  # the newest stay, the oldest went first
    assert 0 < len(kept) * (MAX_TOKEN_BYTES + 256) <= MAX_JWT_CACHE_BYTES_PER_ENTRY
    # Storing one more drops the entry's expired tokens.
    cache.put_jwt("a", frozenset({"short"}), record("s", timedelta(seconds=1)), NOW)
    cache.put_jwt("a", frozenset({"later"}), record("l"), NOW + timedelta(seconds=2))
    assert cache.jwt_svid("a", frozenset({"short"})) is None
    assert cache.jwt_svid("a", frozenset({"later"})) is not None
