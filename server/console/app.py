"""The web console's HTTP side: sessions, CSRF, security headers, routing and rendering.

Every page is server-rendered HTML (Jinja2 templates shipped in this package) and works
without JavaScript; `static/console.js` only adds live events and the timeline's refresh.
Nothing is loaded from elsewhere, and the Content-Security-Policy allows only this origin's
files: no inline script or style.

A request without an open session is refused: a page is redirected to an explanation, a
form post or the event stream gets 401. Every form carries the session's CSRF token.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2

from insignia.daemon.http.endpoint import Request, Response, Streamed
from insignia.daemon.logs import get_logger
from insignia.daemon.times import format_time
from insignia.server.console.events import EventHub
from insignia.server.console.sessions import Refusal, Session, Sessions, csrf_ok

HERE = Path(__file__).parent
audit = get_logger("insignia.server.audit")  # logins and logouts; actions via the admin API
COOKIE = "__Host-insignia-console"  # __Host-: Secure, Path=/, no Domain, enforced by browsers
MAX_FORM_FIELDS = 64
SECURITY_HEADERS = (
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
)
HTML = "text/html; charset=utf-8"
REFUSALS: dict[Refusal, str] = {
    "missing": "You have no console session (or your browser did not send its cookie).",
    "malformed": "The session cookie or login link is damaged.",
    "unknown": "This server does not know that session or login link: it may have been "
    "restarted (sessions live in the server's memory), or the link belongs to another server.",
    "used": "This login link has been used already: each one works once.",
    "expired": "Your session or login link has expired.",
    "ended": "You logged out of this session.",
}

Form = Mapping[str, Sequence[str]]
Page = Callable[["Call"], Awaitable[Response | Streamed]]


@dataclass(frozen=True)
class Call:
    """One authenticated request: the request, its session, the query and a posted form."""

    request: Request
    session: Session
    query: Form
    form: Form = field(default_factory=dict)

    def arg(self, name: str, default: str = "") -> str:
        source = self.form if self.request.method == "POST" else self.query
        values = source.get(name)
        return values[0] if values else default


def cookie_value(request: Request, name: str) -> str | None:
    """The value of cookie `name` in the request's Cookie header, None when absent."""
    header = request.header("cookie") or ""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


def _query(request: Request) -> Form | None:
    """The query string's fields (None when it holds too many, or bad encoding)."""
    try:
        return parse_qs(request.query, max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        return None


def _first(form: Form, name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def parse_form(request: Request) -> Form | None:
    """A urlencoded form body (None when the body is not one)."""
    kind = (request.header("content-type") or "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    try:
        text = request.body.decode("utf-8")
        return parse_qs(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return None


class Renderer:
    """The package's templates, autoescaped, with the console's filters."""

    def __init__(self, trust_domain: str) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["when"] = lambda moment: format_time(moment) if moment else "never"
        self.env.filters["q"] = lambda text: quote(str(text), safe="")
        self.env.globals["trust_domain"] = trust_domain

    def page(self, template: str, status: int = 200, **context: Any) -> Response:
        body = self.env.get_template(template).render(**context).encode()
        return Response(status, body, [("content-type", HTML), *SECURITY_HEADERS])


def _static_files() -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in sorted((HERE / "static").iterdir()):
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        files[f"/static/{path.name}"] = (path.read_bytes(), kind)
    return files


def redirect(location: str, *headers: tuple[str, str]) -> Response:
    return Response(303, b"", [("location", location), *SECURITY_HEADERS, *headers])


class ConsoleHttp:
    """Routes requests to pages (GET) and actions (POST), after the session and CSRF checks."""

    def __init__(
        self,
        sessions: Sessions,
        renderer: Renderer,
        hub: EventHub,
        pages: Mapping[str, Page],
        actions: Mapping[str, Page],
    ) -> None:
        self.sessions, self.renderer, self.hub = sessions, renderer, hub
        self.pages = pages
        self.actions = {**actions, "/logout": self._logout}
        self.static = _static_files()

    async def handle(self, request: Request) -> Response | Streamed:
        path, method = request.path, request.method
        if path in self.static and method in ("GET", "HEAD"):
            body, kind = self.static[path]
            return Response(200, body, [("content-type", kind), *SECURITY_HEADERS])
        query = _query(request)
        if query is None:
            return self.renderer.page("message.html", 400, title="Refused", text="bad query")
        if path == "/signed-out" and method == "GET":
            why = _first(query, "why")
            return self._refused(next((r for r in REFUSALS if r == why), "missing"))
        if path == "/login" and method == "GET":
            return self._login(_first(query, "token"))
        routes = self.pages if method in ("GET", "HEAD") else self.actions
        page = routes.get(path)
        if page is None or method not in ("GET", "HEAD", "POST"):
            return self.renderer.page("message.html", 404, title="Not found", text=path)
        session = self.sessions.session(cookie_value(request, COOKIE))
        if isinstance(session, str):
            if method == "POST" or path == "/events/stream":
                return self._refused(session)
            return redirect(f"/signed-out?why={session}")
        if method != "POST":
            return await page(Call(request, session, query))
        form = parse_form(request)
        if form is None:
            return self.renderer.page(
                "message.html", 415, title="Refused", text="expected a form post"
            )
        if not csrf_ok(session, _first(form, "csrf")):
            return self.renderer.page(
                "message.html",
                403,
                title="Refused",
                text="This form carried no valid CSRF token, so nothing was done. "
                "Reload the page and submit the form again.",
            )
        return await page(Call(request, session, query, form))

    def _login(self, token: str | None) -> Response:
        redeemed = self.sessions.redeem(token)
        if isinstance(redeemed, str):
            audit.info("console login refused", reason=redeemed)
            return self._refused(redeemed)
        cookie, session = redeemed
        audit.info("console session opened", uid=session.uid, console_session=session.name)
        # No Max-Age: the browser keeps the cookie until it closes, and the server, which
        # enforces the session's end, can then say "expired" rather than "missing".
        attributes = "Path=/; HttpOnly; Secure; SameSite=Strict"
        return redirect("/", ("set-cookie", f"{COOKIE}={cookie}; {attributes}"))

    def _refused(self, why: Refusal) -> Response:
        return self.renderer.page("signed_out.html", 401, reason=REFUSALS[why], why=why)

    async def _logout(self, call: Call) -> Response:
        self.sessions.end(call.session)
        audit.info("console session ended", uid=call.session.uid, console_session=call.session.name)
        cleared = f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
        return redirect("/signed-out?why=ended", ("set-cookie", cleared))
