"""Running Workload API clients as separate processes (py-spiffe, the agent CLI), any uid."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devtools.harness.agent_process import AGENT_BIN, AgentProcess
from devtools.harness.other_uids import (
    REPO,
    as_user,
    python_as,
    read_line,
    run_workload,
    workload_argv,
)
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for

PYSPIFFE_CLIENT = Path(__file__).with_name("agent_pyspiffe_client.py")
SPIFFETLS_PEER = REPO / "tests" / "unit" / "spiffetls_peer.py"  # py-spiffe + spiffe-tls

# Workload uids no system account uses; root tests run workloads under them.
UID_A = 41001
UID_B = 41002


def pyspiffe(
    agent: AgentProcess,
    *args: str,
    uid: int | None = None,
    timeout: float = 60,
    own_netns: bool = False,
) -> Any:
    """Run agent_pyspiffe_client.py against `agent`; its JSON answer (errors included).

    `own_netns` runs it in a fresh network namespace, as a pod reaching a host-path socket."""
    python, env = python_as(uid)
    netns = ["unshare", "--net", "--"] if own_netns else []
    result = subprocess.run(
        [*netns, *python, str(PYSPIFFE_CLIENT), str(agent.socket_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise AssertionError(f"py-spiffe client printed nothing; stderr:\n{result.stderr}")
    return json.loads(lines[-1])


def agent_cli(
    *args: str, uid: int | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*as_user(uid), str(AGENT_BIN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def register(
    server: ServerProcess,
    agent: AgentProcess,
    path: str,
    *selectors: str,
    extra: tuple[str, ...] = (),
) -> str:
    """Create an entry under `agent` and wait until the agent has it in its cache."""
    before = agent.metric("insignia_agent_cached_entries") or 0
    entry_id = server.create_entry(
        f"spiffe://{server.trust_domain}{path}", agent.agent_id, selectors, *extra
    )
    wait_for(
        lambda: (agent.metric("insignia_agent_cached_entries") or 0) > before,
        30,
        f"entry {entry_id} to reach the agent",
    )
    return entry_id


@contextlib.contextmanager
def spiffetls_server(
    uid: int, agent: AgentProcess, allowed_id: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A spiffe-tls echo server as `uid` on `agent`'s socket that admits only `allowed_id`:
    the process and its port. It serves one connection and exits 0 after it."""
    source = f"workload-api:{agent.endpoint}"
    argv, env = workload_argv(uid, SPIFFETLS_PEER, "server", source, allowed_id)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        try:
            port = int(read_line(proc.stdout, 60, "the spiffe-tls server").split()[1])
        except (TimeoutError, EOFError) as exc:
            proc.kill()
            raise AssertionError(f"{exc}: {proc.stderr.read().decode()}") from None
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()


def spiffetls_client(
    uid: int, agent: AgentProcess, allowed_id: str, address: str
) -> subprocess.CompletedProcess[str]:
    """A spiffe-tls client as `uid` on `agent`'s socket: sends "ping", prints the reply."""
    source = f"workload-api:{agent.endpoint}"
    return run_workload(uid, SPIFFETLS_PEER, "client", source, allowed_id, address)
