"""Keep each federated trust domain's bundle current: fetch it from the peer's endpoint,
store it when it changed (the change log then carries it to agents), and wait the peer's
refresh hint, or back off after a failure while the last good bundle stays in force.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

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


def held_bundle(core: ServerCore, trust_domain: TrustDomain) -> Bundle | None:
    """The stored bundle of `trust_domain` (blocking), None if there is none."""
    try:
        record = core.store.get_bundle(trust_domain)
    except BundleNotFound:
        return None
    return Bundle.parse_spiffe(trust_domain, record.document)


def trust_anchors(relationship: Relationship, held: Bundle | None) -> Bundle | None:
    """https_spiffe: the bundle that authenticates the endpoint (Federation §5.2.1): the
    last one fetched once there is one, the bootstrap bundle before."""
    endpoint = relationship.endpoint_id
    if endpoint is not None and endpoint.trust_domain == relationship.trust_domain and held:
        return held
    return relationship.bootstrap


async def refresh_once(core: ServerCore, relationship: Relationship) -> Bundle:
    """Fetch, check and (if changed) store the peer's bundle; raises FetchFailed or
    BundleRefused, leaving the stored bundle as it was."""
    td = relationship.trust_domain
    held = await trio.to_thread.run_sync(held_bundle, core, td)
    body = await fetch_bundle(relationship, trust_anchors(relationship, held))
    bundle = accept_bundle(td, body, held)
    if bundle != held:
        await trio.to_thread.run_sync(core.store.put_bundle, td, bundle.to_spiffe().decode())
        log.info(
            "federation.bundle_updated",
            trust_domain=str(td),
            sequence=bundle.sequence,
            x509_authorities=len(bundle.x509_authorities),
            jwt_authorities=len(bundle.jwt_authorities),
        )
    return bundle


async def refresh_forever(core: ServerCore, relationship: Relationship) -> None:
    td = str(relationship.trust_domain)
    retries = Retries(RETRY, random.random)
    status = core.federation_status.setdefault(relationship.trust_domain, RefreshStatus())
    while True:
        try:
            bundle = await refresh_once(core, relationship)
        except (FetchFailed, BundleRefused, DatastoreUnavailable) as exc:
            status.failed(core.clock(), str(exc))
            core.metrics.federation_failures.labels(td).inc()
            core.metrics.federation_last_failure.labels(td).set(time.time())
            log.warning(
                "federation.refresh_failed",
                trust_domain=td,
                url=relationship.url,
                error=str(exc),
            )
            await trio.sleep(retries.failed())
            continue
        retries.succeeded()
        status.succeeded(core.clock(), bundle.sequence)
        core.metrics.federation_last_success.labels(td).set(time.time())
        await trio.sleep(refresh_interval(bundle).total_seconds())


async def run_refreshers(core: ServerCore, relationships: Sequence[Relationship]) -> None:
    async with trio.open_nursery() as nursery:
        for relationship in relationships:
            nursery.start_soon(refresh_forever, core, relationship)
