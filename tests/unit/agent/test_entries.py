import pytest
from insignia_proto import agent_pb2

from insignia.agent.cache.entries import Entry, UnservableEntry, entitled
from tests.unit.agent.helpers import make_entry, sels

CALLER = sels("unix:uid:1000", "unix:gid:1000")


def proto(**overrides):
    fields = dict(
        id="e1",
        spiffe_id="spiffe://example.org/web",
        parent_id="spiffe://example.org/insignia/agent/x",
        selectors=["unix:uid:1000"],
        x509_svid_ttl=3600,
        jwt_svid_ttl=300,
        created_at=5,
        revision=3,
        federates_with=["other.org"],
    )
    fields.update(overrides)
    return agent_pb2.Entry(**fields)


def test_from_proto_parses_every_field():
    entry = Entry.from_proto(proto(hint="web", dns_names=["web.local"]))
    assert str(entry.spiffe_id) == "spiffe://example.org/web"
    assert entry.selectors == sels("unix:uid:1000")
    assert [str(t) for t in entry.federates_with] == ["other.org"]
    assert (entry.hint, entry.dns_names, entry.created_at) == ("web", ("web.local",), 5)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"spiffe_id": "spiffe://Example.org/x"}, "trust domain"),
        ({"selectors": []}, "no selectors"),
        ({"selectors": ["nocolon"]}, "type:value"),
        ({"x509_svid_ttl": 0}, "TTLs must be positive"),
        ({"id": ""}, "empty id"),
    ],
)
def test_from_proto_refuses_bad_entries(overrides, fragment):
    with pytest.raises(UnservableEntry, match=fragment):
        Entry.from_proto(proto(**overrides))


def test_entitled_needs_every_selector_of_the_entry():
    a = make_entry("a", "/a", "unix:uid:1000")
    b = make_entry("b", "/b", "unix:uid:1000", "unix:gid:1000")
    c = make_entry("c", "/c", "unix:uid:1000", "docker:label:x")
    assert [e.id for e in entitled([a, b, c], CALLER, 0)] == ["a", "b"]
    assert entitled([a, b, c], sels("unix:uid:1001"), 0) == []


def test_entitled_is_oldest_first_and_one_identity_per_hint():
    old = make_entry("x-old", "/old", "unix:uid:1000", hint="db", created_at=10)
    new = make_entry("a-new", "/new", "unix:uid:1000", hint="db", created_at=20)
    plain1 = make_entry("p1", "/p1", "unix:uid:1000", created_at=30)
    plain2 = make_entry("p2", "/p2", "unix:uid:1000", created_at=5)
    got = entitled([new, plain1, old, plain2], CALLER, 0)
    assert [e.id for e in got] == ["p2", "x-old", "p1"]


def test_expired_entries_are_not_served():
    live = make_entry("live", "/l", "unix:uid:1000", expires_at=0)
    gone = make_entry("gone", "/g", "unix:uid:1000", expires_at=100)
    assert [e.id for e in entitled([live, gone], CALLER, 100)] == ["live"]
    assert len(entitled([live, gone], CALLER, 99)) == 2
