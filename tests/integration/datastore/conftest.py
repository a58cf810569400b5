"""Every datastore test runs on SQLite and on PostgreSQL, each with a fresh store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.harness.postgres import BACKEND_PARAMS, database_url
from insignia.server.datastore import Datastore
from tests.datastores import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=BACKEND_PARAMS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database (SQLite file or PostgreSQL schema) per test and backend."""
    with database_url(request.param, tmp_path) as u:
        yield u


@pytest.fixture
def store(url: str, clock: Clock) -> Iterator[Datastore]:
    with Datastore.open(url, clock=clock) as s:
        yield s
