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

from insignia.daemon.logs import get_logger

log = get_logger(__name__)


class UnsafeDirectory(Exception):
    """A directory we put keys or sockets in is not a directory, or others could change it."""

    def __init__(self, path: Path, reason: str, expected: str | None = None) -> None:
        expected = expected or (
            f"a directory owned by uid {os.geteuid()}, not writable by group or others"
        )
        super().__init__(f"{path}: {reason}; expected {expected}")
        self.path = path
        self.reason = reason


def fsync_dir(directory: Path) -> None:
    """Make renames and creations in `directory` durable across power loss."""
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
    fsync_dir(target.parent)


def atomic_symlink(link: str | os.PathLike[str], target: str) -> None:
    """Make `link` a symlink to `target` with one rename (a reader follows the old link or
    the new one, never none), unless it already is exactly that."""
    link = Path(link)
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            return
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(8)}.tmp")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (and parents) 0700 if missing; accept an existing one only if it is safe.

    A directory we create is 0700 and ours. An existing one is never chmod'ed: it may be a
    shared one such as /run (admin_socket = "/run/x.sock"), and silently narrowing it would
    break everything else that lives there. It is refused, untouched, if it is a symlink or
    not a directory, owned by another uid, or writable by group or others: a daemon must not
    put keys or sockets where another user could swap them. Its contents keep their own
    modes (keys 0600 through atomic_write).
    """
    directory = Path(path)
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        check_owned_directory(directory, frozenset({os.geteuid()}))
        return directory
    os.chmod(directory, 0o700)  # mkdir's mode passed through the umask; make it exact
    return directory


def ensure_data_dir(path: str | os.PathLike[str]) -> Path:
    """`ensure_private_dir`, then narrow an existing data_dir that others can read or list to
    0700, with a warning: it holds the datastore, keys and join tokens, and unlike a shared
    socket directory nothing else belongs in it."""
    directory = ensure_private_dir(path)
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    if mode & 0o077:
        os.chmod(directory, 0o700)
        log.warning(
            "data_dir narrowed to 0700",
            directory=str(directory),
            mode=f"{mode:04o}",
            reason="group or others could read the keys and the datastore in it",
        )
    return directory


def make_private_file(path: str | os.PathLike[str], mode: int = 0o600, create: bool = True) -> None:
    """Create `path` empty with exactly `mode` (if `create` and missing), or narrow an existing
    one to it, so whatever opens it next (SQLite, which gives its -wal and -shm files the
    database's own mode) never makes it readable by others. A symlink is refused."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, mode)
    except FileNotFoundError:
        if create:
            raise
        return
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)  # the umask narrowed it, or an older release made it wider
    finally:
        os.close(fd)


def check_owned_directory(directory: Path, owners: frozenset[int]) -> None:
    """Raise UnsafeDirectory unless `directory` is a real directory owned by one of `owners`
    and not writable by group or others (who could otherwise replace what we put there)."""
    expected = (
        f"a directory owned by uid {' or '.join(map(str, sorted(owners)))}, "
        "not writable by group or others"
    )
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(directory, "not a directory (symlink or file)", expected)
    if st.st_uid not in owners:
        raise UnsafeDirectory(directory, f"owned by uid {st.st_uid}", expected)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = f"{stat.S_IMODE(st.st_mode):04o}"
        raise UnsafeDirectory(directory, f"mode {mode} is writable by group or others", expected)
