"""Hearing other servers' commits at once: a dedicated PostgreSQL connection that LISTENs on the
database's change channel (every write NOTIFYs it at commit, see `Datastore._write`).

A notification only says "the change log moved"; the follower then reads the log from its own
last revision, so a lost notification (dropped connection, a restart of PostgreSQL) loses
nothing: the follower also polls, and every reconnect counts as a wake-up so it catches up.
Blocking: `wait` runs in a worker thread.
"""

from __future__ import annotations

import random
import time
from typing import Final

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from insignia._closing import Closing
from insignia.backoff import Backoff
from insignia.daemon.logs import get_logger

log = get_logger("insignia.server")
RECONNECT: Final = Backoff(initial=0.2, maximum=10.0)
CONNECT_TIMEOUT_S: Final = 5


def libpq_url(url: URL) -> str:
    """The SQLAlchemy URL as a libpq connection URI (psycopg's own form), password kept."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener(Closing):
    def __init__(self, url: URL, channel: str, application_name: str) -> None:
        self._conninfo = libpq_url(url)
        self._channel = channel
        self._application_name = application_name
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._failures = 0
        self._retry_at = 0.0  # time.monotonic() before which we do not try to reconnect

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` s; True when the log may have moved (a notification, or a
        fresh LISTEN after a gap in which notifications could have been missed)."""
        if self._conn is None:
            pause = self._retry_at - time.monotonic()
            if pause > 0:
                time.sleep(min(pause, timeout))
                return False
            return self._connect()
        try:
            return any(True for _ in self._conn.notifies(timeout=timeout, stop_after=1))
        except psycopg.Error as exc:
            log.warning("change notifications lost; polling until reconnected", error=str(exc))
            self.close()
            return False

    def _connect(self) -> bool:
        try:
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=self._application_name,
            )
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except psycopg.Error as exc:
            delay = RECONNECT.delay(self._failures, random.random())
            self._failures += 1
            self._retry_at = time.monotonic() + delay
            log.debug("change notifications: cannot connect", error=str(exc), retry_in=delay)
            return False
        if self._failures:
            log.info("change notifications restored", after_failures=self._failures)
        self._conn, self._failures = conn, 0
        return True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
