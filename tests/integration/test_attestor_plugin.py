"""A third-party workload attestor, packaged and installed with pip, found through its entry
point and run beside the built-ins; and a package that tries to take over a built-in name."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PLUGIN_MODULE = """
import socket

from insignia.attestors.interface import PluginConfig, WorkloadAttestorPlugin
from insignia.daemon.peercred.credentials import PeerCredentials
from insignia.selectors import Selector


class HostnameConfig(PluginConfig, frozen=True, kw_only=True):
    prefix: str = "host"


class HostnameAttestor:
    def __init__(self, config: HostnameConfig) -> None:
        self.prefix = config.prefix

    async def attest(self, caller: PeerCredentials) -> list[Selector]:
        return [Selector("hostname", f"{self.prefix}:{socket.gethostname()}")]


PLUGIN = WorkloadAttestorPlugin(
    config_model=HostnameConfig, selector_types=frozenset({"hostname"}), create=HostnameAttestor
)
"""

AGENT_SIDE = """
import json, os, sys, trio
from devtools.callers import caller_of
from insignia.attestors.registry import load_workload_attestors
from insignia.attestors.workload_attestation import attest_workload
from insignia.daemon.config.loading import ConfigError

try:
    attestors = load_workload_attestors(json.loads(sys.argv[1]), "agent.toml")
except ConfigError as exc:
    print(exc)
    raise SystemExit(2)
caller = caller_of(os.getpid())
for selector in trio.run(attest_workload, caller, attestors, 5):
    print(selector)
"""


def install(tmp_path: Path, dist: str, module: str, source: str, entry: str) -> Path:
    """Build and install a one-module package with pip into its own target directory."""
    src = tmp_path / dist / "src"
    src.mkdir(parents=True)
    (src / f"{module}.py").write_text(source)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=68"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "0.1.0"

            [tool.setuptools]
            py-modules = ["{module}"]

            [project.entry-points."insignia.workload_attestors"]
            {entry} = "{module}:PLUGIN"
            """
        )
    )
    target = tmp_path / dist / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    return target


def agent(target: Path, sections: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", AGENT_SIDE, sections],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.slow
def test_an_installed_third_party_plugin_is_discovered_configured_and_run(
    tmp_path: Path,
) -> None:
    target = install(tmp_path, "insignia-hostname-attestor", "insignia_hostname", PLUGIN_MODULE,
                     "hostname")  # fmt: skip
    done = agent(target, '{"unix": {}, "hostname": {"prefix": "node"}}')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"hostname:node:{socket.gethostname()}" in lines
    assert f"unix:uid:{os.geteuid()}" in lines

    bad = agent(target, '{"hostname": {"prefx": "node"}}')
    assert (bad.returncode, bad.stdout) == (
        2,
        "agent.toml: workload_attestors.hostname.prefx: unknown key\n",
    )


@pytest.mark.slow
def test_a_package_cannot_replace_a_built_in_attestor(tmp_path: Path) -> None:
    forged = PLUGIN_MODULE.replace('"hostname"', '"unix"')
    target = install(tmp_path, "totally-unix", "totally_unix", forged, "unix")
    done = agent(target, '{"unix": {}}')
    assert done.returncode == 2
    assert "workload attestor 'unix' is registered by several packages" in done.stdout
