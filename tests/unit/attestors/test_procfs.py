"""Attestors read /proc through the caller's own pidfd check (PidFd.is_alive), so a caller
whose process is gone, or whose connection ended, gets no selectors."""

from __future__ import annotations

import os
import subprocess

import pytest

from devtools.callers import caller_of
from insignia.attestors.interface import AttestationError
from insignia.attestors.procfs import open_proc


def test_a_live_caller_is_read_through_its_pinned_directory() -> None:
    caller = caller_of(os.getpid())
    try:
        with open_proc("unix", caller) as proc:
            assert f"Pid:\t{os.getpid()}\n" in proc.read_text("status")
    finally:
        caller.pidfd.close()


def test_a_caller_whose_connection_ended_is_refused() -> None:
    caller = caller_of(os.getpid())
    caller.pidfd.close()  # what the front does when the connection ends
    refused = pytest.raises(AttestationError, match=f"process {os.getpid()} exited; its pid")
    with refused, open_proc("unix", caller):
        pass


def test_a_caller_that_exited_is_refused_while_its_pid_exists() -> None:
    child = subprocess.Popen(["sleep", "300"])
    caller = caller_of(child.pid)
    try:
        child.kill()
        child.wait()
        with pytest.raises(AttestationError, match="exited"), open_proc("unix", caller):
            pass
    finally:
        caller.pidfd.close()
