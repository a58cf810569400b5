"""SPIFFE IDs and trust domains, parsed strictly by the SPIFFE-ID specification.

Parsing is deliberately unforgiving: an ID that two implementations could read differently
(case, percent-encoding, dot segments) is an authorization bug waiting to happen, so anything
outside the spec's grammar is refused with an error naming the offending part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from insignia._shown import shown

SCHEME_PREFIX: Final = "spiffe://"
MAX_ID_BYTES: Final = 2048
MAX_TRUST_DOMAIN_LENGTH: Final = 255

_TRUST_DOMAIN_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


class InvalidSpiffeId(ValueError):
    """A string that is not a SPIFFE ID. `part` names where it went wrong."""

    part = "id"

    def __init__(self, value: str, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"invalid SPIFFE ID {shown(value)}: {self.part}: {reason}")


class InvalidScheme(InvalidSpiffeId):
    part = "scheme"


class InvalidTrustDomain(InvalidSpiffeId):
    part = "trust domain"


class InvalidPath(InvalidSpiffeId):
    part = "path"


class SpiffeIdTooLong(InvalidSpiffeId):
    part = "length"


def _check_trust_domain(name: str, value: str) -> None:
    if not name:
        raise InvalidTrustDomain(value, "is empty")
    if len(name) > MAX_TRUST_DOMAIN_LENGTH:
        raise InvalidTrustDomain(value, f"longer than {MAX_TRUST_DOMAIN_LENGTH} characters")
    for ch in name:
        if ch in _TRUST_DOMAIN_CHARS:
            continue
        if ch == ":":
            raise InvalidTrustDomain(value, "must not contain a port")
        if ch == "@":
            raise InvalidTrustDomain(value, "must not contain userinfo")
        if ch.isupper():
            raise InvalidTrustDomain(value, f"uppercase {ch!r}: only lowercase is allowed")
        raise InvalidTrustDomain(value, f"character {ch!r} is not one of [a-z0-9._-]")


def _check_path(path: str, value: str) -> None:
    """`path` is either empty or starts with '/'."""
    if not path:
        return
    if path.endswith("/"):
        raise InvalidPath(value, "trailing slash")
    for segment in path[1:].split("/"):
        if segment == "":
            raise InvalidPath(value, "empty segment")
        if segment in (".", ".."):
            raise InvalidPath(value, f"dot segment {segment!r}")
        for ch in segment:
            if ch not in _PATH_CHARS:
                if ch in "?#":
                    raise InvalidPath(value, "query and fragment are not allowed")
                if ch == "%":
                    raise InvalidPath(value, "percent-encoding is not allowed")
                raise InvalidPath(value, f"character {ch!r} is not one of [A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class TrustDomain:
    """The authority part of a SPIFFE ID: the realm whose CA vouches for an identity."""

    name: str

    def __post_init__(self) -> None:
        _check_trust_domain(self.name, self.name)

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Accept a bare name (`example.org`) or a bare trust domain ID (`spiffe://example.org`)."""
        if "://" in text:
            sid = SpiffeId.parse(text)
            if sid.path:
                raise InvalidTrustDomain(text, "a trust domain ID has no path")
            return sid.trust_domain
        if "/" in text:
            raise InvalidTrustDomain(text, "character '/' is not one of [a-z0-9._-]")
        return cls(str(text))  # a plain str even from a config value type (a str subclass)

    def id_string(self) -> str:
        return SCHEME_PREFIX + self.name

    def spiffe_id(self, path: str) -> SpiffeId:
        return SpiffeId.from_path(self, path)

    def __str__(self) -> str:
        return self.name


def _trusted_trust_domain(name: str) -> TrustDomain:
    td = object.__new__(TrustDomain)
    object.__setattr__(td, "name", name)
    return td


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """`spiffe://<trust domain><path>`; `path` is "" or starts with '/'."""

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        if self.path and not self.path.startswith("/"):
            raise InvalidPath(self.path, "must start with '/'")
        _check_path(self.path, str(self))
        if len(str(self).encode()) > MAX_ID_BYTES:
            raise SpiffeIdTooLong(str(self), f"longer than {MAX_ID_BYTES} bytes")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        if not isinstance(text, str):
            raise InvalidSpiffeId(repr(text), "must be a string")
        if len(text.encode()) > MAX_ID_BYTES:
            raise SpiffeIdTooLong(text, f"longer than {MAX_ID_BYTES} bytes")
        if not text:
            raise InvalidScheme(text, "is empty")
        if not text.startswith(SCHEME_PREFIX):
            if text.lower().startswith(SCHEME_PREFIX):
                raise InvalidScheme(text, "scheme must be lowercase 'spiffe'")
            raise InvalidScheme(text, "must start with 'spiffe://'")
        rest = text[len(SCHEME_PREFIX) :]
        slash = rest.find("/")
        name, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        for ch in "?#":
            if ch in name:
                raise InvalidTrustDomain(text, "query and fragment are not allowed")
        _check_trust_domain(name, text)
        _check_path(path, text)
        return cls._trusted(_trusted_trust_domain(name), path)

    @classmethod
    def _trusted(cls, trust_domain: TrustDomain, path: str) -> SpiffeId:
        """Build from parts `parse` has just validated: skipping a second validation pass
        matters when the server loads a hundred thousand entries."""
        sid = object.__new__(cls)
        object.__setattr__(sid, "trust_domain", trust_domain)
        object.__setattr__(sid, "path", path)
        return sid

    @classmethod
    def from_path(cls, trust_domain: TrustDomain, path: str) -> SpiffeId:
        return cls(trust_domain, path)

    @classmethod
    def from_segments(cls, trust_domain: TrustDomain, *segments: str) -> SpiffeId:
        return cls(trust_domain, "".join("/" + s for s in segments))

    def member_of(self, trust_domain: TrustDomain) -> bool:
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return SCHEME_PREFIX + self.trust_domain.name + self.path
