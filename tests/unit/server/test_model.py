"""The server model's per-agent views: expiry and the SVID an agent presents."""

from __future__ import annotations

from datetime import datetime, timedelta

from insignia.selectors import Selector
from insignia.server.datastore.records import AgentRecord
from insignia.server.entries import RegistrationEntry, server_spiffe_id
from insignia.server.model import ServerModel
from insignia.spiffeid import SpiffeId
from tests.unit.common import NOW, TD

AGENT = SpiffeId.parse("spiffe://example.org/insignia/agent/join_token/t")


def entry(entry_id: str, expires_at: datetime | None) -> RegistrationEntry:
    return RegistrationEntry(
        id=entry_id,
        spiffe_id=SpiffeId.parse(f"spiffe://example.org/{entry_id}"),
        parent_id=AGENT,
        selectors=(Selector("unix", "uid:1"),),
        expires_at=expires_at,
    )


def model_with(*entries: RegistrationEntry, agent: AgentRecord | None = None) -> ServerModel:
    model = ServerModel(server_spiffe_id(TD))
    agents = [agent or AgentRecord(AGENT, "join_token", "1", NOW + timedelta(hours=1))]
    model.load(entries, agents, revision=1)
    return model


def test_an_expired_entry_is_not_authorized_before_housekeeping_prunes_it() -> None:
    soon = entry("soon", NOW + timedelta(seconds=10))
    model = model_with(soon, entry("forever", None))
    assert set(model.authorized(AGENT, NOW)) == {"soon", "forever"}  # cached from here
    assert set(model.authorized(AGENT, NOW + timedelta(seconds=10))) == {"forever"}
    assert set(model.authorized(AGENT, NOW + timedelta(days=1))) == {"forever"}


def test_an_svid_is_recognised_by_serial_and_fingerprint() -> None:
    record = AgentRecord(
        AGENT,
        "join_token",
        "1",
        NOW + timedelta(hours=1),
        svid_fingerprint="aa" * 32,
        new_serial_number="2",
        new_svid_fingerprint="bb" * 32,
    )
    model = model_with(agent=record)
    assert model.check_agent(AGENT, "1", "aa" * 32) is None
    assert model.check_agent(AGENT, "2", "bb" * 32) is None
    same_serial_other_cert = model.check_agent(AGENT, "1", "cc" * 32)
    assert same_serial_other_cert is not None and same_serial_other_cert.code == "stale"
    assert model.check_agent(AGENT, "2", "aa" * 32) is not None  # pairs, not either-or
    unknown = model.check_agent(SpiffeId.parse("spiffe://example.org/insignia/agent/x"), "1", "")
    assert unknown is not None and unknown.code == "unknown"


def test_an_agent_recorded_before_fingerprints_is_checked_by_serial() -> None:
    model = model_with()  # svid_fingerprint "" (schema 0001 rows)
    assert model.check_agent(AGENT, "1", "dd" * 32) is None
    assert model.check_agent(AGENT, "9", "dd" * 32) is not None
