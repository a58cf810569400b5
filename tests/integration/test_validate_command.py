"""`insignia-server validate` and `insignia-agent validate`: the daemon's config checks, nothing
started."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devtools.harness.agent_process import AGENT_BIN, to_toml
from devtools.harness.server_process import SERVER_BIN, server_env
from tests.integration.conftest import AgentFactory, ServerFactory


def _validate(binary: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), "validate", "--config", str(config)],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )


def test_server_validate_accepts_a_good_config_and_starts_nothing(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(start=False)
    result = _validate(SERVER_BIN, server.config_path)
    assert (result.returncode, result.stdout.strip()) == (0, "config OK"), result.stderr
    assert not server.data_dir.exists()
    assert not server.admin_socket.exists()


def test_server_validate_runs_the_plugin_checks(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    server = server_factory(
        start=False, node_attestors={"x509pop": {"ca_bundle_paths": [str(missing)]}}
    )
    result = _validate(SERVER_BIN, server.config_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "node_attestors.x509pop" in lines[0] and str(missing) in lines[0]
    assert not server.data_dir.exists()


def test_server_validate_checks_the_upstream_ca_files(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    cert = tmp_path / "upstream.pem"
    server = server_factory(
        start=False, ca={"upstream": {"cert_file": str(cert), "key_file": str(tmp_path / "k.pem")}}
    )
    result = _validate(SERVER_BIN, server.config_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "ca.upstream.cert_file" in result.stderr and str(cert) in result.stderr


def test_server_validate_refuses_a_syntax_error(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('trust_domain = "example.org"\ncolour = "red"\n')
    result = _validate(SERVER_BIN, config)
    assert result.returncode == 2
    assert "colour" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_agent_validate_accepts_a_good_config_and_starts_nothing(
    agent_factory: AgentFactory,
) -> None:
    agent = agent_factory(start=False)
    result = _validate(AGENT_BIN, agent.config_path)
    assert (result.returncode, result.stdout.strip()) == (0, "config OK"), result.stderr
    assert not agent.data_dir.exists()
    assert not agent.admin_socket_path.exists()
    assert not agent.socket_path.exists()


def test_agent_validate_runs_the_plugin_and_bundle_checks(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    agent = agent_factory(start=False, workload_attestors={"unix": {"colour": "red"}})
    result = _validate(AGENT_BIN, agent.config_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "workload_attestors.unix" in result.stderr and "colour" in result.stderr

    config = agent.config()
    config["workload_attestors"] = {"unix": {}}
    config["trust_bundle_path"] = str(tmp_path / "missing-bundle.pem")
    agent.config_path.write_text(to_toml(config))
    result = _validate(AGENT_BIN, agent.config_path)
    assert result.returncode == 2
    assert "trust_bundle_path" in result.stderr and "missing-bundle.pem" in result.stderr
