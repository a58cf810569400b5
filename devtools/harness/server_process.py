"""A real `insignia-server run` process for integration tests and benchmarks.

`ServerProcess` writes a config (every listener on port 0), starts the daemon, waits until its
addresses file appears and /ready answers 200, and stops it with SIGTERM (or SIGKILL). It has
no pytest dependency so benchmarks can use it; `running_server` and `server_factory`
(tests/integration/conftest.py) wrap it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from insignia_proto import admin_pb2_grpc

from devtools.harness.agent_process import merge, to_toml
from devtools.harness.metrics_text import sample
from devtools.harness.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
SERVER_BIN = Path(sys.executable).with_name("insignia-server")


class ServerFailed(RuntimeError):
    """The server exited or never became ready; carries its log tail."""


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", f"{REPO}:{REPO / 'proto'}")
    return env


@dataclass
class ServerProcess:
    workdir: Path
    trust_domain: str = "example.org"
    database_url: str = ""
    extra_config: Mapping[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    addresses: dict[str, str] = field(default_factory=dict)
    # Unix socket paths are limited to 107 bytes and xdist's tmp paths are long: keep the
    # admin socket in a short private directory of its own (removed by `cleanup()`).
    socket_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ins-srv-")))

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()

    # --- paths ------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.workdir / "server.toml"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def admin_socket(self) -> Path:
        return Path(self.config()["admin_socket"])

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def bundle_path(self) -> Path:
        """The X.509 bundle as PEM, rewritten by `start()` and `write_bundle()`."""
        return self.workdir / "bundle.pem"

    # --- listeners (valid once started) ----------------------------------------------------

    @property
    def host(self) -> str:
        return self.addresses["agent_api"].rsplit(":", 1)[0]

    @property
    def agent_api_port(self) -> int:
        return int(self.addresses["agent_api"].rsplit(":", 1)[1])

    @property
    def attestation_port(self) -> int:
        return int(self.addresses["attestation"].rsplit(":", 1)[1])

    @property
    def health_address(self) -> str:
        return self.addresses["health"]

    # --- config and lifecycle ------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "trust_domain": self.trust_domain,
            "data_dir": self.data_dir,
            "admin_socket": self.socket_dir / "admin.sock",
            "agent_api": {"port": 0, "attestation_port": 0, "attestation_rate": 1000},
            "health": {"address": "127.0.0.1:0"},
            "metrics": {"address": "127.0.0.1:0"},
            "log": {"level": "debug", "format": "json"},
        }
        if self.database_url:
            base["database"] = {"url": self.database_url}
        return merge(base, self.extra_config)

    def write_config(self) -> None:
        self.config_path.write_text(to_toml(self.config()))

    def start(self, wait: bool = True, timeout: float = 60, run_args: Sequence[str] = ()) -> None:
        """Start the daemon (`run_args` after `run --config ...`); wait until /ready if `wait`."""
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "server.addresses.json").unlink()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it; closed below
        try:
            self.process = subprocess.Popen(
                [str(SERVER_BIN), "run", "--config", str(self.config_path), *run_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_env(),
                cwd=self.workdir,
            )
        finally:
            log.close()
        if wait:
            self.wait_ready(timeout)

    def ready_status(self) -> int | None:
        """The HTTP status of /ready, None if the health listener does not answer."""
        host, port = self.health_address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
        try:
            conn.request("GET", "/ready")
            return conn.getresponse().status
        except OSError:
            return None
        finally:
            conn.close()

    @property
    def instance_id(self) -> str:
        """This server's id in the servers registry (data_dir/server.id)."""
        return (self.data_dir / "server.id").read_text().strip()

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise ServerFailed(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            self.addresses = json.loads((self.data_dir / "server.addresses.json").read_text())
        except (OSError, ValueError):
            return False
        return self.ready_status() == 200

    def wait_ready(self, timeout: float = 60) -> None:
        try:
            wait_for(self._ready, timeout, "the server to become ready")
        except TimeoutError as exc:
            raise ServerFailed(f"{exc}\n{self.log_tail()}") from None
        self.write_bundle()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Send `sig` (SIGKILL for a crash) and wait; the exit code, None if not running."""
        proc, self.process = self.process, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ServerFailed(f"server ignored signal {sig}:\n{self.log_tail()}") from None

    def cleanup(self) -> None:
        """Stop the server and remove its socket directory."""
        self.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def restart(self, timeout: float = 60) -> None:
        self.stop()
        self.start(timeout=timeout)

    def restart_with(self, extra_config: Mapping[str, Any], timeout: float = 60) -> None:
        """Restart on another `extra_config`; the data_dir, and so the CA, stays."""
        self.stop()
        self.extra_config = extra_config
        self.write_config()
        self.start(timeout=timeout)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log records written so far."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample from the server's /metrics (None when absent)."""
        address = self.addresses.get("metrics") or self.addresses["health"]
        url = f"http://{address}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return sample(answer.read().decode(), name, labels)

    # --- the admin API in-process (benchmarks: no CLI start-up per call) -----------------------

    @contextlib.contextmanager
    def admin(self) -> Iterator[admin_pb2_grpc.AdminAPIStub]:
        with grpc.insecure_channel(f"unix:{self.admin_socket}") as channel:
            yield admin_pb2_grpc.AdminAPIStub(channel)

    # --- the CLI ---------------------------------------------------------------------------------

    def cli(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `insignia-server ARGS --socket <admin socket>`; raise on failure if `check`."""
        result = subprocess.run(
            [str(SERVER_BIN), *args, "--socket", str(self.admin_socket)],
            capture_output=True,
            text=True,
            env=server_env(),
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise ServerFailed(
                f"insignia-server {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def join_token(self, ttl: int | None = None, spiffe_id: str | None = None) -> str:
        args = ["token", "generate"]
        if ttl is not None:
            args += ["--ttl", str(ttl)]
        if spiffe_id is not None:
            args += ["--spiffe-id", spiffe_id]
        return self.cli(*args).stdout.strip()

    def create_entry(
        self, spiffe_id: str, parent_id: str, selectors: Sequence[str], *extra: str
    ) -> str:
        """Create one entry with the CLI; returns its id. `extra`: more CLI options."""
        args = ["entry", "create", "--spiffe-id", spiffe_id, "--parent-id", parent_id]
        for selector in selectors:
            args += ["--selector", selector]
        return self.cli(*args, *extra).stdout.strip()

    def bundle_pem(self) -> bytes:
        return self.cli("bundle", "show", "--format", "pem").stdout.encode()

    def write_bundle(self) -> Path:
        self.bundle_path.write_bytes(self.bundle_pem())
        return self.bundle_path

    def agent_id(self, token: str) -> str:
        return f"spiffe://{self.trust_domain}/insignia/agent/join_token/{token}"
