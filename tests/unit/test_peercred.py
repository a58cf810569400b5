"""Peer credentials: /proc parsing, SO_PEERCRED + pidfd, pid-reuse checks, the caller table."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from devtools.harness.waiting import wait_for
from insignia.daemon.peercred.credentials import (
    CallerTable,
    PeerCredentials,
    PidFd,
    ProcessGone,
    UnknownPeer,
    parse_start_time,
    parse_status,
    process_credentials,
    process_executable,
    process_start_time,
    read_peer_credentials,
)


def _stat_line(comm: str, start_time: int) -> str:
    # Fields 3..52 after "pid (comm)": field 22 is the 20th of them.
    rest = [str(n) for n in range(3, 53)]
    rest[0] = "S"
    rest[22 - 3] = str(start_time)
    return f"4242 ({comm}) " + " ".join(rest) + "\n"


@pytest.mark.parametrize("comm", ["python3", "a b c", "x) S 1 2 3 (y", ")", "((", "sp ace)) 99 (z"])
def test_parse_start_time_survives_hostile_comm(comm: str) -> None:
    assert parse_start_time(_stat_line(comm, 987654321)) == 987654321


@pytest.mark.parametrize("line", ["", "4242 python3 S 1 2", "4242 (short) S 1 2 3"])
def test_parse_start_time_rejects_non_stat_lines(line: str) -> None:
    with pytest.raises(ValueError, match="not a /proc/<pid>/stat line"):
        parse_start_time(line)


def test_parse_status_uses_the_effective_column() -> None:
    status = "Name:\tx\nUid:\t1000\t65534\t1000\t65534\nGid:\t100\t200\t100\t200\n"
    ids = parse_status(status)
    assert (ids.uid, ids.gid, ids.groups) == (65534, 200, ())
    with pytest.raises(ValueError, match="no valid Uid/Gid"):
        parse_status("Name:\tx\n")


def test_own_start_time_matches_proc() -> None:
    with open(f"/proc/{os.getpid()}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    assert process_start_time(os.getpid()) == int(fields[19])


def test_process_start_time_of_missing_pid_is_process_gone() -> None:
    with pytest.raises(ProcessGone) as info:
        process_start_time(2**22 + 1)  # above pid_max's ceiling: never a live pid
    assert info.value.pid == 2**22 + 1


def _listen(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    return server, path


CONNECT_AND_WAIT = (
    "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
    "print('connected', flush=True); sys.stdin.read()"
)


def test_credentials_of_a_child_and_pid_reuse_check(tmp_path: Path) -> None:
    server, path = _listen(tmp_path)
    with (
        server,
        subprocess.Popen(
            [sys.executable, "-c", CONNECT_AND_WAIT, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as child,
    ):
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "connected\n"
        conn, _ = server.accept()
        creds = read_peer_credentials(conn)
        assert (creds.pid, creds.uid, creds.gid) == (child.pid, os.geteuid(), os.getegid())
        assert creds.start_time == process_start_time(child.pid)
        exe = os.stat(f"/proc/{child.pid}/exe")
        assert creds.executable == (exe.st_dev, exe.st_ino)
        child_fds = {
            os.readlink(f"/proc/{child.pid}/fd/{n}") for n in os.listdir(f"/proc/{child.pid}/fd")
        }
        assert f"socket:[{creds.socket_inode}]" in child_fds
        assert creds.pidfd.is_alive()
        assert creds.still_same_process()

        # A different start time, uid or executable means "not the process that connected".
        assert not replace(creds, start_time=creds.start_time + 1).still_same_process()
        assert not replace(creds, uid=creds.uid + 1).still_same_process()
        assert not replace(creds, executable=(exe.st_dev, 1)).still_same_process()

        child.stdin.close()
        assert child.wait(timeout=10) == 0
        assert not creds.pidfd.is_alive()
        assert not creds.still_same_process()
        creds.pidfd.close()
        conn.close()


# Connects, then execs another binary (same pid, start time and uid) when told to.
CONNECT_THEN_EXEC = (
    "import os, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
    "print('connected', flush=True); sys.stdin.readline(); "
    "os.execv(sys.argv[2], [sys.argv[2], '300'])"
)


def test_a_caller_that_execs_another_binary_is_not_the_same_process(tmp_path: Path) -> None:
    sleep = os.path.realpath("/bin/sleep")
    server, path = _listen(tmp_path)
    with (
        server,
        subprocess.Popen(
            [sys.executable, "-c", CONNECT_THEN_EXEC, path, sleep],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as child,
    ):
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "connected\n"
        conn, _ = server.accept()
        creds = read_peer_credentials(conn)
        try:
            assert creds.still_same_process()
            child.stdin.write("exec\n")
            child.stdin.flush()
            wait_for(
                lambda: os.path.realpath(f"/proc/{child.pid}/exe") == sleep, 10, "exec of sleep"
            )
            assert process_start_time(child.pid) == creds.start_time  # exec keeps these
            assert not creds.still_same_process()
        finally:
            child.kill()
            creds.pidfd.close()
            conn.close()


def test_closed_pidfd_is_never_signalled() -> None:
    pidfd = PidFd(os.pidfd_open(os.getpid()))
    creds = PeerCredentials(
        os.getpid(),
        os.geteuid(),
        os.getegid(),
        pidfd,
        process_start_time(os.getpid()),
        process_executable(os.getpid()),
        0,
    )
    assert creds.still_same_process()
    pidfd.close()
    pidfd.close()  # idempotent
    assert pidfd.closed
    assert not pidfd.is_alive()
    assert not creds.still_same_process()
    with pytest.raises(ValueError, match="already closed"):
        _ = pidfd.fd


def test_peer_that_exited_before_accept_is_process_gone(tmp_path: Path) -> None:
    server, path = _listen(tmp_path)
    try:
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import socket; socket.socket(socket.AF_UNIX).connect({path!r})",
            ],
            check=True,
            timeout=30,
        )
        conn, _ = server.accept()  # the peer is gone and reaped
        with pytest.raises(ProcessGone):
            read_peer_credentials(conn)
        conn.close()
    finally:
        server.close()


def test_caller_table_maps_abstract_peer_names() -> None:
    table = CallerTable()
    pidfd = PidFd(os.pidfd_open(os.getpid()))
    creds = PeerCredentials(os.getpid(), 1, 2, pidfd, 3, None, 0)
    peer = table.register("insignia-" + "ab" * 16, creds)
    assert peer == "unix-abstract:insignia-" + "ab" * 16
    assert table.lookup(peer) is creds
    assert peer in table
    assert len(table) == 1
    with pytest.raises(ValueError, match="already registered"):
        table.register("insignia-" + "ab" * 16, creds)
    for unknown in ("unix:", "unix-abstract:insignia-" + "cd" * 16, "ipv4:127.0.0.1:1"):
        with pytest.raises(UnknownPeer) as info:
            table.lookup(unknown)
        assert info.value.peer == unknown
    table.remove(peer)
    table.remove(peer)  # idempotent
    assert len(table) == 0
    with pytest.raises(UnknownPeer):
        table.lookup(peer)
    pidfd.close()


def test_a_process_named_by_pid_is_pinned_and_a_missing_one_is_gone() -> None:
    me = process_credentials(os.getpid())
    try:
        assert (me.uid, me.gid) == (os.geteuid(), os.getegid())
        assert me.still_same_process()
    finally:
        me.pidfd.close()
    child = subprocess.Popen(["true"])
    child.wait()
    with pytest.raises(ProcessGone, match="no such process"):
        process_credentials(child.pid)
    with pytest.raises(ProcessGone, match="positive integer"):
        process_credentials(0)
    done = threading.Event()
    thread = threading.Thread(target=done.wait)
    thread.start()
    try:
        assert thread.native_id is not None
        with pytest.raises(ProcessGone, match="not a process"):
            process_credentials(thread.native_id)
    finally:
        done.set()
        thread.join()
