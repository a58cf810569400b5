"""The unix attestor against real processes: identities follow the kernel's view of the caller."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from devtools.harness.waiting import wait_for
from insignia.attestors.interface import AttestationError
from insignia.attestors.workload.unix import UnixAttestor, UnixConfig
from insignia.daemon.config.loading import validate_config
from insignia.daemon.peercred.credentials import PidFd
from insignia.selectors import Selector
from tests.unit.attestors.processes import running, sleeper

SLEEP = os.path.realpath(shutil.which("sleep") or "/usr/bin/sleep")
PYTHON = os.path.realpath(sys.executable)
NOBODY, NOGROUP, USERS = 65534, 65534, 100


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def unix(**config: object) -> UnixAttestor:
    return UnixAttestor(validate_config("test.toml", config, UnixConfig))


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def values(selectors: list[Selector]) -> set[str]:
    return {str(s) for s in selectors}


@pytest.mark.root
async def test_ids_and_names_of_a_process_running_as_another_user() -> None:
    with sleeper(NOBODY, NOGROUP, extra_groups=[USERS]) as (_, caller):
        selectors = await unix().attest(caller)
    assert values(selectors) == {
        "unix:uid:65534",
        "unix:user:nobody",
        "unix:gid:65534",
        "unix:group:nogroup",
        "unix:supplementary_gid:100",
        "unix:supplementary_group:users",
    }


async def test_path_and_hash_are_those_of_the_running_executable() -> None:
    # argv[0] and the process name are the workload's to choose; they must not matter.
    with running(["nginx", "300"], executable=SLEEP) as (_, caller):
        selectors = await unix(discover_workload_path=True).attest(caller)
    assert {f"unix:path:{SLEEP}", f"unix:sha256:{sha256_of(SLEEP)}"} <= values(selectors)
    assert not any("nginx" in s.value for s in selectors)


@pytest.mark.root
async def test_a_caller_whose_uid_changed_after_connecting_gets_no_identity() -> None:
    script = textwrap.dedent(
        """
        import os, sys
        sys.stdin.readline()
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        print("dropped", flush=True)
        sys.stdin.readline()
        """
    )
    with running([sys.executable, "-c", script]) as (proc, caller):
        assert "unix:uid:0" in values(await unix().attest(caller))
        assert proc.stdin and proc.stdout
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "dropped\n"
        with pytest.raises(AttestationError, match="credentials changed since it connected"):
            await unix().attest(caller)  # connected as root, now nobody: neither identity
        now_nobody = replace(caller, uid=NOBODY, gid=NOGROUP)
        assert "unix:uid:65534" in values(await unix().attest(now_nobody))


async def test_attestor_reads_the_executable_running_at_attestation_time() -> None:
    # The attestor describes whatever the pid runs now. That a process which execs another
    # binary never gets the other identity is the Workload API's job (the caller's executable
    # is pinned at accept: tests/integration/test_agent_caller_exec.py).
    script = "import os, sys; sys.stdin.readline(); os.execv(sys.argv[1], ['sleep', '300'])"
    with running([sys.executable, "-c", script, SLEEP]) as (proc, caller):
        attestor = unix(discover_workload_path=True)
        before = values(await attestor.attest(caller))
        assert f"unix:path:{PYTHON}" in before
        assert proc.stdin
        proc.stdin.write("go\n")
        proc.stdin.flush()
        wait_for(lambda: os.readlink(f"/proc/{caller.pid}/exe") == SLEEP, 5, "the exec of sleep")
        after = values(await attestor.attest(caller))
    assert {f"unix:path:{SLEEP}", f"unix:sha256:{sha256_of(SLEEP)}"} <= after
    assert not before & {s for s in after if s.startswith(("unix:path", "unix:sha256"))}


async def test_a_process_that_exited_is_not_confused_with_its_pid_successor() -> None:
    with sleeper() as (dead, dead_caller):
        pidfd = PidFd(os.dup(dead_caller.pidfd.fd))
    try:
        with sleeper() as (_, successor):
            # The successor holds the pid now; the pidfd still names the dead process.
            recycled = replace(successor, pidfd=pidfd)
            with pytest.raises(AttestationError, match="exited; its pid may belong to another"):
                await unix().attest(recycled)
    finally:
        pidfd.close()
    gone = dead_caller  # its pidfd closed with its connection
    if not pid_exists(dead.pid):  # unless already reused by someone else
        with pytest.raises(AttestationError, match=f"process {dead.pid} exited"):
            await unix().attest(gone)


async def test_deleted_or_replaced_executable_has_no_path_selector(tmp_path: Path) -> None:
    worker = tmp_path / "worker"
    shutil.copy(SLEEP, worker)
    digest = sha256_of(str(worker))
    attestor = unix(discover_workload_path=True)
    with running(["worker", "300"], executable=str(worker)) as (_, caller):
        assert f"unix:path:{worker}" in values(await attestor.attest(caller))
        worker.unlink()
        selectors = values(await attestor.attest(caller))
    assert not any(s.startswith("unix:path:") for s in selectors)
    assert f"unix:sha256:{digest}" in selectors  # still the code that is running

    shutil.copy(SLEEP, worker)
    with running(["worker", "300"], executable=str(worker)) as (_, caller):
        replacement = tmp_path / "new"
        replacement.write_bytes(b"#!/bin/sh\nexit 0\n")
        os.replace(replacement, worker)  # an upgrade renamed a new file over it
        selectors = values(await attestor.attest(caller))
    assert not any(s.startswith("unix:path:") for s in selectors)


async def test_an_executable_over_the_size_limit_is_an_error() -> None:
    with sleeper() as (_, caller):
        with pytest.raises(AttestationError, match="over workload_size_limit 1000"):
            await unix(discover_workload_path=True, workload_size_limit=1000).attest(caller)
        # Without path discovery the size does not matter.
        assert await unix(workload_size_limit=1000).attest(caller)


async def test_a_busy_workload_is_hashed_once() -> None:
    attestor = unix(discover_workload_path=True)
    with sleeper() as (_, first), sleeper() as (_, second):
        a = await attestor.attest(first)
        b = await attestor.attest(second)
    assert len(attestor.hash_cache) == 1
    assert [s for s in a if s.value.startswith("sha256")] == [
        s for s in b if s.value.startswith("sha256")
    ]


@pytest.mark.root
def test_unreadable_proc_entries_are_a_clear_error() -> None:
    """An agent without CAP_SYS_PTRACE cannot read another user's exe link: error, no identity."""
    script = textwrap.dedent(
        f"""
        import sys, trio
        from devtools.callers import caller_of
        from insignia.attestors.interface import AttestationError
        from insignia.attestors.workload.unix import UnixAttestor, UnixConfig
        attestor = UnixAttestor(UnixConfig(discover_workload_path=True))
        try:
            print(trio.run(attestor.attest, caller_of(int(sys.argv[1]), {NOBODY}, {NOGROUP})))
        except AttestationError as exc:
            print(exc)
        """
    )
    root = Path(__file__).resolve().parents[2]
    with sleeper(NOBODY, NOGROUP) as (_, caller):
        out = subprocess.run(
            [
                "setpriv",
                "--inh-caps=-all",
                "--bounding-set=-all",
                sys.executable,
                "-c",
                script,
                str(caller.pid),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        ).stdout
    assert out.strip() == f"unix attestor: permission denied reading exe of pid {caller.pid}"


def test_default_size_limit_is_256_mib() -> None:
    assert UnixConfig().workload_size_limit == 256 << 20


async def test_abandoned_hashes_do_not_starve_other_thread_work(tmp_path: Path) -> None:
    # A runnable executable whose hash takes a while: sleep plus a sparse tail.
    big = tmp_path / "big"
    shutil.copy(SLEEP, big)
    os.truncate(big, 1 << 30)
    attestor = unix(discover_workload_path=True, workload_size_limit=0)
    default = trio.to_thread.current_default_thread_limiter()
    with running(["big", "300"], executable=str(big)) as (_, caller):
        async with trio.open_nursery() as nursery:
            for _ in range(int(default.total_tokens) + 5):  # more than the whole default pool
                nursery.start_soon(attestor.attest, caller)
            with trio.fail_after(30):
                while not attestor.hash_limiter.statistics().tasks_waiting:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # polling with a deadline
            nursery.cancel_scope.cancel()  # the callers' deadlines: hashing threads abandoned
        assert default.borrowed_tokens < default.total_tokens
        with trio.fail_after(10):
            assert await trio.to_thread.run_sync(os.getpid) == os.getpid()
