"""SPIFFE-ID conformance: the spec's grammar as a table, plus round-trip properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from insignia.spiffeid import (
    InvalidPath,
    InvalidScheme,
    InvalidSpiffeId,
    InvalidTrustDomain,
    SpiffeId,
    SpiffeIdTooLong,
    TrustDomain,
)

VALID = [
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://example.org/workload", "example.org", "/workload"),
    ("spiffe://example.org/ns/prod/sa/web", "example.org", "/ns/prod/sa/web"),
    ("spiffe://a", "a", ""),
    ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
    ("spiffe://my-domain_1.example/x", "my-domain_1.example", "/x"),
    ("spiffe://example.org/UPPER/Case", "example.org", "/UPPER/Case"),
    ("spiffe://example.org/a.b", "example.org", "/a.b"),
    ("spiffe://example.org/...", "example.org", "/..."),
    ("spiffe://example.org/.a", "example.org", "/.a"),
    ("spiffe://example.org/a-b_c.d", "example.org", "/a-b_c.d"),
    ("spiffe://example.org/0/1/2", "example.org", "/0/1/2"),
    ("spiffe://x" + "y" * 254, "x" + "y" * 254, ""),
    ("spiffe://td/" + "p" * (2048 - len("spiffe://td/")), "td", "/" + "p" * 2036),
]

INVALID = [
    ("", InvalidScheme),
    ("example.org/a", InvalidScheme),
    ("http://example.org/a", InvalidScheme),
    ("SPIFFE://example.org/a", InvalidScheme),
    ("Spiffe://example.org", InvalidScheme),
    ("spiffe:/example.org", InvalidScheme),
    ("spiffe:example.org", InvalidScheme),
    ("spiffe://", InvalidTrustDomain),
    ("spiffe:///path", InvalidTrustDomain),
    ("spiffe://Example.org/a", InvalidTrustDomain),
    ("spiffe://example.org:8080/a", InvalidTrustDomain),
    ("spiffe://user@example.org/a", InvalidTrustDomain),
    ("spiffe://user:pw@example.org", InvalidTrustDomain),
    ("spiffe://exa mple.org", InvalidTrustDomain),
    ("spiffe://example.org?query", InvalidTrustDomain),
    ("spiffe://example.org#frag", InvalidTrustDomain),
    ("spiffe://exa%41mple.org", InvalidTrustDomain),
    ("spiffe://[::1]/a", InvalidTrustDomain),
    ("spiffe://ex\u00e9mple.org", InvalidTrustDomain),
    ("spiffe://x" + "y" * 255, InvalidTrustDomain),
    ("spiffe://example.org/", InvalidPath),
    ("spiffe://example.org/a/", InvalidPath),
    ("spiffe://example.org//a", InvalidPath),
    ("spiffe://example.org/a//b", InvalidPath),
    ("spiffe://example.org/.", InvalidPath),
    ("spiffe://example.org/..", InvalidPath),
    ("spiffe://example.org/a/./b", InvalidPath),
    ("spiffe://example.org/a/../b", InvalidPath),
    ("spiffe://example.org/a?x=1", InvalidPath),
    ("spiffe://example.org/a#frag", InvalidPath),
    ("spiffe://example.org/a%20b", InvalidPath),
    ("spiffe://example.org/a b", InvalidPath),
    ("spiffe://example.org/a:b", InvalidPath),
    ("spiffe://example.org/a@b", InvalidPath),
    ("spiffe://example.org/caf\u00e9", InvalidPath),
    ("spiffe://example.org/a\\b", InvalidPath),
    ("spiffe://example.org/a\x00", InvalidPath),
    ("spiffe://example.org/a+b", InvalidPath),
    ("spiffe://td/" + "p" * 2037, SpiffeIdTooLong),
]


def test_table_is_large_enough() -> None:
    assert len(VALID) + len(INVALID) >= 40


@pytest.mark.parametrize(("text", "td", "path"), VALID)
def test_valid_ids_parse_and_round_trip(text: str, td: str, path: str) -> None:
    sid = SpiffeId.parse(text)
    assert sid.trust_domain == TrustDomain(td)
    assert sid.path == path
    assert str(sid) == text
    assert SpiffeId.parse(str(sid)) == sid


@pytest.mark.parametrize(("text", "error"), INVALID)
def test_invalid_ids_raise_the_typed_error(text: str, error: type[InvalidSpiffeId]) -> None:
    with pytest.raises(error) as info:
        SpiffeId.parse(text)
    assert info.value.part in str(info.value)


def test_error_message_names_the_offending_part_and_value() -> None:
    with pytest.raises(InvalidPath) as info:
        SpiffeId.parse("spiffe://example.org/a/../b")
    message = str(info.value)
    assert "path" in message and "'..'" in message and "spiffe://example.org/a/../b" in message


def test_port_and_userinfo_have_specific_reasons() -> None:
    with pytest.raises(InvalidTrustDomain, match="port"):
        SpiffeId.parse("spiffe://example.org:443/x")
    with pytest.raises(InvalidTrustDomain, match="userinfo"):
        SpiffeId.parse("spiffe://me@example.org/x")


def test_member_of_compares_trust_domains() -> None:
    sid = SpiffeId.parse("spiffe://example.org/web")
    assert sid.member_of(TrustDomain("example.org"))
    assert not sid.member_of(TrustDomain("example.com"))
    assert not sid.member_of(TrustDomain("sub.example.org"))


def test_equality_and_hashing_follow_the_string_form() -> None:
    a = SpiffeId.parse("spiffe://example.org/a/b")
    b = SpiffeId.from_segments(TrustDomain("example.org"), "a", "b")
    assert a == b and hash(a) == hash(b)
    assert len({a, b, SpiffeId.parse("spiffe://example.org/a")}) == 2


def test_trust_domain_parse_accepts_name_or_id() -> None:
    assert TrustDomain.parse("example.org") == TrustDomain.parse("spiffe://example.org")
    assert TrustDomain("example.org").id_string() == "spiffe://example.org"
    with pytest.raises(InvalidTrustDomain):
        TrustDomain.parse("spiffe://example.org/path")
    with pytest.raises(InvalidTrustDomain):
        TrustDomain.parse("example.org/path")


def test_constructor_validates_too() -> None:
    with pytest.raises(InvalidPath):
        SpiffeId(TrustDomain("example.org"), "no-leading-slash")
    with pytest.raises(InvalidTrustDomain):
        TrustDomain("UPPER")


def test_non_string_input_is_refused() -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(b"spiffe://example.org")  # type: ignore[arg-type]


td_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=60)
segments = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_",
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))


@given(td_names, st.lists(segments, max_size=8))
def test_round_trip_property(td: str, segs: list[str]) -> None:
    sid = SpiffeId.from_segments(TrustDomain(td), *segs)
    assert SpiffeId.parse(str(sid)) == sid
    assert sid.member_of(TrustDomain(td))


@given(st.text(max_size=80))
def test_parse_never_raises_anything_but_invalid_spiffe_id(text: str) -> None:
    try:
        sid = SpiffeId.parse(text)
    except InvalidSpiffeId:
        return
    assert str(sid) == text
