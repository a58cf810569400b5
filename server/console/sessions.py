"""Console logins and sessions: one-time login tokens exchanged for a session cookie.

Both live in this server's memory only: a restart ends every session, and servers sharing a
database do not share them (log in through the server whose console you open; its
`console login` prints that server's URL). A shared table would need a migration and a
change-log kind for little gain: a login takes one command.

A token or cookie is `<name>.<secret>`: `name` picks the record (and is what the audit log
shows), the secret is kept only as its SHA-256 and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

# Bounds on what minting logins can make the server hold.
MAX_PENDING_LOGINS = 256
MAX_SESSIONS = 1024
# An ended session is remembered this long, so its cookie gets "expired", not "unknown".
REMEMBER_ENDED = timedelta(days=1)

Refusal = Literal["missing", "malformed", "unknown", "used", "expired", "ended"]


@dataclass(frozen=True)
class Session:
    """An open console session: who minted its login, until when, its CSRF token."""

    name: str
    uid: int
    expires_at: datetime
    csrf: str


@dataclass
class _Secret:
    digest: bytes
    expires_at: datetime
    uid: int
    spent: bool = False  # a login: redeemed; a session: logged out
    session: Session | None = field(default=None)


def _split(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    name, dot, secret = text.partition(".")
    if not dot or not name or not secret or len(text) > 200:
        return None
    return name, secret


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _matches(record: _Secret, secret: str) -> bool:
    return hmac.compare_digest(record.digest, _digest(secret))


class Sessions:
    """Logins waiting to be used and open sessions; call from the daemon's one thread."""

    def __init__(
        self, login_ttl: timedelta, session_ttl: timedelta, clock: Callable[[], datetime]
    ) -> None:
        self.login_ttl, self.session_ttl, self.clock = login_ttl, session_ttl, clock
        self._logins: dict[str, _Secret] = {}
        self._sessions: dict[str, _Secret] = {}

    def mint_login(self, uid: int) -> tuple[str, str, datetime]:
        """A new one-time login token for `uid`: (token, session name, expiry)."""
        self._prune()
        if len(self._logins) >= MAX_PENDING_LOGINS:
            oldest = min(self._logins, key=lambda n: self._logins[n].expires_at)
            del self._logins[oldest]
        name, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        expires_at = (self.clock() + self.login_ttl).replace(microsecond=0)
        self._logins[name] = _Secret(_digest(secret), expires_at, uid)
        return f"{name}.{secret}", name, expires_at

    def redeem(self, token: str | None) -> tuple[str, Session] | Refusal:
        """Exchange a login token, once, for (cookie value, session); else why not."""
        parts = _split(token)
        if parts is None:
            return "missing" if not token else "malformed"
        name, secret = parts
        login = self._logins.get(name)
        if login is None or not _matches(login, secret):
            return "unknown"
        if login.spent:
            return "used"
        if self.clock() >= login.expires_at:
            return "expired"
        login.spent = True  # kept until it expires, so a second use is told "used"
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda n: self._sessions[n].expires_at)
            del self._sessions[oldest]
        cookie_secret = secrets.token_urlsafe(32)
        session = Session(
            name, login.uid, self.clock() + self.session_ttl, secrets.token_urlsafe(24)
        )
        self._sessions[name] = _Secret(
            _digest(cookie_secret), session.expires_at, login.uid, session=session
        )
        return f"{name}.{cookie_secret}", session

    def session(self, cookie: str | None) -> Session | Refusal:
        """The open session a cookie value names, else why not."""
        parts = _split(cookie)
        if parts is None:
            return "missing" if not cookie else "malformed"
        name, secret = parts
        record = self._sessions.get(name)
        if record is None or record.session is None or not _matches(record, secret):
            return "unknown"
        if record.spent:
            return "ended"
        if self.clock() >= record.expires_at:
            return "expired"
        return record.session

    def end(self, session: Session) -> None:
        """Log out: the cookie is refused from now on."""
        record = self._sessions.get(session.name)
        if record is not None:
            record.spent = True

    def is_open(self, session: Session) -> bool:
        """Whether `session` may still be used (not ended, not expired)."""
        record = self._sessions.get(session.name)
        return (
            record is not None
            and record.session is session
            and not record.spent
            and self.clock() < record.expires_at
        )

    def _prune(self) -> None:
        now = self.clock()
        for table, keep in ((self._logins, timedelta(0)), (self._sessions, REMEMBER_ENDED)):
            for name in [n for n, r in table.items() if r.expires_at + keep <= now]:
                del table[name]


def csrf_ok(session: Session, token: str | None) -> bool:
    """Whether a form carried this session's CSRF token (constant-time compare)."""
    return token is not None and hmac.compare_digest(session.csrf.encode(), token.encode())
