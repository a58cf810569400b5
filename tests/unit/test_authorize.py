"""Authorizers: which verified SPIFFE IDs a policy admits, and how it names itself."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from insignia.authorize import (
    InvalidIdPattern,
    NotAuthorized,
    any_id,
    any_member_of,
    id_matches,
    one_of,
)
from insignia.spiffeid import InvalidSpiffeId, InvalidTrustDomain, SpiffeId, TrustDomain


def sid(text: str) -> SpiffeId:
    return SpiffeId.parse(text)


def test_any_member_of_admits_exactly_its_trust_domain() -> None:
    policy = any_member_of("example.org")
    assert policy(sid("spiffe://example.org/a"))
    assert policy(sid("spiffe://example.org"))
    assert not policy(sid("spiffe://example.org.evil/a"))
    assert not policy(sid("spiffe://other.org/a"))
    assert repr(policy) == "any_member_of('example.org')"
    assert any_member_of(TrustDomain("example.org")) == policy
    with pytest.raises(InvalidTrustDomain):
        any_member_of("Example.org")


def test_one_of_admits_only_the_listed_ids() -> None:
    policy = one_of("spiffe://example.org/b", sid("spiffe://example.org/a"))
    assert policy(sid("spiffe://example.org/a"))
    assert policy(sid("spiffe://example.org/b"))
    assert not policy(sid("spiffe://example.org/a/b"))
    assert not policy(sid("spiffe://example.org/c"))
    assert repr(policy) == "one_of('spiffe://example.org/a', 'spiffe://example.org/b')"


def test_one_of_refuses_bad_or_missing_ids_when_built() -> None:
    with pytest.raises(InvalidSpiffeId):
        one_of("spiffe://example.org/a/../b")
    with pytest.raises(ValueError, match="at least one"):
        one_of()


def test_any_id_admits_everyone() -> None:
    assert any_id()(sid("spiffe://x.org/y"))
    assert repr(any_id()) == "any_id()"


@pytest.mark.parametrize(
    ("pattern", "admitted", "refused"),
    [
        (
            "spiffe://example.org/ns/*/sa/web",
            ["spiffe://example.org/ns/prod/sa/web", "spiffe://example.org/ns/a-b.c_d/sa/web"],
            [
                "spiffe://example.org/ns/a/b/sa/web",  # '*' never crosses a '/'
                "spiffe://example.org/ns/prod/sa/web2",
                "spiffe://other.org/ns/prod/sa/web",
            ],
        ),
        (
            "spiffe://example.org/web-*",
            ["spiffe://example.org/web-", "spiffe://example.org/web-1"],
            [
                "spiffe://example.org/web",
                "spiffe://example.org/web-1/x",
                "spiffe://example.org/db-1",
            ],
        ),
        (
            "spiffe://example.org/team/**",
            ["spiffe://example.org/team/a", "spiffe://example.org/team/a/b/c"],
            ["spiffe://example.org/team", "spiffe://example.org/teams/a", "spiffe://example.org"],
        ),
        (
            "spiffe://example.org/a.b",  # '.' is literal, not a regex wildcard
            ["spiffe://example.org/a.b"],
            ["spiffe://example.org/aXb"],
        ),
        (
            "spiffe://example.org",
            ["spiffe://example.org"],
            ["spiffe://example.org/a"],
        ),
    ],
)
def test_id_matches_glob(pattern: str, admitted: list[str], refused: list[str]) -> None:
    policy = id_matches(pattern)
    assert repr(policy) == f"id_matches({pattern!r})"
    for text in admitted:
        assert policy(sid(text)), text
    for text in refused:
        assert not policy(sid(text)), text


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("https://example.org/a", "must start with 'spiffe://'"),
        ("spiffe://*.example.org/a", "trust domain must be literal"),
        ("spiffe://Example.org/a", "uppercase"),
        ("spiffe://example.org/**/a", "only allowed as the last segment"),
        ("spiffe://example.org/a**", "must be a whole segment"),
        ("spiffe://example.org/a/", "trailing slash"),
        ("spiffe://example.org//a", "empty segment"),
        ("spiffe://example.org/./a", "dot segment"),
        ("spiffe://example.org/a?b", "query"),
        ("spiffe://example.org/[ab]", "character '['"),
    ],
)
def test_id_matches_refuses_bad_globs(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidIdPattern, match=re.escape(reason)) as info:
        id_matches(pattern)
    assert info.value.pattern == pattern


def test_id_matches_regex_must_match_the_whole_id() -> None:
    policy = id_matches(re.compile(r"spiffe://example\.org/(web|api)/\d+"))
    assert policy(sid("spiffe://example.org/web/1"))
    assert not policy(sid("spiffe://example.org/web/1/x"))  # fullmatch, not search
    assert not policy(sid("spiffe://example.org/db/1"))
    assert repr(policy) == r"id_matches('spiffe://example\\.org/(web|api)/\\d+')"


_segment = st.text("abcXYZ019._-", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))


@given(st.lists(_segment, min_size=0, max_size=5))
def test_a_star_segment_matches_exactly_one_segment(segments: list[str]) -> None:
    spiffe_id = SpiffeId.from_segments(TrustDomain("example.org"), *segments)
    assert id_matches("spiffe://example.org/*")(spiffe_id) == (len(segments) == 1)
    assert id_matches("spiffe://example.org/**")(spiffe_id) == (len(segments) >= 1)


def test_not_authorized_names_the_peer_and_the_policy() -> None:
    policy = one_of("spiffe://example.org/a")
    error = NotAuthorized(sid("spiffe://example.org/b"), policy)
    assert error.peer_id == sid("spiffe://example.org/b")
    assert str(error) == (
        "peer spiffe://example.org/b is not authorized: expected one_of('spiffe://example.org/a')"
    )
