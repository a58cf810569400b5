"""WIT-SVIDs over HTTP: `Workload-Identity-Token` and `Workload-Proof-Token` in, the caller's
verified SPIFFE ID out.

The receiving side's `WitVerifier` holds what a check needs and nothing a request can
choose: its own origin (scheme://host:port, from configuration: the WPT's `aud` is checked
against it, never against the request's Host), a live bundle source, the replay cache, and an
authorizer as for mTLS (`insignia.authorize`). `WitMiddleware` wraps an ASGI app with it;
`verify_h11` serves a trio HTTP server built on h11 (or anything with the same request
shape). A refused request answers 400 as the WPT draft advises (401 would ask for the
`Authorization` header, which a WIT never uses) and 403 when the authorizer refuses.
The sending side is `insignia.wit_httpx.WitAuth`, or `WitCredential.headers` for any client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from insignia.authorize import Authorizer, NotAuthorized
from insignia.bundle import BundleSource
from insignia.wit import InvalidWit, Reason, ReplayCache, WitSvid, verify_request

__all__ = [
    "SCOPE_SPIFFE_ID",
    "SCOPE_WIT",
    "WitMiddleware",
    "WitVerifier",
    "verify_h11",
]

# Where `WitMiddleware` puts the verified caller in the ASGI scope.
SCOPE_SPIFFE_ID = "insignia.spiffe_id"
SCOPE_WIT = "insignia.wit_svid"

Headers = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


def _origin(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or "/" in rest.rstrip("/"):
        raise ValueError(f"origin {value!r}: expected scheme://host[:port], e.g. http://a:8080")
    return f"{scheme}://{rest.rstrip('/')}"


@dataclass
class WitVerifier:
    """Checks requests to the service at `origin`: WIT valid against `bundle_source`, WPT
    signed by the WIT's key for this method and URI, fresh and never seen, caller allowed."""

    origin: str
    bundle_source: BundleSource
    authorize: Authorizer | None = None
    replay_cache: ReplayCache = field(default_factory=ReplayCache)
    leeway: timedelta = timedelta(seconds=5)

    def __post_init__(self) -> None:
        self.origin = _origin(self.origin)

    def verify(
        self, method: str, path: str, headers: Headers, now: datetime | None = None
    ) -> WitSvid:
        """The caller's WIT-SVID; `InvalidWit` (answer 400) or `NotAuthorized` (403)."""
        if not path.startswith("/"):
            raise InvalidWit(Reason.AUDIENCE, f"request target {path[:64]!r} is not a path")
        svid = verify_request(
            method,
            self.origin + path,
            headers,
            self.bundle_source,
            self.replay_cache,
            now=now,
            leeway=self.leeway,
        )
        if self.authorize is not None and not self.authorize(svid.spiffe_id):
            raise NotAuthorized(svid.spiffe_id, self.authorize)
        return svid


class H11Request(Protocol):
    """What `verify_h11` reads of a request: h11.Request's shape (bytes throughout)."""

    @property
    def method(self) -> bytes: ...

    @property
    def target(self) -> bytes: ...

    @property
    def headers(self) -> Iterable[tuple[bytes, bytes]]: ...


def verify_h11(verifier: WitVerifier, request: H11Request) -> WitSvid:
    """The caller of one request a trio HTTP server read with h11 (`h11.Request`)."""
    try:
        method, target = request.method.decode("ascii"), request.target.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidWit(Reason.MALFORMED, "request line is not ASCII") from None
    return verifier.verify(method, target, list(request.headers))


# ASGI's own shapes, as asgiref spells them: plain dicts.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class WitMiddleware:
    """ASGI middleware: every HTTP request must prove a WIT-SVID; the app sees the caller's
    SPIFFE ID at `scope["insignia.spiffe_id"]` (and the WIT-SVID at `"insignia.wit_svid"`)."""

    def __init__(self, app: App, verifier: WitVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("raw_path") or scope.get("path", "").encode()
        if isinstance(path, bytes):
            path = path.decode("latin-1")
        try:
            svid = self.verifier.verify(scope["method"], path, scope.get("headers", ()))
        except InvalidWit as exc:
            await _refuse(send, 400, exc.reason.value, str(exc))
            return
        except NotAuthorized as exc:
            await _refuse(send, 403, "not_authorized", str(exc))
            return
        scope[SCOPE_SPIFFE_ID] = svid.spiffe_id
        scope[SCOPE_WIT] = svid
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, reason: str, detail: str) -> None:
    body = f"{detail}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"workload-auth-error", reason.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
