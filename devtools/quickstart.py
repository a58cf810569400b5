"""`make quickstart`: a server and an agent on embedded defaults, and an identity for you.

It drives the two daemons exactly as an operator would — config files, `insignia-server run`,
a join token, `entry create` — so what a newcomer sees is the real system, not a demo mode.
Everything lives under `./.insignia/` (or `$INSIGNIA_QUICKSTART_DIR`); Ctrl-C stops both.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from insignia.daemon.instance import InstanceConflict, lock_data_dir

TRUST_DOMAIN = "example.org"
START_TIMEOUT = 60.0


class QuickstartError(RuntimeError):
    """A step failed; the message says which and where its log is."""


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def render_toml(tables: dict[str, dict[str, object]], top: dict[str, object]) -> str:
    """Just enough TOML for flat tables: the stdlib reads TOML but cannot write it."""
    lines = [f"{key} = {_toml(value)}" for key, value in top.items()]
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in table.items())
    return "\n".join(lines) + "\n"


@dataclass
class Layout:
    """Where each daemon keeps its config, state, sockets and log."""

    root: Path

    @property
    def server_config(self) -> Path:
        return self.root / "server.toml"

    @property
    def agent_config(self) -> Path:
        return self.root / "agent.toml"

    @property
    def server_data(self) -> Path:
        return self.root / "server"

    @property
    def agent_data(self) -> Path:
        return self.root / "agent"

    @property
    def admin_socket(self) -> Path:
        return self.root / "run" / "server" / "admin.sock"

    @property
    def workload_socket(self) -> Path:
        return self.root / "run" / "agent" / "public" / "api.sock"

    @property
    def agent_admin_socket(self) -> Path:
        return self.root / "run" / "agent" / "private" / "admin.sock"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle.pem"

    @property
    def token_file(self) -> Path:
        return self.root / "join-token"

    def log(self, daemon: str) -> Path:
        return self.root / f"{daemon}.log"


def server_config(layout: Layout) -> str:
    return render_toml(
        {
            "agent_api": {"bind_address": "127.0.0.1", "port": 0, "attestation_port": 0},
            "ca": {"key_type": "ec-p256", "ttl": "24h"},
            "health": {"address": "127.0.0.1:0"},
            "metrics": {"address": "127.0.0.1:0"},
            "log": {"level": "info", "format": "console"},
        },
        {
            "trust_domain": TRUST_DOMAIN,
            "data_dir": layout.server_data,
            "admin_socket": layout.admin_socket,
        },
    )


def agent_config(layout: Layout, agent_api: str, attestation: str) -> str:
    host, port = agent_api.rsplit(":", 1)
    _, attestation_port = attestation.rsplit(":", 1)
    return render_toml(
        {
            "server": {
                "address": host,
                "port": int(port),
                "attestation_port": int(attestation_port),
            },
            "node_attestor.join_token": {"token_file": layout.token_file},
            "workload_attestors.unix": {},
            "health": {"address": ""},
            "metrics": {"address": ""},
            "log": {"level": "info", "format": "console"},
        },
        {
            "trust_domain": TRUST_DOMAIN,
            "data_dir": layout.agent_data,
            "socket_path": layout.workload_socket,
            "admin_socket_path": layout.agent_admin_socket,
            "trust_bundle_path": layout.bundle,
        },
    )


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise QuickstartError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Daemons:
    """The two child processes, stopped in reverse order of start."""

    bin_dir: Path
    layout: Layout
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log: IO[bytes] = open(self.layout.log(name), "ab")  # noqa: SIM115 - the child owns it
        try:
            child = subprocess.Popen(
                [str(self.bin_dir / f"insignia-{name}"), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
            )
        finally:
            log.close()
        self.children.append((name, child))
        return child

    def check_alive(self) -> None:
        for name, child in self.children:
            if child.poll() is not None:
                raise QuickstartError(
                    f"insignia-{name} exited with {child.returncode}; see {self.layout.log(name)}"
                )

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [
                str(self.bin_dir / "insignia-server"),
                *args,
                "--socket",
                str(self.layout.admin_socket),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise QuickstartError(f"insignia-server {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> int:
        worst = 0
        for name, child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            try:
                code = child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
            if code not in (0, -signal.SIGTERM):
                print(f"insignia-{name} exited with {code}; see {self.layout.log(name)}")
                worst = 1
        self.children.clear()
        return worst


def missing_pieces(bin_dir: Path) -> list[str]:
    return [
        f"insignia-{name} (not installed in {bin_dir})"
        for name in ("server", "agent")
        if not (bin_dir / f"insignia-{name}").exists()
    ]


def bring_up(daemons: Daemons, uid: int, user: str) -> str:
    """Start both daemons and register an entry for `uid`; returns its SPIFFE ID."""
    layout = daemons.layout
    for directory in (layout.root, layout.server_data, layout.agent_data):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    layout.server_config.write_text(server_config(layout))
    addresses_file = layout.server_data / "server.addresses.json"
    addresses_file.unlink(missing_ok=True)
    daemons.start("server", ["run", "--config", str(layout.server_config)])

    def server_ready() -> bool:
        daemons.check_alive()
        return addresses_file.exists()

    wait_for(server_ready, "the server to start")
    addresses = json.loads(addresses_file.read_text())
    layout.bundle.write_text(daemons.cli("bundle", "show", "--format", "pem"))

    token = daemons.cli("token", "generate").strip()
    layout.token_file.write_text(token + "\n")
    layout.token_file.chmod(0o600)
    layout.agent_config.write_text(
        agent_config(layout, addresses["agent_api"], addresses["attestation"])
    )
    daemons.start("agent", ["run", "--config", str(layout.agent_config)])
    agent_id = f"spiffe://{TRUST_DOMAIN}/insignia/agent/join_token/{token}"

    def agent_serving() -> bool:
        daemons.check_alive()
        return layout.workload_socket.exists() and agent_id in daemons.cli("agent", "list")

    wait_for(agent_serving, "the agent to attest and open the Workload API socket")
    spiffe_id = f"spiffe://{TRUST_DOMAIN}/quickstart/{user}"
    daemons.cli(
        "entry", "create", "--spiffe-id", spiffe_id, "--parent-id", agent_id,
        "--selector", f"unix:uid:{uid}",
    )  # fmt: skip
    return spiffe_id


def main() -> int:
    bin_dir = Path(sys.executable).parent
    missing = missing_pieces(bin_dir)
    if missing:
        print("quickstart cannot run yet; missing: " + ", ".join(missing), file=sys.stderr)
        return 1
    root = Path(os.environ.get("INSIGNIA_QUICKSTART_DIR", ".insignia")).resolve()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        lock = lock_data_dir(root)  # held until we exit: a second quickstart must not start
    except InstanceConflict as exc:
        print(
            f"quickstart is already running in {root} (pid {exc.holder}); use that one, or "
            "stop it (Ctrl-C) before starting another",
            file=sys.stderr,
        )
        return 1
    with lock:
        return _run(bin_dir, root)


def _run(bin_dir: Path, root: Path) -> int:
    layout = Layout(root)
    # A previous run's sockets and server state are replaced; the agent re-attests.
    for stale in (layout.root / "run", layout.agent_data, layout.server_data):
        shutil.rmtree(stale, ignore_errors=True)
    daemons = Daemons(bin_dir, layout)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        uid = os.getuid()
        spiffe_id = bring_up(daemons, uid, getpass.getuser())
        agent = bin_dir / "insignia-agent"
        print(
            f"""
Insignia is running: trust domain {TRUST_DOMAIN}, state and logs in {layout.root}
Registered {spiffe_id} for uid {uid}.

In another terminal:
  export SPIFFE_ENDPOINT_SOCKET=unix://{layout.workload_socket}
  {agent} api fetch x509
  {agent} api fetch jwt --audience demo
  {agent} api watch
  {bin_dir / "insignia-server"} entry show --socket {layout.admin_socket}

Press Ctrl-C to stop the server and the agent.""",
            flush=True,
        )
        while not stopping:
            daemons.check_alive()
            time.sleep(0.2)  # a poll of our own children, not synchronisation
    except QuickstartError as exc:
        print(f"quickstart failed: {exc}", file=sys.stderr)
        daemons.stop()
        return 1
    code = daemons.stop()
    print("stopped the server and the agent")
    return code


if __name__ == "__main__":
    sys.exit(main())
