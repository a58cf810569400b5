"""The shipped unit files pass `systemd-analyze verify` and keep their hardening."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
BIN = Path(sys.executable).parent


def _service_section(name: str) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return dict(parser["Service"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize("daemon", ["server", "agent"])
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, daemon: str) -> None:
    # The unit names the installed path; point it at this checkout's console script, which is
    # the only change, so verify can check that the command exists and is executable.
    source = (UNITS / f"insignia-{daemon}.service").read_text()
    installed = f"/usr/local/bin/insignia-{daemon}"
    assert installed in source
    unit = tmp_path / f"insignia-{daemon}.service"
    unit.write_text(source.replace(installed, str(BIN / f"insignia-{daemon}")))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"insignia-{daemon}.service" not in result.stderr, result.stderr


def test_server_runs_unprivileged_with_no_capabilities() -> None:
    service = _service_section("insignia-server.service")
    assert service["Type"] == "notify"
    assert service["User"] != "root"
    assert service["CapabilityBoundingSet"] == ""
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert service[key] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectoryMode"] == "0700"


def test_agent_keeps_only_the_capabilities_attestation_needs() -> None:
    service = _service_section("insignia-agent.service")
    assert service["Type"] == "notify"
    assert set(service["CapabilityBoundingSet"].split()) == {
        "CAP_SYS_PTRACE",
        "CAP_DAC_READ_SEARCH",
    }
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["Restart"] in {"always", "on-failure"}


@pytest.mark.parametrize(
    ("daemon", "sample", "state_key", "runtime_keys"),
    [
        ("server", "server/server.sample.toml", "data_dir", ["admin_socket"]),
        ("agent", "agent/agent.sample.toml", "data_dir", ["socket_path", "admin_socket_path"]),
    ],
)
def test_unit_directories_match_the_sample_config(
    daemon: str, sample: str, state_key: str, runtime_keys: list[str]
) -> None:
    """A packaged daemon started by its unit must find the directories its config names."""
    config = tomllib.loads((UNITS.parent / sample).read_text())
    service = _service_section(f"insignia-{daemon}.service")
    state = Path("/var/lib") / service["StateDirectory"]
    runtime = Path("/run") / service["RuntimeDirectory"]
    assert Path(config[state_key]) == state
    for key in runtime_keys:
        assert runtime in Path(config[key]).parents, (key, config[key])
