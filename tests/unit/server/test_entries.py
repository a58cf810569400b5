"""Registration entry validation: every rejected field is named, accepted input is canonical."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from insignia.daemon.reserved_ids import is_agent_id
from insignia.selectors import Selector
from insignia.server.entries import (
    EntryLimits,
    InvalidEntry,
    normalize_dns_name,
    server_spiffe_id,
    validate_entry,
)
from insignia.spiffeid import SpiffeId
from tests.unit.common import NOW, TD

LIMITS = EntryLimits(TD, max_x509_svid_ttl=14400, max_jwt_svid_ttl=3600)


def entry(**overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "spiffe_id": "spiffe://example.org/web",
        "parent_id": "spiffe://example.org/insignia/agent/join_token/abc",
        "selectors": ["unix:uid:1000"],
        "limits": LIMITS,
        "now": NOW,
    }
    fields.update(overrides)
    return validate_entry(**fields)


def test_valid_entry_is_canonical() -> None:
    e = entry(
        selectors=["unix:uid:1000", "k8s:ns:a", "unix:uid:1000"],
        dns_names=["Web.Example.COM", "web.example.com", "*.svc.local"],
        federates_with=["spiffe://b.org", "a.org", "a.org"],
        x509_svid_ttl=600,
        jwt_svid_ttl=300,
        hint="external",
        admin=True,
        downstream=True,
        expires_at=NOW + timedelta(days=1),
    )
    assert e.spiffe_id == SpiffeId.parse("spiffe://example.org/web")
    assert e.selectors == (Selector("k8s", "ns:a"), Selector("unix", "uid:1000"))
    assert e.dns_names == ("web.example.com", "*.svc.local")
    assert [str(td) for td in e.federates_with] == ["a.org", "b.org"]
    assert (e.x509_svid_ttl, e.jwt_svid_ttl, e.hint, e.admin, e.downstream) == (
        600,
        300,
        "external",
        True,
        True,
    )
    assert e.expires_at == NOW + timedelta(days=1)
    assert e.revision == 0
    assert e.created_at == NOW
    assert len(e.id) == 32


def test_new_entries_get_distinct_ids_and_keep_a_given_one() -> None:
    assert entry().id != entry().id
    assert entry(entry_id="my-entry.1").id == "my-entry.1"


def test_node_alias_has_the_server_as_parent() -> None:
    alias = entry(parent_id=str(server_spiffe_id(TD)), selectors=["x509pop:subject:cn:n1"])
    assert alias.is_node_alias()
    assert not entry().is_node_alias()
    assert is_agent_id(SpiffeId.parse("spiffe://example.org/insignia/agent/x509pop/ab"))
    assert not is_agent_id(server_spiffe_id(TD))


def test_nested_parent_may_be_any_workload_id() -> None:
    assert entry(parent_id="spiffe://example.org/downstream/server").parent_id.path == (
        "/downstream/server"
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"spiffe_id": "spiffe://other.org/web"}, "spiffe_id"),
        ({"spiffe_id": "spiffe://example.org"}, "spiffe_id"),
        ({"spiffe_id": "http://example.org/web"}, "spiffe_id"),
        ({"spiffe_id": "spiffe://example.org/a/../b"}, "spiffe_id"),
        ({"spiffe_id": "spiffe://example.org/insignia/server"}, "spiffe_id"),
        ({"spiffe_id": "spiffe://example.org/insignia/agent/x"}, "spiffe_id"),
        ({"parent_id": "spiffe://other.org/insignia/server"}, "parent_id"),
        ({"parent_id": "spiffe://example.org/insignia/other"}, "parent_id"),
        ({"parent_id": "spiffe://example.org/web"}, "parent_id"),
        ({"parent_id": "not an id"}, "parent_id"),
        ({"selectors": []}, "selectors"),
        ({"selectors": "unix:uid:0"}, "selectors"),
        ({"selectors": ["uid1000"]}, "selectors"),
        ({"selectors": ["UNIX:uid:1"]}, "selectors"),
        ({"selectors": ["unix:" + "é" * 600]}, "selectors"),
        ({"selectors": [42]}, "selectors"),
        ({"x509_svid_ttl": -1}, "x509_svid_ttl"),
        ({"x509_svid_ttl": 14401}, "x509_svid_ttl"),
        ({"x509_svid_ttl": True}, "x509_svid_ttl"),
        ({"x509_svid_ttl": 1.5}, "x509_svid_ttl"),
        ({"jwt_svid_ttl": 3601}, "jwt_svid_ttl"),
        ({"jwt_svid_ttl": 1}, "jwt_svid_ttl"),  # a 1 s JWT-SVID may be expired on arrival
        ({"dns_names": ["bad_name.example.com"]}, "dns_names"),
        ({"dns_names": ["-lead.example.com"]}, "dns_names"),
        ({"dns_names": ["a..b"]}, "dns_names"),
        ({"dns_names": [""]}, "dns_names"),
        ({"dns_names": ["x" * 64 + ".com"]}, "dns_names"),
        ({"dns_names": [".".join(["abcdefgh"] * 29)]}, "dns_names"),
        ({"dns_names": ["a.*.com"]}, "dns_names"),
        ({"dns_names": "web.example.com"}, "dns_names"),
        ({"dns_names": ["insignia-server"]}, "dns_names"),  # the server's TLS name
        ({"dns_names": ["Insignia-Server"]}, "dns_names"),
        ({"federates_with": ["example.org"]}, "federates_with"),
        ({"federates_with": ["Bad.Org"]}, "federates_with"),
        ({"federates_with": ["spiffe://b.org/path"]}, "federates_with"),
        ({"federates_with": [7]}, "federates_with"),
        ({"spiffe_id": 7}, "spiffe_id"),
        ({"hint": "x" * 1025}, "hint"),
        ({"hint": "a\nb"}, "hint"),
        ({"admin": "yes"}, "admin"),
        ({"downstream": 1}, "downstream"),
        ({"expires_at": NOW - timedelta(seconds=1)}, "expires_at"),
        ({"expires_at": datetime(2030, 1, 1)}, "expires_at"),
        ({"entry_id": "has space"}, "id"),
        ({"entry_id": "x" * 256}, "id"),
        ({"entry_id": ""}, "id"),
    ],
)
def test_invalid_field_is_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEntry) as caught:
        entry(**overrides)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_ttl_bounds_are_inclusive() -> None:
    e = entry(x509_svid_ttl=14400, jwt_svid_ttl=3600)
    assert (e.x509_svid_ttl, e.jwt_svid_ttl) == (14400, 3600)
    assert entry().x509_svid_ttl == 0  # 0 means the server default


def test_dns_names_accept_idna_and_wildcards() -> None:
    assert normalize_dns_name("Bücher.Example") == "xn--bcher-kva.example"
    assert normalize_dns_name("*.Example.com") == "*.example.com"
    assert normalize_dns_name("a" * 63 + ".com") == "a" * 63 + ".com"


def test_expiry_is_kept_in_utc() -> None:
    later = datetime(2030, 6, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert entry(expires_at=later).expires_at == datetime(2030, 6, 1, 10, tzinfo=UTC)
    assert entry(expires_at=later).expires_at.tzinfo is UTC
    assert entry(expires_at=later).expired(later)
    assert not entry(expires_at=later).expired(later - timedelta(seconds=1))
