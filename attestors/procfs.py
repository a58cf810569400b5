"""Reading a caller's /proc entries so that every fact belongs to the process that connected.

`open_proc` opens `/proc/<pid>` as a directory fd and only then checks the caller's pidfd. If
the pidfd's process is still alive at that moment, the pid was never recycled in between, so
the directory fd is that process's; every later read goes through the fd (openat), and reads
after the process exits fail with ESRCH instead of silently describing a newcomer.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from insignia.attestors.interface import AttestationError
from insignia.daemon.peercred.credentials import PeerCredentials

PROC_ROOT = "/proc"
#: /proc files we read are tiny; a longer one means something is wrong, not a bigger workload.
MAX_PROC_FILE = 1 << 20


def _failure(plugin: str, caller: PeerCredentials, what: str, exc: OSError) -> AttestationError:
    if exc.errno in (errno.ESRCH, errno.ENOENT):
        return AttestationError(plugin, f"process {caller.pid} exited during attestation ({what})")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AttestationError(plugin, f"permission denied reading {what} of pid {caller.pid}")
    return AttestationError(plugin, f"cannot read {what} of pid {caller.pid}: {exc.strerror}")


@dataclass(frozen=True, slots=True)
class ProcDir:
    """An open `/proc/<pid>` directory, checked to belong to the caller."""

    fd: int
    caller: PeerCredentials
    plugin: str

    def read(self, name: str) -> bytes:
        """Contents of `/proc/<pid>/<name>`, or AttestationError saying why not."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as exc:
            raise _failure(self.plugin, self.caller, name, exc) from exc
        try:
            chunks: list[bytes] = []
            size = 0
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_PROC_FILE:
                    raise AttestationError(self.plugin, f"{name} of pid {self.caller.pid} too long")
            return b"".join(chunks)
        except OSError as exc:
            raise _failure(self.plugin, self.caller, name, exc) from exc
        finally:
            os.close(fd)

    def read_text(self, name: str) -> str:
        return self.read(name).decode("utf-8", errors="surrogateescape")

    def readlink(self, name: str) -> str:
        try:
            return os.readlink(name, dir_fd=self.fd)
        except OSError as exc:
            raise _failure(self.plugin, self.caller, name, exc) from exc

    def open(self, name: str) -> int:
        """An O_RDONLY fd for `/proc/<pid>/<name>` (for `exe`: the running executable itself)."""
        try:
            return os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as exc:
            raise _failure(self.plugin, self.caller, name, exc) from exc

    def stat_in_root(self, path: str) -> os.stat_result:
        """lstat of `path` as the process sees it (through its `root` link: its mount ns)."""
        return os.stat("root" + path, dir_fd=self.fd, follow_symlinks=False)


@contextmanager
def open_proc(plugin: str, caller: PeerCredentials) -> Iterator[ProcDir]:
    """`/proc/<pid>` of the caller, pinned to it by the pidfd check (see module docstring)."""
    try:
        fd = os.open(f"{PROC_ROOT}/{caller.pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _failure(plugin, caller, f"{PROC_ROOT}/{caller.pid}", exc) from exc
    try:
        if not caller.pidfd.is_alive():
            raise AttestationError(
                plugin, f"process {caller.pid} exited; its pid may belong to another process now"
            )
        yield ProcDir(fd, caller, plugin)
    finally:
        os.close(fd)
