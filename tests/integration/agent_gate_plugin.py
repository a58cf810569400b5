"""A workload attestor plugin installed only for tests: it holds attestation at a gate.

`attest()` reports the caller's pid on the `started` FIFO, then blocks until the test writes
a line to the `release` FIFO. That lets a test act at one exact point in the middle of an
attestation (kill the caller, reuse its pid) with no sleeps. The plugin reaches the agent
the way any third-party plugin does: a dist-info with an entry point on PYTHONPATH.
"""

from __future__ import annotations

import os
from pathlib import Path

MODULE = """
import os
import trio
from insignia.attestors.interface import PluginConfig, WorkloadAttestorPlugin
from insignia.selectors import Selector


class GateConfig(PluginConfig, frozen=True, kw_only=True):
    started_fifo: str
    release_fifo: str


class Gate:
    def __init__(self, config):
        self.config = config

    def _pass(self, pid):
        with open(self.config.started_fifo, "w") as started:
            started.write(f"{pid}\\n")
        with open(self.config.release_fifo) as release:
            release.readline()

    async def attest(self, caller):
        await trio.to_thread.run_sync(self._pass, caller.pid, abandon_on_cancel=True)
        return [Selector("gate", "passed")]


PLUGIN = WorkloadAttestorPlugin(GateConfig, frozenset({"gate"}), Gate)
"""


def install_gate_plugin(site_dir: Path) -> Path:
    """Write the plugin and its entry point under `site_dir` (put it on PYTHONPATH)."""
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "insignia_test_gate.py").write_text(MODULE)
    dist = site_dir / "insignia_test_gate-0.0.0.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: insignia-test-gate\nVersion: 0.0.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[insignia.workload_attestors]\ngate = insignia_test_gate:PLUGIN\n"
    )
    return site_dir


def make_fifos(directory: Path) -> tuple[Path, Path]:
    started, release = directory / "gate-started", directory / "gate-release"
    os.mkfifo(started, 0o600)
    os.mkfifo(release, 0o600)
    return started, release
