"""The local PostgreSQL for tests: one throwaway schema per test, so xdist workers and
parallel tests never see each other's tables."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import psycopg
import pytest

DSN_ENV = "INSIGNIA_TEST_POSTGRES_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
Backend = Literal["sqlite", "postgresql"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgresql")
# For `@pytest.fixture(params=BACKEND_PARAMS)`: the PostgreSQL case carries its marker.
BACKEND_PARAMS = [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)]


def postgres_dsn() -> str:
    return os.environ.get(DSN_ENV, DEFAULT_DSN)


def require_postgres() -> str:
    """The DSN, or skip (fail when CI=true) if the server does not answer."""
    dsn = postgres_dsn()
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        reason = f"PostgreSQL at {dsn} ({DSN_ENV}) is unreachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return dsn


@contextmanager
def temporary_schema(dsn: str) -> Iterator[str]:
    """Create `test_<random>`, yield a URL whose connections use it, drop it afterwards."""
    schema = f"test_{secrets.token_hex(8)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in dsn else "?"
    try:
        yield f"{dsn}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def temporary_database(dsn: str) -> Iterator[tuple[str, str]]:
    """Create database `insignia_<random>`; yield (its name, a URL for it); drop it after.
    For tests that must cut a server off its database (ALTER DATABASE ... ALLOW_CONNECTIONS)
    without touching anyone else's."""
    name = f"insignia_{secrets.token_hex(6)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, _query = dsn.partition("?")
    try:
        yield name, f"{base.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@contextmanager
def database_url(backend: Backend, directory: Path) -> Iterator[str]:
    """A fresh, empty database of the given backend for one test."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'datastore.sqlite3'}"
        return
    with temporary_schema(require_postgres()) as url:
        yield url
