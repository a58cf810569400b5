"""`insignia-server oidc serve`: the OIDC discovery listener as a process of its own, as
SPIRE's oidc-discovery-provider, for a host that must not hold the CA keys.

It reads the published local bundle from the server's datastore (SQLite or PostgreSQL) and
follows the change log as a server does: a NOTIFY (PostgreSQL) or the `cluster.poll_interval`
poll wakes it, and only a change of this trust domain's bundle is read again. It needs the
server's config keys `trust_domain`, `jwt_issuer`, `[database]`, `[cluster]`, `[health]`,
`[metrics]`, `[log]` and `[oidc_discovery]`; everything else is ignored. While the database is
unreachable it keeps serving the last keys it read and is not ready.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url

from insignia.daemon.config.loading import StartupRefused, refused_for_key
from insignia.daemon.http.health import serve_health
from insignia.daemon.logs import get_logger
from insignia.daemon.systemd_notify import sd_notify
from insignia.server.config import ServerConfig
from insignia.server.daemon import check_trust_domain, health_binds, open_datastore
from insignia.server.datastore.errors import DatastoreUnavailable, RevisionPruned
from insignia.server.datastore.listen import RECONNECT, ChangeListener
from insignia.server.datastore.store import Datastore
from insignia.server.oidc.listener import OidcMetrics, serve_oidc_discovery
from insignia.spiffeid import TrustDomain

log = get_logger("insignia.server.oidc")


class PublishedBundle:
    """The local bundle document as stored, and the change-log revision it is current at.
    Blocking (SQL): call from a worker thread."""

    def __init__(self, store: Datastore, trust_domain: TrustDomain) -> None:
        self.store = store
        self.trust_domain = trust_domain
        self.document = b""
        self.revision = 0
        self.ready_reason: str | None = "starting"

    def reload(self) -> None:
        """Read the bundle afresh (at start, or when the log was pruned past our revision).
        The head first: a change committed between the two reads is seen again later."""
        self.revision = self.store.head_revision()
        self._read()

    def catch_up(self) -> None:
        """Apply the change log after `revision`: read the bundle again if it changed."""
        try:
            events = self.store.events_since(self.revision)
        except RevisionPruned:
            self.reload()
            return
        if any(e.kind == "bundle" and e.subject == str(self.trust_domain) for e in events):
            self._read()
        if events:
            self.revision = events[-1].revision
        self.ready_reason = self._readiness()

    def _read(self) -> None:
        local = [b for b in self.store.list_bundles() if b.trust_domain == self.trust_domain]
        document = local[0].document.encode() if local else b""
        if document != self.document:
            log.info("oidc_discovery.bundle_read", sequence=local[0].sequence if local else 0)
        self.document = document
        self.ready_reason = self._readiness()

    def _readiness(self) -> str | None:
        return None if self.document else "no bundle published yet (has the server started?)"


def _open(config: ServerConfig) -> Datastore:
    """The server's datastore: an SQLite file must exist already (a reader creates none)."""
    parsed = make_url(config.database_url)
    sqlite_file = parsed.database if parsed.drivername.startswith("sqlite") else None
    if sqlite_file and not Path(sqlite_file).is_file():
        raise StartupRefused(
            "database.url",
            f"no SQLite database at {sqlite_file}; oidc serve reads the server's "
            "datastore: point database.url (or data_dir) at it",
        )
    store = open_datastore(config.database_url)
    try:
        check_trust_domain(store, config)
    except BaseException:
        store.close()
        raise
    return store


async def _follow_forever(published: PublishedBundle, config: ServerConfig) -> None:
    """Catch up on every wake-up (a NOTIFY on PostgreSQL) and at least every poll interval;
    while the database is unreachable, keep the last keys and back off."""
    store = published.store
    poll = config.cluster.poll_interval.total_seconds()
    listener = None
    if store.backend == "postgresql":
        listener = ChangeListener(store.url, store.notify_channel, "insignia-server oidc serve")
    failures = 0
    try:
        while True:
            if listener is None:
                await trio.sleep(poll)
            else:
                await trio.to_thread.run_sync(listener.wait, poll, abandon_on_cancel=True)
            try:
                await trio.to_thread.run_sync(published.catch_up)
            except DatastoreUnavailable as exc:
                if failures == 0:
                    log.warning("datastore unavailable; serving the last keys", error=str(exc))
                published.ready_reason = f"datastore unavailable: {exc}"
                await trio.sleep(RECONNECT.delay(failures, random.random()))
                failures += 1
                continue
            if failures:
                log.info("datastore reachable again", after_failures=failures)
                failures = 0
    finally:
        if listener is not None:
            listener.close()


async def run_provider(config: ServerConfig) -> None:
    """Serve `[oidc_discovery]` from the datastore's keys until SIGTERM or SIGINT."""
    settings = config.oidc_discovery
    if not settings.address:
        raise StartupRefused(
            "oidc_discovery.address", 'is "": oidc serve needs an address to listen on'
        )
    store = await trio.to_thread.run_sync(_open, config)
    try:
        published = PublishedBundle(store, config.td)
        await trio.to_thread.run_sync(published.reload)
        registry = CollectorRegistry()
        metrics = OidcMetrics(registry, "insignia")
        async with trio.open_nursery() as nursery:
            addresses: dict[str, str] = {}
            with refused_for_key("oidc_discovery.address"):
                addresses["oidc_discovery"] = await nursery.start(
                    serve_oidc_discovery,
                    settings,
                    config.jwt_issuer,
                    config.td,
                    lambda: published.document,
                    metrics,
                )
            for name, bind in health_binds(config).items():
                with refused_for_key(f"{name}.address"):
                    addresses[name] = await nursery.start(
                        serve_health, bind, registry, lambda: published.ready_reason
                    )
            nursery.start_soon(_follow_forever, published, config)
            log.info("oidc provider ready", trust_domain=str(config.td), **addresses)
            sd_notify("READY=1")
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("shutting down", signal=signal.Signals(signum).name)
                    sd_notify("STOPPING=1")
                    nursery.cancel_scope.cancel()
                    break
    finally:
        await trio.to_thread.run_sync(store.close)
