"""Attack: exec before accept. How often does a helper get the SVID of a binary exec'd after
connect()? And what does the holder check cost beside the rest of attestation?

Each try forks a process that connects to the Workload API, hands the socket to this process
over SCM_RIGHTS and at once execs /usr/bin/sleep, which an entry selects by `unix:path`. We
then ask for an X509-SVID over the handed-over socket. In the flooded round a thread keeps
a hundred throw-away connections churning, so accept() runs late (the setting in which the
attack used to win every time).

    .venv/bin/python -m benchmarks.attack_exec_theft [tries]
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from benchmarks.agent_common import deployment, percentiles
from devtools.harness.agent_workloads import Relay
from devtools.harness.waiting import wait_for
from insignia.daemon.peercred.credentials import read_peer_credentials
from insignia.daemon.peercred.holders import connection_problem
from insignia.daemon.peercred.unix_diag import peer_inode
from insignia.workloadapi import WorkloadApiClient, WorkloadApiError

SLEEP = os.path.realpath(shutil.which("sleep") or "/usr/bin/sleep")

# Forks one attacker per line on stdin: the child connects, sends us the socket and execs.
FACTORY = """
import os, signal, socket, sys
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
channel = socket.socket(fileno=int(sys.argv[2]))
for _ in sys.stdin:
    pid = os.fork()
    if pid == 0:
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        socket.send_fds(channel, [b"fd"], [s.fileno()])
        os.execv(sys.argv[3], ["sleep", "30"])
    print(pid, flush=True)
"""


@contextmanager
def factory(socket_path: Path) -> Iterator[Callable[[], tuple[int, socket.socket]]]:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-c", FACTORY, str(socket_path), str(theirs.fileno()), SLEEP],
        pass_fds=[theirs.fileno()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    theirs.close()
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def attacker() -> tuple[int, socket.socket]:
        stdin.write("go\n")
        stdin.flush()
        pid = int(stdout.readline())
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
        return pid, socket.socket(fileno=fds[0])

    try:
        yield attacker
    finally:
        proc.kill()
        proc.wait()
        ours.close()


def flood(socket_path: Path, stop: threading.Event, width: int = 100) -> None:
    """Keep `width` throw-away connections open, replacing them as fast as possible."""
    while not stop.is_set():
        held = []
        for _ in range(width):
            s = socket.socket(socket.AF_UNIX)
            with suppress(OSError):
                s.connect(str(socket_path))
            held.append(s)
        for s in held:
            s.close()


def one_try(attacker: Callable[[], tuple[int, socket.socket]], workdir: Path, n: int) -> bool:
    """True if the helper got the exec'd binary's SVID."""
    pid, connection = attacker()
    relay = Relay(connection, workdir / f"relay-{n}.sock")
    try:
        with WorkloadApiClient(relay.path, timeout=10) as client:
            context = client.fetch_x509_context()
        return any(str(s.spiffe_id).endswith("/victim") for s in context.svids)
    except WorkloadApiError:
        return False
    finally:
        relay.close()
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        (workdir / f"relay-{n}.sock").unlink(missing_ok=True)


def attack(socket_path: Path, workdir: Path, tries: int, flooded: bool) -> int:
    stop = threading.Event()
    threads = [
        threading.Thread(target=flood, args=(socket_path, stop), daemon=True)
        for _ in range(1 if flooded else 0)
    ]
    for t in threads:
        t.start()
    try:
        with factory(socket_path) as attacker:
            return sum(one_try(attacker, workdir, n) for n in range(tries))
    finally:
        stop.set()
        for t in threads:
            t.join()


def attestation_cost(iterations: int = 500) -> None:
    """Per connection: today's accept-time reads beside the added inode lookup and holder scan."""
    listener = socket.socket(socket.AF_UNIX)
    path = tempfile.mktemp(prefix="insignia-cost-", suffix=".sock")
    listener.bind(path)
    listener.listen()
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    conn, _ = listener.accept()
    rows: dict[str, list[float]] = {"read_peer_credentials": [], "peer_inode": [], "holders": []}
    for _ in range(iterations):
        start = time.perf_counter()
        creds = read_peer_credentials(conn)
        middle = time.perf_counter()
        peer_inode(conn)
        inode_done = time.perf_counter()
        assert connection_problem(creds) is None
        end = time.perf_counter()
        creds.pidfd.close()
        rows["read_peer_credentials"].append((middle - start) * 1000)
        rows["peer_inode"].append((inode_done - middle) * 1000)
        rows["holders"].append((end - inode_done) * 1000)
    processes = sum(1 for name in os.listdir("/proc") if name.isdigit())
    uid = os.getuid()
    print(f"attestation cost per connection ({processes} processes here, uid {uid}):")
    for name, samples in rows.items():
        p50, p99 = percentiles(samples)
        print(f"  {name:24s} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms")
    print("  (read_peer_credentials includes peer_inode; holders is the added /proc fd scan)")
    for s in (conn, client, listener):
        s.close()
    os.unlink(path)


def main(tries: int) -> None:
    attestation_cost()
    with tempfile.TemporaryDirectory(prefix="insignia-theft-") as tmp:
        workdir = Path(tmp)
        config = {"workload_attestors": {"unix": {"discover_workload_path": True}}}
        with deployment(workdir, agent_config=config) as (server, agent, _):
            server.create_entry(
                "spiffe://example.org/victim", agent.agent_id, [f"unix:path:{SLEEP}"]
            )
            wait_for(
                lambda: (
                    (
                        agent.metric("insignia_agent_svid_rotations_total", {"reason": "missing"})
                        or 0
                    )
                    >= 2
                ),
                60,
                "the agent to hold the victim's SVID",
            )
            for flooded in (False, True):
                started = time.perf_counter()
                stolen = attack(agent.socket_path, workdir, tries, flooded)
                took = time.perf_counter() - started
                label = "with flood" if flooded else "no flood  "
                print(
                    f"theft {label}: {stolen} of {tries} tries got the victim's SVID ({took:.1f} s)"
                )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
