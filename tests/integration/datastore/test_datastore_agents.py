"""Attested agents and one-time join tokens in the datastore, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

import pytest
import sqlalchemy as sa

from insignia.selectors import Selector
from insignia.server.datastore import (
    AgentBanned,
    AgentNotFound,
    AgentRecord,
    Datastore,
    DuplicateEntry,
    DuplicateJoinToken,
    JoinTokenError,
    JoinTokenExpired,
    JoinTokenNotFound,
    JoinTokenUsed,
)
from insignia.server.entries import RegistrationEntry
from insignia.spiffeid import SpiffeId
from tests.datastores import Clock

AGENT_ID = SpiffeId.parse("spiffe://example.org/insignia/agent/x509pop/abc")


def agent(clock: Clock, **kw: object) -> AgentRecord:
    fields: dict[str, object] = {
        "spiffe_id": AGENT_ID,
        "attestation_type": "x509pop",
        "serial_number": "123456789012345678901234567890",
        "expires_at": clock.now + timedelta(hours=1),
        "selectors": (Selector("x509pop", "subject:cn:node-1"), Selector("x509pop", "ca:é")),
        "can_reattest": True,
        "created_at": clock.now,
        "updated_at": clock.now,
    }
    fields.update(kw)
    return AgentRecord(**fields)  # type: ignore[arg-type]


def test_agent_round_trip_and_replace(store: Datastore, clock: Clock) -> None:
    first = agent(clock)
    assert store.put_agent(first) == first
    assert store.get_agent(AGENT_ID) == first
    clock.now += timedelta(minutes=30)
    renewed = agent(
        clock,
        serial_number="99",
        new_serial_number="100",
        svid_fingerprint="ab" * 32,
        new_svid_fingerprint="cd" * 32,
        selectors=(Selector("a", "b"),),
    )
    stored = store.put_agent(renewed)
    assert stored == replace(renewed, created_at=first.created_at, updated_at=clock.now)
    assert store.get_agent(AGENT_ID) == stored
    assert store.list_agents() == [stored]
    assert store.count_agents() == 1


def test_ban_and_evict(store: Datastore, clock: Clock) -> None:
    store.put_agent(agent(clock))
    other = store.put_agent(agent(clock, spiffe_id=SpiffeId.parse("spiffe://example.org/x")))
    banned = store.set_agent_banned(AGENT_ID)
    assert banned.banned
    assert store.list_agents(banned=True) == [banned]
    assert store.list_agents(banned=False) == [other]
    # A ban sticks: evicting would forget it, and a re-attestation racing it cannot lift it.
    with pytest.raises(AgentBanned, match="banned"):
        store.delete_agent(AGENT_ID)
    assert store.put_agent(agent(clock, serial_number="2")).banned
    assert store.set_agent_banned(AGENT_ID, False).banned is False
    assert store.delete_agent(AGENT_ID).serial_number == "2"
    assert store.find_agent(AGENT_ID) is None
    with pytest.raises(AgentNotFound):
        store.get_agent(AGENT_ID)
    with pytest.raises(AgentNotFound):
        store.delete_agent(AGENT_ID)
    with pytest.raises(AgentNotFound):
        store.set_agent_banned(AGENT_ID)
    # Re-attesting after eviction starts clean: no node selector of the old record lingers.
    again = store.put_agent(agent(clock, selectors=(Selector("x509pop", "ca:new"),)))
    assert store.get_agent(AGENT_ID) == again
    assert not again.banned


def test_join_token_is_used_once(store: Datastore, clock: Clock) -> None:
    store.create_join_token("secret-1", clock.now + timedelta(seconds=600))
    with pytest.raises(DuplicateJoinToken):
        store.create_join_token("secret-1", clock.now + timedelta(seconds=600))
    store.consume_join_token("secret-1")
    with pytest.raises(JoinTokenUsed):
        store.consume_join_token("secret-1")
    with pytest.raises(JoinTokenNotFound):
        store.consume_join_token("secret-2")


def test_join_token_and_its_alias_entry_are_stored_together(store: Datastore, clock: Clock) -> None:
    def alias(token: str, entry_id: str) -> RegistrationEntry:
        return RegistrationEntry(
            id=entry_id,
            spiffe_id=SpiffeId.parse("spiffe://example.org/node"),
            parent_id=SpiffeId.parse(f"spiffe://example.org/insignia/agent/join_token/{token}"),
            selectors=(Selector("spiffe_id", "x"),),
            created_at=clock.now,
        )

    expires = clock.now + timedelta(seconds=600)
    store.create_join_token("t1", expires, alias("t1", "e1"))
    assert store.get_entry("e1").parent_id.path.endswith("/t1")
    with pytest.raises(DuplicateEntry):  # the entry fails: the token must not be left behind
        store.create_join_token("t2", expires, alias("t2", "e1"))
    with pytest.raises(JoinTokenNotFound):
        store.consume_join_token("t2")
    store.consume_join_token("t1")


def test_join_token_expires(store: Datastore, clock: Clock) -> None:
    store.create_join_token("late", clock.now + timedelta(seconds=600))
    store.create_join_token("used", clock.now + timedelta(seconds=600))
    store.consume_join_token("used")
    clock.now += timedelta(seconds=600)
    with pytest.raises(JoinTokenExpired):
        store.consume_join_token("late")
    assert store.prune_join_tokens() == 2
    with pytest.raises(JoinTokenNotFound):
        store.consume_join_token("late")


def test_join_token_secret_is_not_stored(store: Datastore, url: str, clock: Clock) -> None:
    token = "tok-3f1c9a7e5d"
    store.create_join_token(token, clock.now + timedelta(seconds=60))
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM join_tokens")).all()
    finally:
        engine.dispose()
    assert len(rows) == 1
    assert token not in repr(rows)


def test_concurrent_consumers_get_one_success(store: Datastore, clock: Clock) -> None:
    store.create_join_token("race", clock.now + timedelta(seconds=60))
    start = threading.Barrier(8)
    results: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        start.wait()
        try:
            store.consume_join_token("race")
            outcome = "ok"
        except JoinTokenError as exc:
            outcome = type(exc).__name__
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=consume) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == ["JoinTokenUsed"] * 7 + ["ok"]
