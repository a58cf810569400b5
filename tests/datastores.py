"""Helpers for datastore tests: a settable clock and a fresh store per backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from devtools.harness.postgres import Backend, database_url
from insignia.server.datastore import Datastore


class Clock:
    """The datastore's clock, moved by the test instead of by sleeping."""

    def __init__(self, start: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@contextmanager
def fresh_store(backend: Backend, directory: Path, clock: Clock) -> Iterator[Datastore]:
    with database_url(backend, directory) as url, Datastore.open(url, clock=clock) as store:
        yield store
