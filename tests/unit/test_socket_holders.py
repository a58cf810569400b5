"""Who holds a connection: unix_diag's peer inode and the holder rule, on real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from devtools.harness.waiting import wait_for
from insignia.daemon.peercred.credentials import PeerCredentials, read_peer_credentials
from insignia.daemon.peercred.holders import Holder, connection_problem, holder_problem
from insignia.daemon.peercred.unix_diag import PeerGone, peer_inode, probe


def test_peer_inode_of_a_socketpair_is_the_other_end() -> None:
    probe()
    a, b = socket.socketpair()
    with a, b:
        assert peer_inode(a) == os.fstat(b.fileno()).st_ino
        assert peer_inode(b) == os.fstat(a.fileno()).st_ino


def test_peer_inode_after_the_peer_closed_is_peer_gone() -> None:
    a, b = socket.socketpair()
    b.close()
    with a, pytest.raises(PeerGone):
        peer_inode(a)


# Connects, then (per argv[2]) keeps the socket, forks a child that keeps it and execs, or
# execs /usr/bin/sleep itself, and reports when done.
CLIENT = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
mode = sys.argv[2]
if mode == "keep":
    print("ready", flush=True); sys.stdin.read()
elif mode == "fork-same":
    if os.fork() == 0:
        sys.stdin.read(); os._exit(0)
    print("ready", flush=True); sys.stdin.read()
elif mode == "fork-exec":
    if os.fork() == 0:
        sys.stdin.read(); os._exit(0)
    print("ready", flush=True)
    os.execv("/usr/bin/sleep", ["sleep", "600"])
elif mode == "exec-keep":
    os.set_inheritable(s.fileno(), True)
    if os.fork() == 0:
        sys.stdin.read(); os._exit(0)
    print("ready", flush=True)
    os.execv("/usr/bin/sleep", ["sleep", "600"])
"""


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    with server:
        yield server, path


def _run(mode: str, listener: tuple[socket.socket, str]) -> tuple[str | None, PeerCredentials]:
    server, path = listener
    with subprocess.Popen(
        [sys.executable, "-c", CLIENT, path, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        try:
            assert child.stdout.readline() == "ready\n"
            conn, _ = server.accept()
            with conn:
                if mode in ("fork-exec", "exec-keep"):
                    _wait_for_exec(child.pid)
                creds = read_peer_credentials(conn)
                try:
                    return connection_problem(creds), creds
                finally:
                    creds.pidfd.close()
        finally:
            os.killpg(child.pid, 9)


def _wait_for_exec(pid: int) -> None:
    wait_for(
        lambda: os.readlink(f"/proc/{pid}/exe") == "/usr/bin/sleep", 10, "the client to exec sleep"
    )


def test_the_connecting_process_alone_is_served(listener: tuple[socket.socket, str]) -> None:
    problem, _ = _run("keep", listener)
    assert problem is None


def test_forked_copies_of_the_same_binary_are_served(listener: tuple[socket.socket, str]) -> None:
    problem, _ = _run("fork-same", listener)
    assert problem is None


def test_exec_after_connect_with_a_helper_keeping_the_socket_is_refused(
    listener: tuple[socket.socket, str],
) -> None:
    problem, creds = _run("fork-exec", listener)
    assert problem is not None and "no longer holds" in problem
    assert str(creds.pid) in problem


def test_exec_with_cloexec_cleared_and_a_different_holder_is_refused(
    listener: tuple[socket.socket, str],
) -> None:
    problem, _ = _run("exec-keep", listener)
    assert problem is not None and "different executable" in problem


def test_holder_rule_is_a_function_of_the_facts() -> None:
    me = os.getpid()
    creds = PeerCredentials(me, 1000, 1000, None, 1, (1, 2), 3)  # type: ignore[arg-type]
    assert holder_problem(creds, True, [Holder(me + 1, 1000, (1, 2))]) is None
    assert holder_problem(creds, True, [Holder(me + 1, 1000, (1, 9))]) is not None
    assert holder_problem(creds, True, [Holder(me + 1, 1001, (1, 2))]) is not None
    assert holder_problem(replace(creds, executable=None), True, []) is None
    assert holder_problem(creds, False, []) is not None
