"""The README's `unix:path` example works with agent/agent.sample.toml as shipped."""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from devtools.harness.agent_clients import agent_cli, register
from devtools.harness.server_process import REPO, ServerProcess
from tests.integration.conftest import AgentFactory


def test_readme_unix_path_example_with_the_sample_config(
    running_server: ServerProcess, agent_factory: AgentFactory
) -> None:
    sample = tomllib.loads((REPO / "agent" / "agent.sample.toml").read_text())
    # the sample's attestation settings as shipped; only paths and addresses are this test's
    agent = agent_factory(
        workload_attestors=sample["workload_attestors"], workload=sample["workload"]
    )
    executable = Path(os.path.realpath(sys.executable))  # what /proc/<pid>/exe names
    register(
        running_server,
        agent,
        "/web",
        f"unix:uid:{os.getuid()}",
        f"unix:path:{executable}",
    )
    fetched = agent_cli("api", "fetch", "x509", "--socket", agent.endpoint, "--timeout", "30")
    assert fetched.returncode == 0, fetched.stderr
    assert f"spiffe://{running_server.trust_domain}/web" in fetched.stdout
