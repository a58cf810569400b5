"""Entry authorization: which entries an agent may fetch, and which agents a change touches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insignia.selectors import Selector, canonical
from insignia.server.agentapi.authorization import EntryChange, EntryIndex, authorized_entries
from insignia.server.entries import RegistrationEntry, server_spiffe_id
from insignia.spiffeid import SpiffeId
from tests.unit.common import NOW, TD

SERVER = server_spiffe_id(TD)


def sid(path: str) -> SpiffeId:
    return SpiffeId(TD, path)


AGENT_A = sid("/insignia/agent/a")
AGENT_B = sid("/insignia/agent/b")


def make(
    entry_id: str, spiffe: SpiffeId, parent: SpiffeId, *selectors: str, **kw: object
) -> RegistrationEntry:
    return RegistrationEntry(
        id=entry_id,
        spiffe_id=spiffe,
        parent_id=parent,
        selectors=canonical(Selector.parse(s) for s in selectors or ("unix:uid:0",)),
        created_at=NOW,
        **kw,  # type: ignore[arg-type]
    )


def ids(found: Iterable[RegistrationEntry]) -> set[str]:
    return {e.id for e in found}


def sels(*texts: str) -> frozenset[Selector]:
    return frozenset(Selector.parse(t) for t in texts)


CLUSTER = make("alias", sid("/cluster/prod"), SERVER, "x509pop:ca:prod", "x509pop:region:eu")
TABLE = [
    make("direct-a", sid("/web"), AGENT_A),
    make("direct-b", sid("/db"), AGENT_B),
    CLUSTER,
    make("via-alias", sid("/cache"), sid("/cluster/prod")),
    make("nested", sid("/inner"), sid("/web")),
    make("nested-2", sid("/inner-most"), sid("/inner")),
    make("downstream", sid("/child"), sid("/cache"), downstream=True),
    make("unrelated", sid("/other"), sid("/nobody")),
]


@pytest.mark.parametrize(
    ("agent", "node_selectors", "expected"),
    [
        (AGENT_A, sels(), {"direct-a", "nested", "nested-2"}),
        (AGENT_B, sels(), {"direct-b"}),
        (AGENT_B, sels("x509pop:ca:prod"), {"direct-b"}),
        (
            AGENT_B,
            sels("x509pop:ca:prod", "x509pop:region:eu", "x509pop:extra:1"),
            {"direct-b", "alias", "via-alias", "downstream"},
        ),
        (sid("/insignia/agent/none"), sels("x509pop:region:eu"), set()),
    ],
)
def test_table(agent: SpiffeId, node_selectors: frozenset[Selector], expected: set[str]) -> None:
    assert ids(authorized_entries(agent, node_selectors, TABLE, SERVER)) == expected


def test_cycle_terminates_and_each_entry_appears_once() -> None:
    loop = [
        make("one", sid("/x"), AGENT_A),
        make("two", sid("/y"), sid("/x")),
        make("three", sid("/x"), sid("/y"), "unix:uid:1"),
    ]
    found = authorized_entries(AGENT_A, (), loop, SERVER)
    assert sorted(e.id for e in found) == ["one", "three", "two"]


def test_entry_parented_to_an_alias_id_is_not_itself_an_alias() -> None:
    # An entry parented to the server ID that an agent does not match stays hidden even if
    # another path reaches the server ID.
    weird = [make("alias", sid("/n"), SERVER, "a:1"), make("w", SERVER, AGENT_A)]
    assert ids(authorized_entries(AGENT_A, (), weird, SERVER)) == {"w"}


def test_expired_entries_and_what_hangs_below_them_are_left_out() -> None:
    entries = [
        make("gone", sid("/web"), AGENT_A, expires_at=NOW),
        make("below", sid("/inner"), sid("/web")),
        make("live", sid("/api"), AGENT_A, expires_at=NOW + timedelta(seconds=1)),
    ]
    assert ids(authorized_entries(AGENT_A, (), entries, SERVER, now=NOW)) == {"live"}
    assert ids(authorized_entries(AGENT_A, (), entries, SERVER)) == {"gone", "below", "live"}


def test_index_updates_in_place() -> None:
    index = EntryIndex(SERVER, TABLE)
    assert len(index) == len(TABLE)
    moved = replace(TABLE[0], parent_id=AGENT_B)
    assert index.upsert(moved) == TABLE[0]
    assert ids(index.authorized_entries(AGENT_A, ())) == set()
    assert ids(index.authorized_entries(AGENT_B, ())) == {
        "direct-a",
        "direct-b",
        "nested",
        "nested-2",
    }
    assert index.remove("direct-a") == moved
    assert index.remove("direct-a") is None
    assert "direct-a" not in index
    index.apply(EntryChange(old=CLUSTER, new=None))
    assert index.matching_aliases(sels("x509pop:ca:prod", "x509pop:region:eu")) == []


def test_affected_agents_table() -> None:
    index = EntryIndex(SERVER, TABLE)
    agents = {
        AGENT_A: sels(),
        AGENT_B: sels("x509pop:ca:prod", "x509pop:region:eu"),
        sid("/insignia/agent/c"): sels("x509pop:ca:prod"),
    }
    new_leaf = make("new", sid("/leaf"), sid("/inner-most"))
    assert index.affected_agents(EntryChange(None, new_leaf), agents) == {AGENT_A}
    moved = replace(TABLE[4], parent_id=sid("/cache"))  # nested: from A's tree to B's
    assert index.affected_agents(EntryChange(TABLE[4], moved), agents) == {AGENT_A, AGENT_B}
    narrowed = replace(CLUSTER, selectors=canonical([Selector.parse("x509pop:ca:prod")]))
    assert index.affected_agents(EntryChange(CLUSTER, narrowed), agents) == {
        AGENT_B,
        sid("/insignia/agent/c"),
    }
    orphan = make("orphan", sid("/o"), sid("/nobody"))
    assert index.affected_agents(EntryChange(orphan, None), agents) == frozenset()


def test_entry_change_needs_one_side_and_one_id() -> None:
    with pytest.raises(ValueError, match="old or a new"):
        EntryChange(None, None)
    with pytest.raises(ValueError, match="mixes ids"):
        EntryChange(TABLE[0], TABLE[1])


# -- properties against a naive fixpoint -----------------------------------------------------

WORKLOADS = [sid(f"/w{i}") for i in range(6)]
AGENTS = [sid(f"/insignia/agent/n{i}") for i in range(3)]
POOL = [Selector("node", str(i)) for i in range(4)]


def reference(
    agent: SpiffeId, node_selectors: frozenset[Selector], entries: list[RegistrationEntry]
) -> dict[str, RegistrationEntry]:
    """Definition, not algorithm: grow the set until nothing more qualifies."""
    granted: dict[str, RegistrationEntry] = {}
    changed = True
    while changed:
        changed = False
        reached = {agent} | {e.spiffe_id for e in granted.values()}
        for e in entries:
            if e.id in granted:
                continue
            if e.parent_id == SERVER:
                ok = bool(e.selectors) and node_selectors.issuperset(e.selectors)
            else:
                ok = e.parent_id in reached
            if ok:
                granted[e.id] = e
                changed = True
    return granted


@st.composite
def entry_strategy(draw: st.DrawFn, entry_id: str) -> RegistrationEntry:
    parent = draw(st.sampled_from([SERVER, *AGENTS, *WORKLOADS]))
    chosen = draw(st.sets(st.sampled_from(POOL), min_size=1, max_size=3))
    return RegistrationEntry(
        id=entry_id,
        spiffe_id=draw(st.sampled_from(WORKLOADS)),
        parent_id=parent,
        selectors=canonical(chosen),
        created_at=NOW,
    )


@st.composite
def world(draw: st.DrawFn) -> tuple[list[RegistrationEntry], dict[SpiffeId, frozenset[Selector]]]:
    count = draw(st.integers(0, 14))
    entries = [draw(entry_strategy(f"e{i}")) for i in range(count)]
    agents = {a: frozenset(draw(st.sets(st.sampled_from(POOL), max_size=4))) for a in AGENTS}
    return entries, agents


@settings(max_examples=300, deadline=None)
@given(world())
def test_index_matches_the_definition(
    w: tuple[list[RegistrationEntry], dict[SpiffeId, frozenset[Selector]]],
) -> None:
    entries, agents = w
    index = EntryIndex(SERVER, entries)
    for agent, node_selectors in agents.items():
        found = index.authorized_entries(agent, node_selectors)
        assert len(found) == len(ids(found))
        assert ids(found) == set(reference(agent, node_selectors, entries))


def authorized_sets(
    entries: list[RegistrationEntry], agents: Mapping[SpiffeId, frozenset[Selector]]
) -> dict[SpiffeId, dict[str, RegistrationEntry]]:
    return {a: reference(a, s, entries) for a, s in agents.items()}


@settings(max_examples=300, deadline=None)
@given(world(), st.data())
def test_affected_agents_is_exactly_who_sees_the_entry(
    w: tuple[list[RegistrationEntry], dict[SpiffeId, frozenset[Selector]]], data: st.DataObject
) -> None:
    entries, agents = w
    kind = data.draw(st.sampled_from(["create", "update", "delete"] if entries else ["create"]))
    old = None if kind == "create" else data.draw(st.sampled_from(entries))
    new_id = "new" if old is None else old.id
    new = None if kind == "delete" else data.draw(entry_strategy(new_id))
    change = EntryChange(old, new)
    after = [e for e in entries if e.id != new_id] + ([new] if new else [])
    before_sets = authorized_sets(entries, agents)
    after_sets = authorized_sets(after, agents)

    index = EntryIndex(SERVER, entries)
    affected_before_apply = index.affected_agents(change, agents)
    index.apply(change)
    affected = index.affected_agents(change, agents)
    assert affected == affected_before_apply

    expected = {a for a in agents if new_id in before_sets[a] or new_id in after_sets[a]}
    assert affected == expected
    changed = {a for a in agents if before_sets[a] != after_sets[a]}
    assert changed <= affected
