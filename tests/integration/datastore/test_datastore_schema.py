"""Opening a datastore: URL handling, migrations at start, and per-backend settings."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from insignia.server.datastore import (
    Datastore,
    DatastoreUnavailable,
    SchemaTooNew,
    UnsupportedDatabaseUrl,
    normalize_url,
)
from insignia.server.datastore.schema import metadata
from insignia.spiffeid import SpiffeId, TrustDomain


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite:////var/lib/insignia/datastore.sqlite3", "sqlite+pysqlite"),
        ("sqlite:///relative.db", "sqlite+pysqlite"),
        ("postgresql://u:p@db:5432/insignia", "postgresql+psycopg"),
        ("postgres://u@db/insignia?sslmode=require", "postgresql+psycopg"),
        ("postgresql+psycopg://u@db/insignia", "postgresql+psycopg"),
    ],
)
def test_urls_are_normalized(given: str, driver: str) -> None:
    normalized = normalize_url(given)
    assert normalized.drivername == driver
    assert normalized.database == sa.engine.make_url(given).database
    assert dict(normalized.query) == dict(sa.engine.make_url(given).query)


@pytest.mark.parametrize(
    "given",
    [
        "mysql://u@db/x",
        "postgresql+asyncpg://u@db/x",
        "sqlite://",
        "sqlite:///:memory:",
        "not a url",
    ],
)
def test_unsupported_urls_are_refused(given: str) -> None:
    with pytest.raises(UnsupportedDatabaseUrl, match="database url"):
        normalize_url(given)


def test_migrated_schema_matches_the_model(url: str) -> None:
    with Datastore.open(url):
        pass
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            assert context.get_current_revision() == "0005"
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_0002_adds_svid_fingerprints_and_keeps_agents(url: str) -> None:
    """An agent attested under schema 0001 survives the upgrade, with "" fingerprints
    (meaning "recorded before fingerprints": the serial alone is checked until renewal)."""
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            upgrade_to(conn, "0001")
            conn.execute(
                sa.text(
                    "INSERT INTO agents VALUES ('spiffe://example.org/insignia/agent/a', "
                    "'join_token', '7', '', :t, false, false, :t, :t)"
                ),
                {"t": datetime(2030, 1, 1)},
            )
    finally:
        engine.dispose()
    with Datastore.open(url) as store:
        agent = store.get_agent(SpiffeId.parse("spiffe://example.org/insignia/agent/a"))
        assert (agent.serial_number, agent.svid_fingerprint, agent.new_svid_fingerprint) == (
            "7",
            "",
            "",
        )
        store.put_agent(replace(agent, svid_fingerprint="ab" * 32))
        assert store.get_agent(agent.spiffe_id).svid_fingerprint == "ab" * 32


def test_0005_adds_wit_ttls_and_wit_keys_and_keeps_rows(url: str) -> None:
    """An entry and a JWT key from schema 0004 survive; the entry's WIT TTL is 0 (the
    server's default), and the journal takes WIT keys but still refuses other kinds."""
    t = datetime(2030, 1, 1)
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            upgrade_to(conn, "0004")
            conn.execute(
                sa.text(
                    "INSERT INTO entries (id, spiffe_id, parent_id, identity_digest, "
                    "x509_svid_ttl, jwt_svid_ttl, hint, admin, downstream, revision, "
                    "created_at, updated_at) VALUES ('e1', 'spiffe://example.org/w', "
                    "'spiffe://example.org/p', 'd1', 60, 70, '', false, false, 1, :t, :t)"
                ),
                {"t": t},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO ca_keys (kind, key_id, slot, status, public_key, not_before, "
                    "not_after, tainted, revoked, created_at, updated_at, server_id) VALUES "
                    "('jwt', 'k1', 'jwt', 'active', :pk, :t, :t, false, false, :t, :t, 's')"
                ),
                {"t": t, "pk": b"key"},
            )
    finally:
        engine.dispose()
    with Datastore.open(url) as store:
        entry = store.get_entry("e1")
        assert (entry.x509_svid_ttl, entry.jwt_svid_ttl, entry.wit_svid_ttl) == (60, 70, 0)
        (jwt_key,) = store.load_ca_keys()
        assert (jwt_key.kind, jwt_key.key_id, jwt_key.server_id) == ("jwt", "k1", "s")
        store.put_ca_keys([replace(jwt_key, kind="wit", key_id="w1", slot="wit")])
        assert {r.kind for r in store.load_ca_keys()} == {"jwt", "wit"}
    engine = sa.create_engine(normalize_url(url))
    try:
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO ca_keys (kind, key_id, slot, status, public_key, not_before, "
                    "not_after, tainted, revoked, created_at, updated_at, server_id) VALUES "
                    "('xyz', 'k2', 'x', 'active', :pk, :t, :t, false, false, :t, :t, 's')"
                ),
                {"t": t, "pk": b"key"},
            )
    finally:
        engine.dispose()


def upgrade_to(conn: sa.Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", "insignia.server.datastore:migrations")
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


def test_reopening_keeps_data_and_does_not_migrate_again(url: str) -> None:
    with Datastore.open(url) as store:
        store.put_bundle(TrustDomain("example.org"), "{}")
    with Datastore.open(url) as store:
        assert store.get_bundle(TrustDomain("example.org")).sequence == 1
        store.ping()


def test_concurrent_first_opens_both_succeed(url: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def open_once() -> None:
        start.wait()
        try:
            Datastore.open(url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_once) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []


def test_sqlite_runs_in_wal_with_full_sync_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    # Per-connection settings can only be seen on the store's own connections.
    with Datastore.open(f"sqlite:///{path}") as store, store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_unreachable_postgres_is_reported_as_unavailable() -> None:
    with pytest.raises(DatastoreUnavailable):
        Datastore.open("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")


def test_a_newer_schema_is_refused(url: str) -> None:
    Datastore.open(url).close()
    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaTooNew, match="9999"):
        Datastore.open(url)


def test_unopenable_sqlite_path_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DatastoreUnavailable):
        Datastore.open(f"sqlite:///{tmp_path}/missing-dir/store.sqlite3")


def test_refused_url_does_not_echo_the_password() -> None:
    with pytest.raises(UnsupportedDatabaseUrl) as caught:
        normalize_url("mysql://admin:hunter2@db/x")
    assert "hunter2" not in str(caught.value)
