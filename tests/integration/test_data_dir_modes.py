"""The datastore and everything else in data_dir stay private, whatever the umask and
whatever mode an operator pre-created data_dir with (issue 12, item 8)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.harness.server_process import ServerProcess
from tests.integration.conftest import AgentFactory, ServerFactory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The common default: files SQLite creates itself would be 0644."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def narrowed(log: str) -> list[dict[str, object]]:
    records = []
    for line in log.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "data_dir narrowed to 0700":
                records.append(record)
    return records


@pytest.mark.usefixtures("open_umask")
def test_server_narrows_data_dir_and_creates_sqlite_files_0600(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(start=False)
    server.data_dir.mkdir(mode=0o755)
    server.data_dir.chmod(0o755)
    server.start()
    server.join_token()  # a write: the WAL and its index exist now

    assert mode(server.data_dir) == 0o700
    files = [server.data_dir / f"datastore.sqlite3{suffix}" for suffix in ("", "-wal", "-shm")]
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    [record] = narrowed(server.log_path.read_text())
    assert record["mode"] == "0755" and record["level"] == "warning"


@pytest.mark.usefixtures("open_umask")
def test_server_narrows_sqlite_files_an_older_release_left_0644(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    server.stop()
    database = server.data_dir / "datastore.sqlite3"
    database.chmod(0o644)
    server.start()
    assert mode(database) == 0o600
    assert narrowed(server.log_path.read_text()) == []  # data_dir was created 0700


@pytest.mark.usefixtures("open_umask")
def test_agent_narrows_data_dir(agent_factory: AgentFactory, running_server: ServerProcess) -> None:
    agent = agent_factory(start=False)
    agent.data_dir.mkdir(mode=0o755)
    agent.data_dir.chmod(0o755)
    agent.start(running_server.join_token())

    assert mode(agent.data_dir) == 0o700
    [record] = narrowed(agent.logs())
    assert record["mode"] == "0755"
    assert {f.name: mode(f) for f in agent.data_dir.iterdir()} == {
        f.name: 0o600 for f in agent.data_dir.iterdir()
    }
