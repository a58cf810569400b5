"""Crash-safe, private file writes: every key and state file on disk goes through here.

A reader must see either the old file or the new one, never a torn mix, and a private key
must never exist on disk, even for a moment, with a mode wider than the one asked for.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path


class UnsafeDirectory(Exception):
    """A directory that should be private is owned by someone else or is not a directory."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}; expected a directory owned by uid {os.geteuid()}")
        self.path = path
        self.reason = reason


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` atomically with permissions `mode`, durable across a crash.

    The temporary file is created in the same directory (so `os.replace` is atomic) with the
    mode set at open time (so the key is never readable by others), fsynced, renamed over the
    target, and then the directory is fsynced so the rename itself survives power loss.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed `mode`; make it exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (and parents) if missing and make it 0700, owned by the current uid.

    Refuses a directory owned by another uid or a symlink: a daemon must not put keys or
    sockets somewhere another user controls.
    """
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(directory, "not a directory (symlink or file)")
    if st.st_uid != os.geteuid():
        raise UnsafeDirectory(directory, f"owned by uid {st.st_uid}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)
    return directory
