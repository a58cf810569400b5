"""One instance per data_dir and per socket path: a second daemon refuses to start and leaves
the first one's files alone.

A second agent or server started by mistake (the same config, a copied config, a second
quickstart) used to unlink the live instance's sockets and take over its state. Now the data
directory is locked with flock for the life of the process, and a socket path is unlinked only
after a probe connection shows nobody is listening there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

from insignia._closing import Closing
from insignia.daemon.config.loading import StartupRefused
from insignia.daemon.peercred.credentials import peer_ids

LOCK_FILE = "insignia.lock"
_PROBE_TIMEOUT = 1.0


class InstanceConflict(StartupRefused):
    """Another live process holds what this one needs: its data_dir or a socket path."""

    def __init__(self, problem: str, key: str = "", holder: str = "unknown") -> None:
        super().__init__(key, problem)
        self.holder = holder  # the other process's pid, as far as we can tell


class DataDirLock(Closing):
    """An flock on ``<data_dir>/insignia.lock`` (or another lock file, see `lock_path`); the
    kernel drops it when the process dies."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Lock ``data_dir`` for this process, or raise InstanceConflict naming the holder's pid."""
    return lock_path(
        data_dir / LOCK_FILE,
        "data_dir",
        lambda holder: (
            f"{data_dir} is in use by another instance (pid {holder}); stop it or "
            "give this one another data_dir"
        ),
    )


def lock_path(path: Path, key: str, problem: Callable[[str], str]) -> DataDirLock:
    """An flock on the file ``path`` for this process, or InstanceConflict(problem(holder pid)).

    The lock file holds the pid of the process that has the lock, for that message only: the
    flock, not the file's content, is what excludes a second instance.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise InstanceConflict(problem(holder), key=key, holder=holder) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(fd)


def listener_pid(path: Path) -> int | None:
    """The pid of the process listening on the Unix socket ``path``, None if nobody is.

    Only a refused connection (or no file) means nobody listens. A probe that cannot tell
    (a full backlog, no permission to connect) raises InstanceConflict: unlinking a socket we
    cannot see into could cut off a live daemon's clients.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except OSError as exc:
            cause = exc.strerror or "no answer within 1s"
            raise InstanceConflict(
                f"{path} may be in use by another process (probe failed: {cause}); "
                "refusing to replace it"
            ) from None
        pid, _uid, _gid = peer_ids(probe)
        return pid


def claim_socket_path(path: Path) -> None:
    """Make ``path`` free to bind: remove a stale socket, refuse one a live process answers on.

    Anything that is not a socket is left for the caller to judge (it may refuse it).
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    pid = listener_pid(path)
    if pid is not None:
        raise InstanceConflict(
            f"{path} is in use by another running process (pid {pid}); stop it or configure "
            "another socket path",
            holder=str(pid),
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
