"""Every startup failure is one line on stderr: the config key or flag, the value and the
cause, with exit 2; an unexpected one still prints one line and says how to see more."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devtools.harness.agent_clients import agent_cli
from devtools.harness.agent_process import to_toml
from devtools.harness.server_process import SERVER_BIN, ServerProcess, server_env
from tests.integration.conftest import AgentFactory, ServerFactory
from tests.integration.test_instances import one_line, run_server

pytestmark = pytest.mark.integration

DEBUG_HINT = "run with --log-level debug to see the traceback"


def stopped_server(server_factory: ServerFactory, **config: Any) -> ServerProcess:
    """A server config with info logging, so stderr holds only what an operator would see."""
    return server_factory(name="failing", start=False, log={"level": "info"}, **config)


def test_server_data_dir_not_a_directory(server_factory: ServerFactory, tmp_path: Path) -> None:
    data_dir = tmp_path / "a-file"
    data_dir.write_text("")
    line = one_line(run_server(stopped_server(server_factory, data_dir=data_dir)))
    assert f"data_dir: {data_dir}: not a directory" in line


def test_server_admin_socket_directory_cannot_be_made(server_factory: ServerFactory) -> None:
    socket = Path("/proc/insignia-missing/admin.sock")
    line = one_line(run_server(stopped_server(server_factory, admin_socket=socket)))
    assert line.startswith("error: ") and "admin_socket: " in line
    assert "/proc/insignia-missing" in line


def test_server_postgresql_unreachable_names_the_dsn_without_password(
    server_factory: ServerFactory,
) -> None:
    url = "postgresql://insignia:hunter2@127.0.0.1:1/insignia"
    line = one_line(run_server(stopped_server(server_factory, database={"url": url})))
    assert "database.url: postgresql://insignia:***@127.0.0.1:1/insignia: cannot connect" in line
    assert "Connection refused" in line
    assert "hunter2" not in line


def test_server_missing_upstream_cert_file(server_factory: ServerFactory, tmp_path: Path) -> None:
    upstream = {"cert_file": tmp_path / "missing.pem", "key_file": tmp_path / "missing.key"}
    line = one_line(run_server(stopped_server(server_factory, ca={"upstream": upstream})))
    assert f"ca.upstream.cert_file: {tmp_path / 'missing.pem'}: cannot read" in line
    assert "No such file or directory" in line


def test_server_health_port_in_use(
    server_factory: ServerFactory, running_server: ServerProcess
) -> None:
    taken = running_server.health_address
    line = one_line(run_server(stopped_server(server_factory, health={"address": taken})))
    assert f"health.address: cannot listen on {taken}: Address already in use" in line


def test_server_unexpected_failure_is_one_line_pointing_to_debug(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(name="failing", log={"level": "info"})
    server.stop()
    for key in (server.data_dir / "keys").iterdir():
        key.write_text("not a PEM key")  # nothing a config key names: an unexpected failure
    result = run_server(server)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and lines[0].endswith(f"({DEBUG_HINT})")
    assert "Traceback" not in result.stderr


def test_agent_data_dir_not_a_directory(agent_factory: AgentFactory, tmp_path: Path) -> None:
    agent = agent_factory(start=False)
    data_dir = tmp_path / "a-file"
    data_dir.write_text("")
    agent.config_path.write_text(to_toml({**agent.config(), "data_dir": data_dir}))
    line = one_line(agent_cli("run", "--config", str(agent.config_path)))
    assert line.startswith(
        f"insignia-agent: {agent.config_path}: data_dir: {data_dir}: not a directory"
    )


def test_agent_admin_socket_directory_cannot_be_made(agent_factory: AgentFactory) -> None:
    socket = Path("/proc/insignia-missing/admin.sock")
    agent = agent_factory(start=False, admin_socket_path=socket)
    line = one_line(agent_cli("run", "--config", str(agent.config_path)))
    assert "admin_socket_path: " in line and "/proc/insignia-missing" in line


def test_agent_metrics_port_in_use(
    agent_factory: AgentFactory, running_server: ServerProcess
) -> None:
    taken = running_server.health_address
    agent = agent_factory(start=False, metrics={"address": taken})
    (agent.workdir / "join-token").write_text(running_server.join_token() + "\n")
    line = one_line(agent_cli("run", "--config", str(agent.config_path)))
    assert f"metrics.address: cannot listen on {taken}: Address already in use" in line


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["token", "generate", "--ttl", "99999999999"], "--ttl"),
        (
            [
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://example.org/w",
                "--parent-id",
                "spiffe://example.org/a",
                "--selector",
                "unix:uid:1",
                "--x509-svid-ttl",
                "99999999999",
            ],
            "--x509-svid-ttl",
        ),
    ],
)
def test_huge_ttl_is_a_usage_error(
    running_server: ServerProcess, args: list[str], flag: str
) -> None:
    result = subprocess.run(
        [str(SERVER_BIN), *args, "--socket", str(running_server.admin_socket)],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    # click names the hidden SPIRE alias beside the flag: "'--ttl' / '-ttl'".
    assert re.search(
        rf"Invalid value for '{flag}'( / '-\w+')?: 99999999999 is not in the range", result.stderr
    )
    assert "Traceback" not in result.stderr
