from dataclasses import replace
from datetime import UTC, datetime, timedelta

from insignia_proto import agent_pb2

from insignia.server.agentapi.sync import (
    AgentHistory,
    Defaults,
    SentView,
    delta_update,
    full_update,
    split_update,
)
from insignia.server.entries import EntryLimits, RegistrationEntry, validate_entry
from insignia.spiffeid import TrustDomain

TD = TrustDomain.parse("example.org")
LIMITS = EntryLimits(TD, 86400, 86400)
DEFAULTS = Defaults(timedelta(hours=1), timedelta(minutes=5))
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def entry(name: str, revision: int = 0, ttl: int = 0) -> RegistrationEntry:
    e = validate_entry(
        spiffe_id=f"spiffe://example.org/{name}",
        parent_id="spiffe://example.org/p",
        selectors=["unix:uid:1"],
        limits=LIMITS,
        entry_id=name,
        x509_svid_ttl=ttl,
        now=NOW,
    )
    return replace(e, revision=revision)


def test_full_then_delta() -> None:
    bundle = agent_pb2.BundleState(spiffe_bundle=b"{}")
    update, view = full_update("s", 5, [entry("a", ttl=60), entry("b")], bundle, DEFAULTS)
    assert update.full and update.revision == 5
    assert [(e.id, e.x509_svid_ttl, e.jwt_svid_ttl) for e in update.entries] == [
        ("a", 60, 300),
        ("b", 3600, 300),
    ]
    same, _ = delta_update("s", 6, view, [entry("a", ttl=60), entry("b")], bundle, DEFAULTS)
    assert same is None
    changed, view2 = delta_update(
        "s", 7, view, [entry("a", 1, ttl=60), entry("c")], bundle, DEFAULTS
    )
    assert changed is not None and not changed.full
    assert [e.id for e in changed.entries] == ["a", "c"]
    assert list(changed.deleted_entry_ids) == ["b"]
    assert not changed.HasField("bundle")
    new_bundle = agent_pb2.BundleState(spiffe_bundle=b"{}", tainted_x509_authorities=["ab"])
    tainted, _ = delta_update(
        "s", 8, view2, [entry("a", 1, ttl=60), entry("c")], new_bundle, DEFAULTS
    )
    assert tainted is not None and tainted.HasField("bundle") and not tainted.entries


def test_history_keeps_the_last_views() -> None:
    history = AgentHistory()
    for revision in range(10):
        history.remember(SentView(revision, {}, ""))
    assert history.find(9) is not None and history.find(6) is not None
    assert history.find(5) is None


def test_large_updates_are_sent_in_parts() -> None:
    bundle = agent_pb2.BundleState(spiffe_bundle=b"{}")
    update, _ = full_update("s", 9, [entry(f"e{i}") for i in range(5)], bundle, DEFAULTS)
    update.deleted_entry_ids.append("gone")
    parts = split_update(update, max_entries=2)
    assert [len(p.entries) for p in parts] == [2, 2, 1]
    assert [p.more for p in parts] == [True, True, False]
    assert all(p.full and p.revision == 9 and p.store_id == "s" for p in parts)
    assert parts[0].HasField("bundle") and not parts[1].HasField("bundle")
    assert list(parts[0].deleted_entry_ids) == ["gone"] and not parts[2].deleted_entry_ids
    assert [e.id for p in parts for e in p.entries] == [f"e{i}" for i in range(5)]
    assert split_update(parts[2], max_entries=2) == [parts[2]]
