"""Database URLs, engines tuned per backend, and running migrations at start."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError

from insignia.daemon.files import make_private_file
from insignia.server.datastore.errors import (
    DatastoreUnavailable,
    SchemaTooNew,
    UnsupportedDatabaseUrl,
)

# Writers take this transaction-scoped lock on PostgreSQL, so change-log revisions commit in
# the order they are numbered and a reader resuming "after revision N" never skips one.
PG_WRITE_LOCK: Final = 0x1D5_16_4A
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
PG_CONNECT_TIMEOUT_S: Final = 5
WRITE_OPTION: Final = "insignia_write"


def normalize_url(url: str) -> URL:
    """Accept `sqlite:///path`, `postgresql://...` or `postgres://...` and pick our drivers."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UnsupportedDatabaseUrl(url, "not a database URL") from exc
    shown = parsed.render_as_string(hide_password=True)
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise UnsupportedDatabaseUrl(shown, "PostgreSQL is reached through psycopg 3 only")
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise UnsupportedDatabaseUrl(shown, "SQLite is reached through the stdlib driver")
        if parsed.database in (None, "", ":memory:") or "mode=memory" in shown:
            raise UnsupportedDatabaseUrl(shown, "in-memory SQLite loses everything; give a path")
        return parsed.set(drivername="sqlite+pysqlite")
    raise UnsupportedDatabaseUrl(shown, "expected sqlite:///PATH or postgresql://...")


def sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


def create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    # connect_timeout: an unreachable database fails a call (UNAVAILABLE) instead of hanging it.
    engine = sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=8,
        max_overflow=8,
        connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
    )
    sa.event.listen(engine, "begin", _pg_begin)
    return engine


def _sqlite_engine(url: URL) -> Engine:
    if url.database:
        _make_private_database(url.database)
    engine = sa.create_engine(
        url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    )
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _make_private_database(path: str) -> None:
    """The database holds join tokens: create it 0600 before SQLite does (SQLite would use the
    umask, 0644 by default, and then copy that mode to its -wal and -shm files). Files an
    older release left wider are narrowed."""
    try:
        make_private_file(path)
        for suffix in ("-wal", "-shm", "-journal"):
            make_private_file(path + suffix, create=False)
    except OSError as exc:
        raise DatastoreUnavailable(f"cannot create the SQLite database {path}: {exc}") from exc


def _sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    # Take transaction control from the driver so writes can BEGIN IMMEDIATE (below).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        _enable_wal(cursor)
        # FULL: a reported commit survives power loss, not only a killed process. Writes are
        # admin actions and attestations, rare enough that one fsync each is cheap.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    """WAL persists in the file, so only its first opener switches. That switch fails at once
    with "database is locked" when another connection races it (SQLite skips the busy
    handler there), so retry it within the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front: a deferred transaction that later writes can
    # fail with SQLITE_BUSY without waiting, which busy_timeout does not cover.
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _pg_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(WRITE_OPTION, False):
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")


def upgrade_schema(conn: Connection) -> None:
    """Run every pending migration on `conn`, inside the caller's write transaction.
    Refuse a database migrated by a newer release rather than guess at its schema."""
    config = Config()
    config.set_main_option("script_location", "insignia.server.datastore:migrations")
    config.attributes["connection"] = conn
    scripts = ScriptDirectory.from_config(config)
    current = MigrationContext.configure(conn).get_current_revision()
    if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
        raise SchemaTooNew(current, scripts.get_current_head() or "none")
    command.upgrade(config, "head")
