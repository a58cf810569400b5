"""JWT-SVIDs over HTTP: `Authorization: Bearer <token>` out, validated identity in.

The receiving side trusts nothing in the header until `insignia.jwtsvid.parse_and_validate`
has checked the signature against the live JWT bundle of the subject's trust domain and the
audience against its own; only then may an authorizer look at the SPIFFE ID.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping, Sequence
from datetime import datetime, timedelta

from insignia.authorize import Authorizer, NotAuthorized
from insignia.bundle import BundleSource
from insignia.jwtsvid import JwtSvid, parse_and_validate

__all__ = [
    "AUTHORIZATION",
    "InvalidAuthorizationHeader",
    "attach",
    "authorization_header",
    "bearer_token",
    "validate_authorization",
]

AUTHORIZATION = "Authorization"
# A compact JWS: three base64url parts. Anything else (spaces, CR/LF) never reaches a header.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_BEARER = re.compile(r"bearer +(\S+)", re.IGNORECASE)  # RFC 7235: the scheme is case-blind
_SHOWN = 24  # characters of a bad header kept in errors: enough to see it, not a whole token


class InvalidAuthorizationHeader(ValueError):
    """The Authorization header is missing or is not `Bearer <compact JWS>`."""

    def __init__(self, value: str | None, reason: str) -> None:
        shown = None if value is None else value[:_SHOWN] + ("..." if len(value) > _SHOWN else "")
        super().__init__(f"Authorization header {shown!r}: {reason}; expected 'Bearer <JWT-SVID>'")
        self.value = shown
        self.reason = reason


def authorization_header(token: str) -> str:
    """The header value for `token`; refuses anything that is not a compact JWS."""
    if not _COMPACT_JWS.fullmatch(token):
        raise InvalidAuthorizationHeader(token, "the token is not a compact JWS")
    return f"Bearer {token}"


def attach(headers: MutableMapping[str, str], token: str) -> None:
    """Set `Authorization: Bearer <token>` on an outgoing request's header mapping."""
    headers[AUTHORIZATION] = authorization_header(token)


def bearer_token(header_value: str | bytes | None) -> str:
    """The token in an incoming Authorization header value (RFC 6750 §2.1)."""
    if isinstance(header_value, bytes):
        try:
            header_value = header_value.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidAuthorizationHeader(repr(header_value), "not ASCII") from None
    if not header_value:
        raise InvalidAuthorizationHeader(header_value, "missing")
    match = _BEARER.fullmatch(header_value.strip())
    if match is None:
        raise InvalidAuthorizationHeader(header_value, "not the Bearer scheme with one token")
    return match.group(1)


def validate_authorization(
    header_value: str | bytes | None,
    bundle_source: BundleSource,
    audience: str | Sequence[str],
    *,
    authorize: Authorizer | None = None,
    now: datetime | None = None,
    leeway: timedelta = timedelta(0),
) -> JwtSvid:
    """Validate an incoming Authorization header value and return the caller's JWT-SVID.

    Raises `InvalidAuthorizationHeader` (answer 401), an `insignia.jwtsvid.InvalidJwtSvid`
    subclass naming the failed rule (401), or `NotAuthorized` when the token is valid but
    `authorize` refuses its SPIFFE ID (403). The bundle is read from `bundle_source` on every
    call, so a rotated JWT authority is honoured at once.
    """
    svid = parse_and_validate(
        bearer_token(header_value), bundle_source, audience, now=now, leeway=leeway
    )
    if authorize is not None and not authorize(svid.spiffe_id):
        raise NotAuthorized(svid.spiffe_id, authorize)
    return svid
