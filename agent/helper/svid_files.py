"""SVIDs as files for software that cannot speak the Workload API (what spiffe-helper does).

The helper watches the Workload API as an ordinary workload and keeps three files current in
one directory: `svid.pem` (leaf, then intermediates), `svid_key.pem` (PKCS#8, mode 0600) and
`bundle.pem` (the trust domain's X.509 authorities, optionally the federated ones after them).
After every change it runs a reload command, such as `nginx -s reload`.

How the three files switch together. A SIGKILL between two renames must never leave a key
that does not match its certificate, so the files are never renamed one by one:

1. Each change writes all three files into a fresh version directory,
   `DIR/.insignia-svid/<random>/`, each fsynced (`insignia.daemon.files.atomic_write`).
2. One rename switches the symlink `DIR/.insignia-svid/current` to that version. Before it
   every reader sees the old set, after it the new one: there is no moment in between.
3. The configured paths stay valid: `DIR/svid.pem` is a symlink to
   `.insignia-svid/current/svid.pem`, and likewise for the key and the bundle. They are
   made once and then never change (software opening `DIR/svid.pem` needs no new config).
4. Old versions are removed after the switch; leftovers of a killed helper (a version never
   switched to, `.tmp` files) are removed at start.
5. The reload command runs after the switch.

Files from a release that wrote regular files are replaced by the symlinks on the first
write, one rename each: only during that one-off migration can a kill leave the old
certificate beside the new key, until the next start rewrites them.

Decisions (which files to write, whether anything changed) are pure functions below; the
file and socket I/O is at the end.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from insignia.agent.helper.reload_command import ReloadCommand, run_reload
from insignia.backoff import Backoff
from insignia.daemon.files import atomic_symlink, atomic_write, fsync_dir
from insignia.daemon.logs import get_logger
from insignia.keys import private_key_to_pem
from insignia.workloadapi import WorkloadApiClient, WorkloadApiError, X509Context
from insignia.x509svid import X509Svid

SVID_FILE: Final = "svid.pem"
KEY_FILE: Final = "svid_key.pem"
BUNDLE_FILE: Final = "bundle.pem"
VERSIONS_DIR: Final = ".insignia-svid"  # under the write directory: versions and `current`
CURRENT: Final = "current"
PUBLIC_MODE: Final = 0o644
KEY_MODE: Final = 0o600
RECONNECT_BACKOFF: Final = Backoff(initial=0.2, maximum=10.0, jitter=0.5)  # seconds

log = get_logger(__name__)


class NoMatchingSvid(LookupError):
    """The Workload API sent no SVID with the requested hint."""

    def __init__(self, hint: str, available: tuple[str, ...]) -> None:
        super().__init__(
            f"no X509-SVID with hint {hint!r}; the Workload API sent hints {list(available)}"
        )
        self.hint = hint
        self.available = available


# ------------------------------------------------------------------------------ decisions


@dataclass(frozen=True, slots=True)
class SvidFile:
    """One file as it should be on disk."""

    name: str
    data: bytes
    mode: int


@dataclass(frozen=True, slots=True)
class FileState:
    """One file as it is on disk."""

    data: bytes
    mode: int


@dataclass(frozen=True, slots=True)
class Layout:
    """What to write: which SVID (by hint; the default SVID when empty) and which bundles."""

    hint: str = ""
    include_federated: bool = False


def select_svid(context: X509Context, hint: str = "") -> X509Svid:
    """The default SVID (the first), or the one whose hint is `hint`."""
    if not hint:
        return context.default_svid
    for svid in context.svids:
        if svid.hint == hint:
            return svid
    raise NoMatchingSvid(hint, tuple(s.hint for s in context.svids))


def render_files(context: X509Context, layout: Layout = Layout()) -> tuple[SvidFile, ...]:
    """The three files for `context`, in the order they must be written (see module doc)."""
    svid = select_svid(context, layout.hint)
    own_td = svid.spiffe_id.trust_domain
    own = context.bundles.get_bundle_for_trust_domain(own_td)
    bundle_pem = own.x509_pem() if own is not None else b""
    if layout.include_federated:
        others = sorted(
            (b for b in context.bundles if b.trust_domain != own_td),
            key=lambda b: b.trust_domain.name,
        )
        bundle_pem += b"".join(b.x509_pem() for b in others)
    return (
        SvidFile(BUNDLE_FILE, bundle_pem, PUBLIC_MODE),
        SvidFile(KEY_FILE, private_key_to_pem(svid.private_key), KEY_MODE),
        SvidFile(SVID_FILE, svid.chain_pem(), PUBLIC_MODE),
    )


def files_to_write(
    desired: tuple[SvidFile, ...], on_disk: Mapping[str, FileState | None]
) -> tuple[SvidFile, ...]:
    """The files whose content or mode differs from disk, keeping the write order.

    A restarted helper that finds the files already current writes nothing and so does not
    reload the consumer for nothing.
    """
    return tuple(f for f in desired if on_disk.get(f.name) != FileState(f.data, f.mode))


# ------------------------------------------------------------------------------ file I/O


def read_state(directory: Path, names: tuple[str, ...]) -> dict[str, FileState | None]:
    """Each named file's bytes and permission bits (None when missing or unreadable)."""
    out: dict[str, FileState | None] = {}
    for name in names:
        try:
            with open(directory / name, "rb") as fh:
                mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
                out[name] = FileState(fh.read(), mode)
        except OSError:
            out[name] = None
    return out


def write_files(directory: Path, files: tuple[SvidFile, ...]) -> None:
    """Write `files` as a new version and switch to it with one rename (see module doc);
    blocking: call from a thread."""
    versions = directory / VERSIONS_DIR
    versions.mkdir(mode=0o755, parents=True, exist_ok=True)
    version = versions / secrets.token_hex(8)
    version.mkdir(mode=0o755)
    for f in files:
        atomic_write(version / f.name, f.data, f.mode)
    atomic_symlink(versions / CURRENT, version.name)
    fsync_dir(versions)
    for f in files:
        atomic_symlink(directory / f.name, f"{VERSIONS_DIR}/{CURRENT}/{f.name}")
    fsync_dir(directory)
    remove_leftovers(directory)


def _layout_is_current(directory: Path, names: tuple[str, ...]) -> bool:
    """Every configured path is our symlink into the current version."""
    try:
        return all(
            os.readlink(directory / name) == f"{VERSIONS_DIR}/{CURRENT}/{name}" for name in names
        )
    except OSError:
        return False


def remove_leftovers(directory: Path) -> None:
    """Remove versions other than the current one and `.tmp` files a killed helper left
    (some of them private-key copies)."""
    versions = directory / VERSIONS_DIR
    try:
        current = os.readlink(versions / CURRENT)
    except OSError:
        current = None
    for parent in (directory, versions):
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(parent):
                if entry.name.endswith(".tmp") and entry.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(versions):
            if (
                entry.name != CURRENT
                and entry.name != current
                and entry.is_dir(follow_symlinks=False)
            ):
                shutil.rmtree(entry.path, ignore_errors=True)


def sync_files(directory: Path, context: X509Context, layout: Layout) -> tuple[str, ...]:
    """Bring `directory` up to date with `context`; the names of the files that changed.
    Any change writes a whole new version, so the three files always switch together."""
    desired = render_files(context, layout)
    names = tuple(f.name for f in desired)
    changed = files_to_write(desired, read_state(directory, names))
    if changed or not _layout_is_current(directory, names):
        write_files(directory, desired)
    return tuple(f.name for f in changed)


# ------------------------------------------------------------------------------ the helper


@dataclass(frozen=True, slots=True)
class HelperSettings:
    write_dir: Path
    socket_path: Path
    reload_command: ReloadCommand | None = None
    layout: Layout = Layout()
    backoff: Backoff = RECONNECT_BACKOFF


class SvidFilesHelper:
    """Follows the Workload API and keeps the files in `settings.write_dir` current."""

    def __init__(self, settings: HelperSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._rng = rng or random.Random()
        self.updates = 0  # contexts that changed at least one file
        self._failures = 0  # consecutive; reset by every context received

    async def apply(self, context: X509Context) -> tuple[str, ...]:
        """Write what changed, then run the reload command if anything did."""
        s = self.settings
        written = await trio.to_thread.run_sync(sync_files, s.write_dir, context, s.layout)
        svid = select_svid(context, s.layout.hint)
        if not written:
            log.debug("svid_files.unchanged", spiffe_id=str(svid.spiffe_id))
            return written
        self.updates += 1
        log.info(
            "svid_files.written",
            directory=str(s.write_dir),
            files=list(written),
            spiffe_id=str(svid.spiffe_id),
            serial=format(svid.leaf.serial_number, "x"),
            expires_at=svid.expires_at.isoformat(),
        )
        if s.reload_command is not None:
            await self._reload(s.reload_command)
        return written

    async def _reload(self, command: ReloadCommand) -> None:
        result = await run_reload(command)
        fields = {
            "argv": list(result.argv),
            "returncode": result.returncode,
            "stdout": result.stdout,
            "stderr": result.stderr,
        }
        if result.ok:
            log.info("svid_files.reload_ok", **fields)
        else:
            log.warning("svid_files.reload_failed", error=result.error, **fields)

    async def follow_stream(self, once: bool = False) -> None:
        """One connection: apply every context until the stream fails (WorkloadApiError).

        grpcio's streaming iterator blocks, so each `next` runs in a worker thread; on
        cancellation that thread is abandoned and closing the channel ends its call.
        """
        client = WorkloadApiClient(self.settings.socket_path)
        try:
            stream = client.watch_x509_context()
            while True:
                context = await trio.to_thread.run_sync(next, stream, None, abandon_on_cancel=True)
                if context is None:
                    raise WorkloadApiError(None, "the X.509-SVID stream was cancelled")
                self._failures = 0
                await self.apply(context)
                if once:
                    return
        finally:
            client.close()

    async def run(self, once: bool = False) -> None:
        """Follow the Workload API, reconnecting with backoff (agent restarts, no identity
        yet, a full disk); with `once`, return after the first successful write."""
        await trio.to_thread.run_sync(remove_leftovers, self.settings.write_dir)
        while True:
            try:
                await self.follow_stream(once)
                return
            except (WorkloadApiError, NoMatchingSvid, OSError) as exc:
                delay = self.settings.backoff.delay(self._failures, self._rng.random())
                self._failures += 1
                log.warning(
                    "svid_files.retrying",
                    error=str(exc),
                    failures=self._failures,
                    delay=round(delay, 3),
                )
                await trio.sleep(delay)
