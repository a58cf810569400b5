"""Authorizers: who, among peers whose SVID verified, may talk to this service.

Verification says a peer really holds a SPIFFE ID; an authorizer says whether that ID is
welcome. Each authorizer is a frozen callable `SpiffeId -> bool` with a repr that names its
policy, so a refusal can say what was expected (`NotAuthorized`).

`id_matches` takes either a compiled regex, matched in full against the whole ID string, or
a glob over SPIFFE ID segments: the trust domain is literal, `*` within a segment matches
any run of characters of that one segment (never a '/'), and a final `**` segment matches
one or more remaining segments. Unlike fnmatch, no wildcard ever crosses a '/', so
`spiffe://example.org/ns/*/sa/web` cannot be satisfied by `/ns/a/b/sa/web`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from insignia.spiffeid import SCHEME_PREFIX, InvalidSpiffeId, SpiffeId, TrustDomain

Authorizer = Callable[[SpiffeId], bool]

_SEGMENT_CHARS = "A-Za-z0-9._-"


class NotAuthorized(Exception):
    """A verified peer whose SPIFFE ID the authorizer refused."""

    def __init__(self, peer_id: SpiffeId, authorizer: Authorizer) -> None:
        super().__init__(f"peer {peer_id} is not authorized: expected {authorizer!r}")
        self.peer_id = peer_id
        self.authorizer = authorizer


class InvalidIdPattern(ValueError):
    """An `id_matches` glob that is not a SPIFFE ID with wildcards in its path."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(
            f"invalid SPIFFE ID pattern {pattern!r}: {reason}; "
            "expected spiffe://<trust domain>/<segment>... with '*' inside segments "
            "and an optional final '**'"
        )
        self.pattern = pattern
        self.reason = reason


@dataclass(frozen=True)
class AnyId:
    """Every verified SPIFFE ID, of any trust domain in the bundle source.

    For services that authorize per request from the peer ID the TLS stream carries.
    """

    def __call__(self, peer_id: SpiffeId) -> bool:
        return True

    def __repr__(self) -> str:
        return "any_id()"


@dataclass(frozen=True)
class AnyMemberOf:
    trust_domain: TrustDomain

    def __call__(self, peer_id: SpiffeId) -> bool:
        return peer_id.member_of(self.trust_domain)

    def __repr__(self) -> str:
        return f"any_member_of({self.trust_domain.name!r})"


@dataclass(frozen=True)
class OneOf:
    ids: frozenset[SpiffeId]

    def __call__(self, peer_id: SpiffeId) -> bool:
        return peer_id in self.ids

    def __repr__(self) -> str:
        return "one_of(" + ", ".join(repr(str(i)) for i in sorted(self.ids, key=str)) + ")"


@dataclass(frozen=True)
class IdMatches:
    pattern: re.Pattern[str]
    source: str

    def __call__(self, peer_id: SpiffeId) -> bool:
        return self.pattern.fullmatch(str(peer_id)) is not None

    def __repr__(self) -> str:
        return f"id_matches({self.source!r})"


def any_id() -> AnyId:
    return AnyId()


def any_member_of(trust_domain: TrustDomain | str) -> AnyMemberOf:
    if isinstance(trust_domain, str):
        trust_domain = TrustDomain.parse(trust_domain)
    return AnyMemberOf(trust_domain)


def one_of(*ids: SpiffeId | str) -> OneOf:
    """Exactly these IDs; strings are parsed (and refused) here, not at handshake time."""
    if not ids:
        raise ValueError("one_of() needs at least one SPIFFE ID; an empty policy admits no one")
    return OneOf(frozenset(i if isinstance(i, SpiffeId) else SpiffeId.parse(i) for i in ids))


def id_matches(pattern: str | re.Pattern[str]) -> IdMatches:
    """IDs matching a segment glob or, for a compiled regex, whose full string matches it."""
    if isinstance(pattern, re.Pattern):
        return IdMatches(pattern, pattern.pattern)
    return IdMatches(re.compile(_glob_to_regex(pattern)), pattern)


def _glob_to_regex(glob: str) -> str:
    """Validate `glob` as a SPIFFE ID with wildcards and translate it to a regex."""
    if not glob.startswith(SCHEME_PREFIX):
        raise InvalidIdPattern(glob, "must start with 'spiffe://'")
    name, slash, path = glob[len(SCHEME_PREFIX) :].partition("/")
    if "*" in name:
        raise InvalidIdPattern(glob, "the trust domain must be literal")
    segments = path.split("/") if slash else []
    try:
        # Wildcards stand in for ordinary characters, so the ID grammar checks the rest.
        base = SpiffeId.from_segments(TrustDomain(name), *(s.replace("*", "x") for s in segments))
    except InvalidSpiffeId as exc:
        raise InvalidIdPattern(glob, exc.reason) from exc
    parts = [re.escape(base.trust_domain.id_string())]
    for i, segment in enumerate(segments):
        if segment == "**":
            if i != len(segments) - 1:
                raise InvalidIdPattern(glob, "'**' is only allowed as the last segment")
            parts.append(f"(?:/[{_SEGMENT_CHARS}]+)+")
        elif "**" in segment:
            raise InvalidIdPattern(glob, f"'**' must be a whole segment, not part of {segment!r}")
        else:
            literal = (re.escape(piece) for piece in segment.split("*"))
            parts.append("/" + f"[{_SEGMENT_CHARS}]*".join(literal))
    return "".join(parts)
