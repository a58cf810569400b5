"""Workload-side tools for agent integration tests: other uids, fd hand-off, pid reuse.

Everything here drives real processes and real sockets; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from devtools.harness.other_uids import python_as, read_fd_line
from devtools.harness.waiting import wait_for

# Connects to the agent socket (so the kernel records THIS process as the peer), hands the
# connected fd to the test over an inherited socketpair, then lives until stdin closes; or,
# given an executable, execs it (argument "300") at the first line on stdin, keeping its
# connection across the exec when the fourth argument is "keep".
_HANDOFF = """
import os, socket, sys
channel = socket.socket(fileno=int(sys.argv[2]))
agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
agent.connect(sys.argv[1])
socket.send_fds(channel, [b"fd"], [agent.fileno()])
if len(sys.argv) > 3:
    os.set_inheritable(agent.fileno(), sys.argv[4] == "keep")
    sys.stdin.readline()
    os.execv(sys.argv[3], [sys.argv[3], "300"])
sys.stdin.read()
"""


def connect_from_child(
    socket_path: Path,
    uid: int | None = None,
    then_exec: str | None = None,
    keep_on_exec: bool = False,
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """A child process connects to `socket_path`; we get the connected socket, it stays alive.

    With `then_exec`, the child execs that binary when `exec_in_child` tells it to (and must
    then be killed rather than `end`ed); `keep_on_exec` clears CLOEXEC on its connection first.
    """
    python, env = python_as(uid)
    ours, theirs = socket.socketpair()
    extra = [] if then_exec is None else [then_exec, "keep" if keep_on_exec else "close"]
    with ours, theirs:
        proc = subprocess.Popen(
            [*python, "-c", _HANDOFF, str(socket_path), str(theirs.fileno()), *extra],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.PIPE,
            env=env,
        )
        theirs.close()
        ours.settimeout(30)
        _, fds, _, _ = socket.recv_fds(ours, 16, 1)
    return proc, socket.socket(fileno=fds[0])


def exec_in_child(proc: subprocess.Popen[bytes], executable: str) -> None:
    """Make a `connect_from_child(..., then_exec=executable)` child exec; wait until it has."""
    assert proc.stdin is not None
    proc.stdin.write(b"exec\n")
    proc.stdin.flush()
    wait_for(
        lambda: os.path.realpath(f"/proc/{proc.pid}/exe") == executable, 10, f"exec of {executable}"
    )


def end(proc: subprocess.Popen[bytes]) -> None:
    """Let a `connect_from_child` (or `spawn_with_pid`) process exit and reap it."""
    if proc.stdin is not None:
        proc.stdin.close()
    proc.wait(timeout=30)


def spawn_with_pid(pid: int, tries: int = 200) -> subprocess.Popen[bytes] | None:
    """A new idle process that gets exactly `pid` (root: via ns_last_pid), or None.

    Other processes on the machine may take the pid first; each try re-aims the counter.
    """
    for _ in range(tries):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        if proc.pid == pid:
            return proc
        end(proc)
    return None


class Relay:
    """Serves one connection on `path` and pumps its bytes to and from `upstream`.

    Lets an ordinary gRPC client speak over a socket that another process connected.
    """

    def __init__(self, upstream: socket.socket, path: Path) -> None:
        self.upstream = upstream
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.path = path
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        threading.Thread(target=_pump, args=(client, self.upstream), daemon=True).start()
        _pump(self.upstream, client)

    def close(self) -> None:
        self.listener.close()
        self.upstream.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)


def read_fifo_line(path: Path, timeout: float) -> str:
    """One line from a FIFO, waiting at most `timeout` seconds for a writer and its data."""
    # O_RDWR keeps a writer (us) on the FIFO, so select() waits for data instead of
    # reporting EOF while the plugin has not opened it yet (Linux semantics).
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        return read_fd_line(fd, timeout, str(path))
    finally:
        os.close(fd)


def write_fifo_line(path: Path, line: str) -> None:
    with open(path, "w") as fifo:
        fifo.write(line + "\n")
