"""SVIDs as files for software that cannot speak the Workload API (what spiffe-helper does).

The helper watches the Workload API as an ordinary workload and keeps three files current in
one directory: `svid.pem` (leaf, then intermediates), `svid_key.pem` (PKCS#8, mode 0600) and
`bundle.pem` (the trust domain's X.509 authorities, optionally the federated ones after them).
After every change it runs a reload command, such as `nginx -s reload`.

Write order, and why. Each file is replaced atomically (`insignia.files.atomic_write`), so a
reader sees a whole old file or a whole new one, but three renames are not one:

1. `bundle.pem` first. During a CA rotation the bundle gains the new authority while keeping
   the old one, so trusting it early breaks nothing, and peers already holding SVIDs from
   the new authority are accepted as soon as possible.
2. `svid_key.pem` before `svid.pem`. On a first write no certificate exists without its key,
   and software that watches the certificate file (inotify, mtime polling) is woken by the
   last rename, when the pair is complete.
3. The reload command runs only after all three renames. Between the key and the certificate
   renames the pair on disk does not match; nginx reads the files only at start and on
   reload, and a reload that does hit a mismatched pair (someone else's `nginx -s reload`
   at that instant) fails in the new configuration only: the master keeps serving with the
   old one, and our own reload a moment later loads the matching pair.

Decisions (which files to write, whether anything changed) are pure functions below; the
file and socket I/O is at the end.
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from agent.reload_command import ReloadCommand, run_reload
from insignia.backoff import Backoff
from insignia.files import atomic_write
from insignia.keys import private_key_to_pem
from insignia.logs import get_logger
from insignia.workloadapi.client import WorkloadApiClient, WorkloadApiError, X509Context
from insignia.x509svid import X509Svid

SVID_FILE: Final = "svid.pem"
KEY_FILE: Final = "svid_key.pem"
BUNDLE_FILE: Final = "bundle.pem"
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
    """Atomically replace each file, in the given order (blocking: call from a thread)."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    for f in files:
        atomic_write(directory / f.name, f.data, f.mode)


def sync_files(directory: Path, context: X509Context, layout: Layout) -> tuple[str, ...]:
    """Bring `directory` up to date with `context`; the names of the files replaced."""
    desired = render_files(context, layout)
    changed = files_to_write(desired, read_state(directory, tuple(f.name for f in desired)))
    write_files(directory, changed)
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
