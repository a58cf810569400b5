"""Keep each federated trust domain's bundle current: fetch it from the peer's endpoint,
store it when it changed (the change log then carries it to agents), and wait the peer's
refresh hint, or back off after a failure while the last good bundle stays in force.

`Refreshers` runs one loop per relationship in force and restarts or stops a loop when its
relationship changes or goes (the admin API on any server, seen through the change log).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from insignia.backoff import Backoff, Retries
from insignia.bundle import Bundle
from insignia.daemon.logs import get_logger
from insignia.server.core import ServerCore
from insignia.server.datastore.errors import BundleNotFound, DatastoreUnavailable
from insignia.server.federation.acceptance import BundleRefused, accept_bundle, refresh_interval
from insignia.server.federation.fetch import FetchFailed, fetch_bundle
from insignia.server.federation.relationship import Relationship
from insignia.server.federation.status import RefreshStatus
from insignia.spiffeid import TrustDomain

log = get_logger(__name__)
RETRY = Backoff(initial=1.0, maximum=300.0)
RefreshError = (FetchFailed, BundleRefused, DatastoreUnavailable)


@dataclass(frozen=True)
class Refreshed:
    bundle: Bundle
    changed: bool  # a new bundle was stored


def held_bundle(core: ServerCore, trust_domain: TrustDomain) -> Bundle | None:
    """The stored bundle of `trust_domain` (blocking), None if there is none."""
    try:
        record = core.store.get_bundle(trust_domain)
    except BundleNotFound:
        return None
    return Bundle.parse_spiffe(trust_domain, record.document)


def trust_anchors(relationship: Relationship, stored: Bundle | None) -> Bundle | None:
    """https_spiffe: the bundle that authenticates the endpoint (Federation §5.2.1): the
    stored bundle of the endpoint's trust domain once there is one (the last one fetched, or
    one from `bundle set`), the bootstrap bundle before."""
    return stored if stored is not None else relationship.bootstrap


async def refresh_once(core: ServerCore, relationship: Relationship) -> Refreshed:
    """Fetch, check and (if changed) store the peer's bundle; raises FetchFailed or
    BundleRefused, leaving the stored bundle as it was."""
    td = relationship.trust_domain
    held = await trio.to_thread.run_sync(held_bundle, core, td)
    anchor_td = relationship.anchor_trust_domain
    stored_anchors = (
        held if anchor_td == td else await trio.to_thread.run_sync(held_bundle, core, anchor_td)
    )
    body = await fetch_bundle(relationship, trust_anchors(relationship, stored_anchors))
    bundle = accept_bundle(td, body, held)
    if bundle == held:
        return Refreshed(bundle, False)
    stored = await trio.to_thread.run_sync(
        lambda: core.store.put_federated_bundle(
            td, bundle.to_spiffe().decode(), relationship_required=not relationship.from_config
        )
    )
    if stored is None:
        raise FetchFailed("the relationship was deleted meanwhile; the bundle was not stored")
    log.info(
        "federation.bundle_updated",
        trust_domain=str(td),
        sequence=bundle.sequence,
        x509_authorities=len(bundle.x509_authorities),
        jwt_authorities=len(bundle.jwt_authorities),
    )
    return Refreshed(bundle, True)


async def refresh_recorded(core: ServerCore, relationship: Relationship) -> Refreshed:
    """`refresh_once`, its outcome counted in the metrics and logged."""
    td = str(relationship.trust_domain)
    status = core.federation_status.setdefault(relationship.trust_domain, RefreshStatus())
    try:
        refreshed = await refresh_once(core, relationship)
    except RefreshError as exc:
        status.failed(core.clock(), str(exc))
        core.metrics.federation_failures.labels(td).inc()
        core.metrics.federation_last_failure.labels(td).set(time.time())
        log.warning(
            "federation.refresh_failed", trust_domain=td, url=relationship.url, error=str(exc)
        )
        raise
    core.metrics.federation_last_success.labels(td).set(time.time())
    status.succeeded(core.clock(), refreshed.bundle.sequence)
    return refreshed


async def refresh_forever(core: ServerCore, relationship: Relationship) -> None:
    retries = Retries(RETRY, random.random)
    while True:
        try:
            refreshed = await refresh_recorded(core, relationship)
        except RefreshError:
            await trio.sleep(retries.failed())
            continue
        retries.succeeded()
        await trio.sleep(refresh_interval(refreshed.bundle).total_seconds())


class Refreshers:
    """One `refresh_forever` per relationship in force; `apply` starts, restarts (changed)
    and stops (gone) loops to match a new set."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self._nursery: trio.Nursery | None = None
        self._running: dict[TrustDomain, tuple[Relationship, trio.CancelScope]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def apply(self, relationships: Mapping[TrustDomain, Relationship]) -> None:
        assert self._nursery is not None, "Refreshers.run first"
        for td, (running, scope) in list(self._running.items()):
            if relationships.get(td) != running:
                scope.cancel()
                del self._running[td]
                if td not in relationships:  # gone: so are its series and status
                    self.core.metrics.forget_federation(str(td))
                    self.core.federation_status.pop(td, None)
                log.info("federation.refresher_stopped", trust_domain=str(td))
        for td, relationship in relationships.items():
            if td not in self._running:
                scope = trio.CancelScope()
                self._running[td] = (relationship, scope)
                self._nursery.start_soon(self._loop, relationship, scope)

    async def _loop(self, relationship: Relationship, scope: trio.CancelScope) -> None:
        with scope:
            await refresh_forever(self.core, relationship)
