"""The console's pure parts: sessions, the timeline layout, the entry form, agent filters,
the live-event messages."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import grpc
import pytest
from insignia_proto import admin_pb2

from insignia.selectors import Selector
from insignia.server.admin.api import AdminRefused
from insignia.server.console.agents import select_agents
from insignia.server.console.entry_form import EntryForm, read_entry_form
from insignia.server.console.events import BUFFER, EventHub, sse_message
from insignia.server.console.sessions import Sessions, csrf_ok
from insignia.server.console.timeline import layout
from insignia.server.datastore.records import AgentRecord, CaKeyRecord, ChangeEvent
from insignia.server.entries import InvalidEntry
from insignia.spiffeid import SpiffeId
from tests.unit.common import NOW


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def sessions() -> tuple[Sessions, Clock]:
    clock = Clock()
    return Sessions(timedelta(minutes=5), timedelta(hours=1), clock), clock


def test_a_login_token_opens_one_session_once() -> None:
    table, _ = sessions()
    token, name, _ = table.mint_login(1000)
    redeemed = table.redeem(token)
    assert not isinstance(redeemed, str)
    cookie, session = redeemed
    assert (session.name, session.uid) == (name, 1000)
    assert table.session(cookie) == session and table.is_open(session)
    assert table.redeem(token) == "used"
    table.end(session)
    assert not table.is_open(session)


def test_tokens_and_cookies_are_refused_with_their_reason() -> None:
    table, clock = sessions()
    token, name, _ = table.mint_login(0)
    assert table.redeem(None) == "missing"
    assert table.redeem("no-dot") == "malformed"
    assert table.redeem(f"{name}.wrong-secret") == "unknown"  # and the real one still works
    late, _, _ = table.mint_login(0)
    clock.now += timedelta(minutes=5)
    assert table.redeem(late) == "expired"
    clock.now = NOW
    redeemed = table.redeem(token)
    assert not isinstance(redeemed, str)
    cookie, session = redeemed
    assert table.session(cookie.split(".")[0] + ".forged") == "unknown"
    clock.now += timedelta(hours=1)
    assert table.session(cookie) == "expired"
    clock.now = NOW
    table.end(session)
    assert table.session(cookie) == "ended"


def test_only_digests_of_the_secrets_are_kept() -> None:
    table, _ = sessions()
    token, _, _ = table.mint_login(0)
    secret = token.split(".", 1)[1]
    assert secret not in repr(vars(table))


def test_csrf_tokens_must_match_the_session() -> None:
    table, _ = sessions()
    redeemed = table.redeem(table.mint_login(0)[0])
    assert not isinstance(redeemed, str)
    session = redeemed[1]
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, session.csrf + "x")


def _key(kind: str, key_id: str, status: str, start: int, **flags: bool) -> CaKeyRecord:
    return CaKeyRecord(
        kind,  # type: ignore[arg-type]
        key_id,
        "A",
        status,  # type: ignore[arg-type]
        b"k",
        NOW + timedelta(hours=start + 24),
        NOW + timedelta(hours=start),
        certificate=b"c" if kind == "x509" else None,
        **flags,
    )


def test_the_timeline_draws_each_key_from_start_to_expiry_with_its_state() -> None:
    records = [
        _key("x509", "old1", "old", -20, tainted=True),
        _key("x509", "act1", "active", -8),
        _key("x509", "gone", "old", -22, tainted=True, revoked=True),
        _key("jwt", "jwt1", "active", -1),
    ]
    timeline = layout(records, NOW)
    states = {bar.key_id: bar.state for bar in timeline.bars}
    assert states == {"old1": "tainted", "act1": "active", "gone": "revoked", "jwt1": "active"}
    x509 = [bar.key_id for bar in timeline.bars if bar.kind == "x509"]
    assert x509 == ["gone", "old1", "act1"]  # oldest first
    first, last = timeline.bars[0], timeline.bars[-1]
    assert first.x == timeline.label_width  # the earliest start opens the axis
    assert abs(last.x + last.width - (timeline.width - 10)) < 1  # the latest expiry closes it
    assert first.x < timeline.now_x < last.x + last.width
    assert timeline.ticks and all(t.x >= timeline.label_width for t in timeline.ticks)


def test_the_entry_form_refuses_what_the_cli_refuses_before_calling_the_server() -> None:
    posted = {"spiffe_id": [""], "parent_id": ["spiffe://example.org/p"], "selectors": [""]}
    _, form = read_entry_form(posted, admin_pb2.Entry())
    assert form.errors == {
        "spiffe_id": "error: --spiffe-id is required",
        "selectors": "error: --selector is required",
    }
    posted = {
        "spiffe_id": ["spiffe://example.org/w"],
        "parent_id": ["spiffe://example.org/p"],
        "selectors": ["unix:colour:red"],
        "x509_svid_ttl": ["ten"],
        "wit_svid_ttl": ["-1"],
    }
    _, form = read_entry_form(posted, admin_pb2.Entry())
    assert form.errors["selectors"].startswith("error: invalid selector 'unix:colour:red'")
    assert "--x509-svid-ttl" in form.errors["x509_svid_ttl"]
    assert "--wit-svid-ttl" in form.errors["wit_svid_ttl"]


def test_the_entry_form_fills_the_entry_and_places_server_refusals() -> None:
    posted = {
        "spiffe_id": [" spiffe://example.org/w "],
        "parent_id": ["spiffe://example.org/p"],
        "selectors": ["unix:uid:1000\n\nunix:gid:1000\n"],
        "dns_names": ["a.example\nb.example"],
        "admin": ["on"],
        "x509_svid_ttl": ["600"],
        "wit_svid_ttl": ["120"],
    }
    entry, form = read_entry_form(posted, admin_pb2.Entry())
    assert form.errors == {}
    assert (entry.wit_svid_ttl, EntryForm.of(entry).values["wit_svid_ttl"]) == (120, "120")
    assert entry.spiffe_id == "spiffe://example.org/w"
    assert list(entry.selectors) == ["unix:uid:1000", "unix:gid:1000"]
    assert list(entry.dns_names) == ["a.example", "b.example"]
    assert (entry.admin, entry.downstream, entry.x509_svid_ttl) == (True, False, 600)
    cause = InvalidEntry("entries[0].spiffe_id", "x", "bad")
    form.refused(AdminRefused(grpc.StatusCode.INVALID_ARGUMENT, str(cause), cause))
    assert form.errors == {"spiffe_id": f"error: INVALID_ARGUMENT: {cause}"}
    assert EntryForm.of(entry).values["selectors"] == "unix:uid:1000\nunix:gid:1000"


def _agent(path: str, attestor: str, banned: bool = False) -> AgentRecord:
    return AgentRecord(
        SpiffeId.parse(f"spiffe://example.org/insignia/agent/{path}"),
        attestor,
        "5",
        NOW,
        selectors=(Selector("x509pop", f"subject:cn:{path}"),),
        banned=banned,
    )


def test_agents_are_filtered_and_sorted() -> None:
    agents = [_agent("b", "join_token"), _agent("a", "x509pop", True), _agent("c", "x509pop")]
    ids = lambda found: [a.spiffe_id.path.rsplit("/", 1)[1] for a in found]  # noqa: E731
    assert ids(select_agents(agents)) == ["a", "b", "c"]
    assert ids(select_agents(agents, sort="id", descending=True)) == ["c", "b", "a"]
    assert ids(select_agents(agents, attestor="x509pop", banned="no")) == ["c"]
    assert ids(select_agents(agents, text="CN:B")) == ["b"]  # selectors too, any case


def test_a_change_is_one_server_sent_event() -> None:
    message = sse_message(ChangeEvent(7, "ca_key", "created", "x509:abc", NOW)).decode()
    lines = message.splitlines()
    assert message.endswith("\n\n") and lines[:2] == ["id: 7", "event: change"]
    data = json.loads(lines[2].removeprefix("data: "))
    assert data["text"] == "authority x509:abc prepared" and data["at"] == "2030-01-01T12:00:00Z"


async def test_the_hub_streams_changes_until_the_session_closes() -> None:
    hub = EventHub()
    open_ = [True]
    stream = hub.stream(60, lambda: open_[0])
    assert (await anext(stream)).startswith(b"retry: ")  # subscribed from here on
    hub.publish([ChangeEvent(1, "entry", "created", "e1", NOW)])
    assert b'"subject":"e1"' in await anext(stream)
    open_[0] = False
    hub.publish([ChangeEvent(2, "entry", "deleted", "e1", NOW)])
    with pytest.raises(StopAsyncIteration):  # a closed session gets nothing more
        await anext(stream)


async def test_a_stream_that_falls_behind_is_ended() -> None:
    hub = EventHub()
    stream = hub.stream(60, lambda: True)
    await anext(stream)
    hub.publish([ChangeEvent(i, "entry", "created", f"e{i}", NOW) for i in range(BUFFER + 1)])
    received = [chunk async for chunk in stream]
    assert len(received) == BUFFER  # what was buffered, then the end
    assert not hub.full and hub._subscribers == set()
