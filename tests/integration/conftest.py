"""Shared fixtures that start real daemons."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.harness.agent_process import AgentProcess
from devtools.harness.postgres import BACKEND_PARAMS, Backend, database_url
from devtools.harness.server_process import ServerProcess
from tests.integration.go_interop import GoClient, go_client

ServerFactory = Callable[..., ServerProcess]
AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """`start(backend="sqlite"|"postgresql", name="server", start=True, **config)` -> a started
    `ServerProcess` (PostgreSQL: a fresh schema per server). All are stopped at teardown."""
    started: list[ServerProcess] = []
    with contextlib.ExitStack() as stack:

        def start(
            backend: Backend = "sqlite",
            name: str = "server",
            start: bool = True,
            trust_domain: str = "example.org",
            **config: Any,
        ) -> ServerProcess:
            workdir = tmp_path / name
            workdir.mkdir(parents=True, exist_ok=True)
            url = "" if backend == "sqlite" else stack.enter_context(database_url(backend, workdir))
            server = ServerProcess(workdir, trust_domain, url, config)
            started.append(server)
            if start:
                server.start()
            return server

        try:
            yield start
        finally:
            for server in started:
                server.cleanup()


@pytest.fixture
def running_server(server_factory: ServerFactory) -> ServerProcess:
    """A started server on SQLite with default settings (trust domain example.org)."""
    return server_factory()


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Parametrize a test over SQLite and PostgreSQL (skipped if unreachable, outside CI)."""
    value: Backend = request.param
    return value


@pytest.fixture
def agent_factory(tmp_path: Path, running_server: ServerProcess) -> Iterator[AgentFactory]:
    """`start(server=running_server, name="agent", start=True, join_token=None, env=None,
    **config)` -> an `AgentProcess` attested with a fresh join token (or `join_token`) and
    ready. `config` is merged into the agent config. All are stopped at teardown."""
    started: list[AgentProcess] = []

    def start(
        server: ServerProcess = running_server,
        name: str = "agent",
        start: bool = True,
        join_token: str | None = None,
        env: dict[str, str] | None = None,
        **config: Any,
    ) -> AgentProcess:
        agent = AgentProcess(
            tmp_path / name,
            server.trust_domain,
            server.host,
            server.agent_api_port,
            server.attestation_port,
            server.bundle_path,
            extra_config=config,
            env=env or {},
        )
        started.append(agent)
        if start:
            agent.start(join_token or server.join_token())
        return agent

    try:
        yield start
    finally:
        for agent in started:
            agent.close()


@pytest.fixture
def running_agent(agent_factory: AgentFactory) -> AgentProcess:
    """A ready agent attested (join token) to `running_server`; `.agent_id`, `.socket_path`."""
    return agent_factory()


@pytest.fixture(scope="session")
def go() -> Iterator[GoClient]:
    """The Go interop binary (tests/interop/go), built once per run."""
    with go_client() as client:
        yield client


@pytest.fixture(name="tmp_path")
def short_tmp_path() -> Iterator[Path]:
    """Replaces pytest's tmp_path for every integration test.

    Under xdist, tmp_path is about 75 characters deep before a daemon adds its socket names,
    and a Unix socket path may not exceed 107: the server's temporary bind name overflowed.
    """
    path = Path(tempfile.mkdtemp(prefix="insignia-t-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class _Backend(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"backend\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_backend() -> Iterator[int]:
    """A small HTTP server on 127.0.0.1 answering every GET "backend\\n"; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
