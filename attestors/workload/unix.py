"""Workload attestor `unix`: the caller's effective user and groups, optionally its executable.

Ids come from `/proc/<pid>/status` (effective uid/gid and the supplementary list, as SPIRE
reports them). They must equal the effective ids SO_PEERCRED recorded at connect time: a
process that changed credentials since (a setuid exec inheriting the socket, a privilege drop)
is refused rather than given either identity.

With `discover_workload_path`, `unix:sha256` is the hash of what `/proc/<pid>/exe` opens (the
running executable itself, even if unlinked), sized and hashed through one fd so the hash is of
the file that was stat'ed. `unix:path` is emitted only while that path, seen from the process's
own root, still names the same inode: a deleted or replaced executable gets no path selector.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import threading
from collections import OrderedDict
from typing import Annotated, Final

import trio
from msgspec import Meta

from insignia.attestors.interface import (
    AttestationError,
    PluginConfig,
    WorkloadAttestorPlugin,
)
from insignia.attestors.procfs import ProcDir, open_proc
from insignia.daemon.logs import get_logger
from insignia.daemon.peercred.credentials import PeerCredentials, ProcessIds, parse_status
from insignia.selectors import Selector

NAME: Final = "unix"
_log = get_logger(__name__)


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def id_selectors(ids: ProcessIds) -> list[Selector]:
    selectors = [Selector(NAME, f"uid:{ids.uid}"), Selector(NAME, f"gid:{ids.gid}")]
    if (user := _user_name(ids.uid)) is not None:
        selectors.append(Selector(NAME, f"user:{user}"))
    if (group := _group_name(ids.gid)) is not None:
        selectors.append(Selector(NAME, f"group:{group}"))
    for gid in ids.groups:
        selectors.append(Selector(NAME, f"supplementary_gid:{gid}"))
        if (name := _group_name(gid)) is not None:
            selectors.append(Selector(NAME, f"supplementary_group:{name}"))
    return selectors


# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns). ctime is beyond what the brief needs:
# an owner can reset mtime after rewriting a file (touch -d), but not ctime.
FileKey = tuple[int, int, int, int, int]


def file_key(st: os.stat_result) -> FileKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HashCache:
    """Bounded LRU of executable hashes, so a busy workload is not re-hashed on every call.

    Thread-safe: attestations hash in worker threads.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[FileKey, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: FileKey) -> str | None:
        with self._lock:
            digest = self._entries.get(key)
            if digest is not None:
                self._entries.move_to_end(key)
            return digest

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: FileKey, digest: str) -> None:
        with self._lock:
            self._entries[key] = digest
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)


class UnixConfig(PluginConfig, frozen=True, kw_only=True):
    discover_workload_path: bool = False
    #: Largest executable hashed, in bytes; 0 means no limit (SPIRE's convention). 256 MiB
    #: covers ordinary binaries; a bigger one costs seconds of CPU per (uncached) hash.
    workload_size_limit: Annotated[int, Meta(ge=0)] = 256 << 20
    hash_cache_size: Annotated[int, Meta(ge=1)] = 4096
    #: Attestations with `discover_workload_path` running (hashing) at once.
    hash_concurrency: Annotated[int, Meta(ge=1)] = 2


class UnixAttestor:
    """Attestations that may hash run on their own small thread limiter, `hash_limiter`.

    A hash of a big binary can outlive the caller's deadline; the thread is then abandoned
    but keeps its limiter slot until the hash ends. In trio's default pool those slots would
    starve everything else that needs a thread (reading the next caller's credentials, file
    writes); here they only delay other path-discovering attestations.
    """

    def __init__(self, config: UnixConfig) -> None:
        self._config = config
        self.hash_cache = HashCache(config.hash_cache_size)
        self.hash_limiter = trio.CapacityLimiter(config.hash_concurrency)

    async def attest(self, caller: PeerCredentials) -> list[Selector]:
        limiter = self.hash_limiter if self._config.discover_workload_path else None
        return await trio.to_thread.run_sync(
            self.attest_sync, caller, abandon_on_cancel=True, limiter=limiter
        )

    def attest_sync(self, caller: PeerCredentials) -> list[Selector]:
        """The blocking part: every read goes through the caller's pinned /proc directory."""
        with open_proc(NAME, caller) as proc:
            try:
                ids = parse_status(proc.read_text("status"))
            except ValueError as exc:
                raise AttestationError(NAME, f"pid {caller.pid}: {exc}") from exc
            if (ids.uid, ids.gid) != (caller.uid, caller.gid):
                raise AttestationError(
                    NAME,
                    f"pid {caller.pid} credentials changed since it connected: "
                    f"uid/gid {caller.uid}/{caller.gid} then, {ids.uid}/{ids.gid} now",
                )
            selectors = id_selectors(ids)
            if self._config.discover_workload_path:
                selectors.extend(self._executable_selectors(proc))
        return selectors

    def _executable_selectors(self, proc: ProcDir) -> list[Selector]:
        pid = proc.caller.pid
        link = proc.readlink("exe")
        fd = proc.open("exe")
        try:
            before = os.fstat(fd)
            limit = self._config.workload_size_limit
            if limit and before.st_size > limit:
                raise AttestationError(
                    NAME,
                    f"executable {link!r} of pid {pid} is {before.st_size} bytes, over "
                    f"workload_size_limit {limit}",
                )
            key = file_key(before)
            digest = self.hash_cache.get(key)
            if digest is None:
                digest = _hash_fd(fd)
                if file_key(os.fstat(fd)) != key:
                    raise AttestationError(NAME, f"executable {link!r} changed while hashing")
                self.hash_cache.put(key, digest)
        finally:
            os.close(fd)
        selectors = [Selector(NAME, f"sha256:{digest}")]
        if _same_file(proc, link, before):
            selectors.append(Selector(NAME, f"path:{link}"))
        else:
            reason = "deleted" if link.endswith(" (deleted)") else "replaced since exec"
            _log.info("workload executable has no path selector", pid=pid, path=link, reason=reason)
        return selectors


def _same_file(proc: ProcDir, path: str, opened: os.stat_result) -> bool:
    try:
        current = proc.stat_in_root(path)
    except OSError:
        return False
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)


def _hash_fd(fd: int) -> str:
    with open(os.dup(fd), "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


PLUGIN: Final = WorkloadAttestorPlugin(
    config_model=UnixConfig,
    selector_types=frozenset({NAME}),
    create=UnixAttestor,
    selector_keys={
        NAME: frozenset(
            {
                "uid",
                "gid",
                "user",
                "group",
                "supplementary_gid",
                "supplementary_group",
                "path",
                "sha256",
            }
        )
    },
)
