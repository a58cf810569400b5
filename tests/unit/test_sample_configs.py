"""The sample configs load as shipped, show every key of every built-in plugin, and every
environment variable the code reads is documented."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import msgspec
import pytest

from insignia.agent.config import load_agent_config
from insignia.attestors.interface import NodeAttestorPlugin, WorkloadAttestorPlugin
from insignia.attestors.registry import NODE_GROUP, WORKLOAD_GROUP
from insignia.server.config import load_server_config

REPO = Path(__file__).resolve().parents[2]
AGENT_SAMPLE = REPO / "agent" / "agent.sample.toml"
SERVER_SAMPLE = REPO / "server" / "server.sample.toml"
_SECTION = re.compile(r"^#?\s*\[([\w.]+)\]\s*$")
_KEY = re.compile(r"^#?\s*(\w+)\s*=")


def shown_keys(sample: Path) -> set[tuple[str, str]]:
    """(section, key) for every key the sample sets or shows commented out."""
    found, section = set(), ""
    for line in sample.read_text().splitlines():
        if match := _SECTION.match(line):
            section = match.group(1)
        elif match := _KEY.match(line):
            found.add((section, match.group(1)))
    return found


def fields(model: type[msgspec.Struct]) -> set[str]:
    return set(model.__struct_fields__)


def builtin_plugins(group: str) -> dict[str, object]:
    return {
        ep.name: ep.load()
        for ep in entry_points(group=group)
        if ep.value.startswith("insignia.attestors.")
    }


def test_both_samples_load_as_shipped() -> None:
    agent = load_agent_config(AGENT_SAMPLE)
    assert agent.workload_attestors["unix"]["discover_workload_path"] is True
    load_server_config(SERVER_SAMPLE)


def test_every_workload_attestor_key_is_in_the_agent_sample() -> None:
    shown = shown_keys(AGENT_SAMPLE)
    plugins = builtin_plugins(WORKLOAD_GROUP)
    assert set(plugins) == {"unix", "container", "docker", "systemd"}
    for name, plugin in plugins.items():
        assert isinstance(plugin, WorkloadAttestorPlugin)
        section = f"workload_attestors.{name}"
        missing = {k for k in fields(plugin.config_model) if (section, k) not in shown}
        assert not missing, f"[{section}] in {AGENT_SAMPLE.name} lacks {sorted(missing)}"


@pytest.mark.parametrize(
    ("sample", "prefix", "side"),
    [
        (AGENT_SAMPLE, "node_attestor", "agent_config"),
        (SERVER_SAMPLE, "node_attestors", "server_config"),
    ],
)
def test_every_node_attestor_key_is_in_the_samples(sample: Path, prefix: str, side: str) -> None:
    shown = shown_keys(sample)
    plugins = builtin_plugins(NODE_GROUP)
    assert set(plugins) == {"join_token", "x509pop", "sshpop"}
    for name, plugin in plugins.items():
        assert isinstance(plugin, NodeAttestorPlugin)
        section = f"{prefix}.{name}"
        assert any(s == section for s, _ in shown) or not fields(getattr(plugin, side)), section
        missing = {k for k in fields(getattr(plugin, side)) if (section, k) not in shown}
        assert not missing, f"[{section}] in {sample.name} lacks {sorted(missing)}"


_ENV_READ = re.compile(
    r"""(?:envvar=|environ\.get\(|environ\.setdefault\(|environ\[|getenv\(|_ENV(?::\s*Final)?\s*=\s*)["']([A-Z][A-Z0-9_]+)["']"""
)


def test_every_environment_variable_read_is_documented() -> None:
    read = set()
    for package in ("insignia", "server", "agent", "attestors"):
        for path in (REPO / package).rglob("*.py"):
            read |= set(_ENV_READ.findall(path.read_text()))
    assert {"INSIGNIA_SERVER_SOCKET", "SPIFFE_ENDPOINT_SOCKET"} <= read
    documented = (REPO / "README.md").read_text()
    undocumented = sorted(name for name in read if f"`{name}`" not in documented)
    assert not undocumented, f"README.md does not document {undocumented}"
