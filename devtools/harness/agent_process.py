"""A real `insignia-agent run` process for integration tests and benchmarks.

`AgentProcess` writes a config, starts the daemon, waits for /ready on its admin socket, and
stops it with SIGTERM. It has no pytest dependency so benchmarks can use it too; the
`running_agent` fixture (tests/integration/conftest.py) wraps it.

The Workload API socket lives in a fresh 0755 directory under /tmp, not in pytest's 0700
tmp_path, so workloads started under other uids can reach it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from devtools.harness.metrics_text import sample
from devtools.harness.waiting import wait_for
from insignia.agent.identity.node_attestation import BUNDLE_FILE, IDENTITY_FILE
from insignia.daemon.sealed import unseal

REPO = Path(__file__).resolve().parents[2]
AGENT_BIN = Path(sys.executable).with_name("insignia-agent")


class AgentFailed(RuntimeError):
    """The agent exited or never became ready; carries its log tail."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # an inline table, as in an array of tables
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """Enough TOML for agent configs: scalars, lists and nested tables."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for key, value in data.items():
        if isinstance(value, Mapping):
            name = f"{prefix}{key}"
            lines.append(f"\n[{name}]")
            lines.append(to_toml(value, prefix=f"{name}."))
    return "\n".join(lines) + "\n"


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


@dataclass
class AgentProcess:
    """One agent: config, directories and the daemon process (None while stopped)."""

    workdir: Path
    trust_domain: str
    server_address: str
    server_port: int
    attestation_port: int
    trust_bundle_path: Path
    extra_config: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    public_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.public_dir = Path(tempfile.mkdtemp(prefix="insignia-agent-"))
        self.public_dir.chmod(0o755)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self._log: BinaryIO | None = None

    def write_config(self) -> None:
        self.config_path.write_text(to_toml(self.config()))

    @property
    def socket_path(self) -> Path:
        return self.public_dir / "api.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def admin_socket_path(self) -> Path:
        return self.workdir / "admin" / "admin.sock"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def config_path(self) -> Path:
        return self.workdir / "agent.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def config(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "trust_domain": self.trust_domain,
            "data_dir": self.data_dir,
            "socket_path": self.socket_path,
            "admin_socket_path": self.admin_socket_path,
            "trust_bundle_path": self.trust_bundle_path,
            "server": {
                "address": self.server_address,
                "port": self.server_port,
                "attestation_port": self.attestation_port,
            },
            "node_attestor": {"join_token": {"token_file": self.workdir / "join-token"}},
            "workload_attestors": {"unix": {}},
            "sync": {"initial_backoff": "100ms", "max_backoff": "1s", "rpc_timeout": "10s"},
            "health": {"address": ""},
            "metrics": {"address": "127.0.0.1:0"},
            "log": {"level": "info", "format": "json"},
        }
        if "addresses" in self.extra_config.get("server", {}):  # several servers: no address
            base["server"] = {"attestation_port": self.attestation_port}
        if "node_attestor" in self.extra_config:  # exactly one attestor: replace, not merge
            base["node_attestor"] = self.extra_config["node_attestor"]
        return merge(base, {k: v for k, v in self.extra_config.items() if k != "node_attestor"})

    def start(
        self,
        join_token: str | None = None,
        wait: bool = True,
        timeout: float = 60,
        run_args: Sequence[str] = (),
    ) -> None:
        """Start the daemon (with a join token when given; `run_args` after `run`) and wait
        until /ready."""
        if join_token is not None:
            (self.workdir / "join-token").write_text(join_token + "\n")
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONPATH", f"{REPO}:{REPO / 'proto'}")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [str(AGENT_BIN), "run", "--config", str(self.config_path), *run_args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        if wait:
            self.wait_ready(timeout)

    def ready_status(self) -> tuple[int, str] | None:
        """(HTTP status, body) of /ready on the admin socket, or None if it does not answer."""
        conn = http.client.HTTPConnection("localhost", timeout=2)
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2)
            sock.connect(str(self.admin_socket_path))
            conn.sock = sock
            conn.request("GET", "/ready")
            response = conn.getresponse()
            return response.status, response.read().decode()
        except OSError:
            return None
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AgentFailed(
                    f"agent exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            status = self.ready_status()
            return status is not None and status[0] == 200

        try:
            wait_for(ready, timeout, "the agent to become ready")
        except TimeoutError as exc:
            raise AgentFailed(f"{exc}\n{self.log_tail()}") from None

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it was not running)."""
        proc, self.process = self.process, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode

    def wait_exit(self, timeout: float) -> int:
        """For an agent expected to exit by itself: its exit code."""
        assert self.process is not None
        code = self.process.wait(timeout)
        self.stop()
        return code

    @property
    def agent_id(self) -> str:
        """The agent's SPIFFE ID, from the state it persisted after attestation."""
        return str(self.persisted_identity()["spiffe_id"])

    def persisted_identity(self) -> dict[str, Any]:
        """The sealed identity file's content: spiffe_id, reattestable, svid_pem."""
        data = (self.data_dir / IDENTITY_FILE).read_bytes()
        return unseal(data, "agent_identity", 1, self.trust_domain)

    def persisted_bundle(self) -> str:
        """The sealed bundle file's SPIFFE bundle JSON."""
        data = (self.data_dir / BUNDLE_FILE).read_bytes()
        return str(unseal(data, "bundle", 1, self.trust_domain)["spiffe_bundle"])

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample from /metrics on the admin socket (None when absent)."""
        conn = http.client.HTTPConnection("localhost", timeout=5)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.admin_socket_path))
        conn.sock = sock
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        return sample(text, name, labels)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.public_dir, ignore_errors=True)
