from dataclasses import replace
from datetime import timedelta

from insignia_proto import agent_pb2

from insignia.server.agentapi.authorization import EntryIndex
from insignia.server.agentapi.sync import (
    AgentHistory,
    SentView,
    delta_update,
    full_update,
    log_resumable,
    log_resume_update,
)
from insignia.server.datastore.records import ChangeEvent, ChangeKind
from insignia.server.entries import Defaults, EntryLimits, RegistrationEntry, validate_entry
from insignia.spiffeid import SpiffeId, TrustDomain
from tests.unit.common import NOW, TD

LIMITS = EntryLimits(TD, 86400, 86400)
DEFAULTS = Defaults(timedelta(hours=1), timedelta(minutes=5))


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
    pending, view = full_update("s", 5, [entry("a", ttl=60), entry("b")], bundle, DEFAULTS)
    update = pending.message()
    assert update.full and update.revision == 5
    assert [(e.id, e.x509_svid_ttl, e.jwt_svid_ttl) for e in update.entries] == [
        ("a", 60, 300),
        ("b", 3600, 300),
    ]
    same, _ = delta_update("s", 6, view, [entry("a", ttl=60), entry("b")], bundle, DEFAULTS)
    assert same is None
    delta, view2 = delta_update("s", 7, view, [entry("a", 1, ttl=60), entry("c")], bundle, DEFAULTS)
    assert delta is not None
    changed = delta.message()
    assert not changed.full
    assert [e.id for e in changed.entries] == ["a", "c"]
    assert list(changed.deleted_entry_ids) == ["b"]
    assert not changed.HasField("bundle")
    new_bundle = agent_pb2.BundleState(spiffe_bundle=b"{}", tainted_x509_authorities=["ab"])
    tainted, _ = delta_update(
        "s", 8, view2, [entry("a", 1, ttl=60), entry("c")], new_bundle, DEFAULTS
    )
    assert tainted is not None
    assert tainted.message().HasField("bundle") and not tainted.message().entries


def test_every_entry_field_reaches_the_agent_and_defaults_stay_off_the_wire() -> None:
    bundle = agent_pb2.BundleState(spiffe_bundle=b"{}")
    rich = replace(
        entry("r", revision=3, ttl=60),
        dns_names=("a.example", "b.example"),
        federates_with=(TrustDomain.parse("other.org"),),
        hint="db",
        admin=True,
        downstream=True,
        expires_at=NOW + timedelta(days=1),
    )
    plain = entry("q")
    update, _ = full_update("s", 5, [rich, plain], bundle, DEFAULTS)
    got = update.message().entries
    assert got[0] == agent_pb2.Entry(
        id="r",
        spiffe_id="spiffe://example.org/r",
        parent_id="spiffe://example.org/p",
        selectors=["unix:uid:1"],
        x509_svid_ttl=60,
        jwt_svid_ttl=300,
        wit_svid_ttl=300,
        dns_names=["a.example", "b.example"],
        federates_with=["other.org"],
        hint="db",
        admin=True,
        downstream=True,
        expires_at=int((NOW + timedelta(days=1)).timestamp()),
        revision=3,
        created_at=int(rich.created_at.timestamp()),
    )
    assert not got[1].dns_names and not got[1].hint and not got[1].expires_at
    assert got[1].x509_svid_ttl == 3600 and got[1].created_at == int(NOW.timestamp())


def test_history_keeps_the_last_views() -> None:
    history = AgentHistory()
    for revision in range(10):
        history.remember(SentView(revision, {}, ""))
    assert history.find(9) is not None and history.find(6) is not None
    assert history.find(5) is None


def test_large_updates_are_sent_in_parts() -> None:
    bundle = agent_pb2.BundleState(spiffe_bundle=b"{}")
    update, _ = full_update("s", 9, [entry(f"e{i}") for i in range(5)], bundle, DEFAULTS)
    update.header.deleted_entry_ids.append("gone")
    parts = list(update.parts(max_entries=2))
    assert [len(p.entries) for p in parts] == [2, 2, 1]
    assert [p.more for p in parts] == [True, True, False]
    assert all(p.full and p.revision == 9 and p.store_id == "s" for p in parts)
    assert parts[0].HasField("bundle") and not parts[1].HasField("bundle")
    assert list(parts[0].deleted_entry_ids) == ["gone"] and not parts[2].deleted_entry_ids
    assert [e.id for p in parts for e in p.entries] == [f"e{i}" for i in range(5)]
    small, _ = full_update("s", 9, [entry("e0")], bundle, DEFAULTS)
    assert list(small.parts(max_entries=2)) == [small.message()]


def test_parts_stay_under_the_byte_budget_whatever_the_entries_hold() -> None:
    bundle = agent_pb2.BundleState(spiffe_bundle=b"x" * 500)
    update, _ = full_update("s", 9, [entry(f"e{i}") for i in range(40)], bundle, DEFAULTS)
    one = update.message().entries[0].ByteSize()
    parts = list(update.parts(max_entries=1000, max_bytes=600 + 5 * one))
    assert len(parts) > 1 and [p.more for p in parts] == [True] * (len(parts) - 1) + [False]
    assert all(p.ByteSize() <= 600 + 5 * one for p in parts)
    assert [e.id for p in parts for e in p.entries] == [f"e{i}" for i in range(40)]
    assert parts[0].HasField("bundle") and not any(p.HasField("bundle") for p in parts[1:])


AGENT = SpiffeId.parse("spiffe://example.org/insignia/agent/join_token/a")
SERVER = SpiffeId.parse("spiffe://example.org/insignia/server")


def _entry(name: str, parent: str, revision: int = 1) -> RegistrationEntry:
    e = validate_entry(
        spiffe_id=f"spiffe://example.org/{name}",
        parent_id=parent,
        selectors=["unix:uid:1"],
        limits=LIMITS,
        entry_id=name,
        now=NOW,
    )
    return replace(e, revision=revision)


def _event(revision: int, kind: ChangeKind, subject: str) -> ChangeEvent:
    return ChangeEvent(revision, kind, "updated", subject, NOW)


def test_a_resume_from_the_log_sends_changed_entries_and_deletions_only() -> None:
    a, b = _entry("a", str(AGENT)), _entry("b", str(AGENT), revision=7)
    index = EntryIndex(SERVER, [a, b])
    changes = [_event(6, "entry", "b"), _event(7, "entry", "gone"), _event(7, "bundle", "x")]
    changed = log_resumable(changes, AGENT, index)
    assert changed == {"b", "gone"}
    bundle = agent_pb2.BundleState(spiffe_bundle=b"{}")
    authorized = {e.id: e for e in index.authorized_entries(AGENT, ())}
    pending, view = log_resume_update("s", 7, changed, authorized, bundle, DEFAULTS)
    update = pending.message()
    assert not update.full and update.HasField("bundle")
    assert [e.id for e in update.entries] == ["b"]
    assert list(update.deleted_entry_ids) == ["gone"]
    assert view.entries == {"a": 1, "b": 7}


def test_only_full_state_is_safe_when_authorization_may_have_moved_under_unchanged_entries() -> (
    None
):
    parent = _entry("parent", str(AGENT))
    child = _entry("child", "spiffe://example.org/parent")
    index = EntryIndex(SERVER, [parent, child])
    # The agent's own record changed (its node selectors decide node aliases).
    assert log_resumable([_event(2, "agent", str(AGENT))], AGENT, index) is None
    # An entry with children changed: the children's authorization hangs on it.
    assert log_resumable([_event(2, "entry", "parent")], AGENT, index) is None
    # Its leaf child changed alone: fine.
    assert log_resumable([_event(2, "entry", "child")], AGENT, index) == {"child"}
    # The parent is gone and its child left orphaned: a deletion under children.
    orphaned = EntryIndex(SERVER, [child])
    assert log_resumable([_event(2, "entry", "parent")], AGENT, orphaned) is None
    # Another agent's record changing does not matter to this one.
    other = "spiffe://example.org/insignia/agent/join_token/b"
    assert log_resumable([_event(2, "agent", other)], AGENT, index) == frozenset()
