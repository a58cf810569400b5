"""Holding the server's Sync push stream: full state first, then changes, resumed after outages.

The stream is resumed with (store_id, revision) so a reconnect after a blip, or a move to
another server on the same datastore, costs one small delta, not the whole entry set. When
the stream breaks the agent moves at once to the next listed server; once every server has
failed the loop backs off exponentially with jitter (a fleet of agents must not reconnect in
lockstep after a server restart) and the cache keeps serving what it has.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import grpc
import grpc.aio
import trio
from insignia_proto import agent_pb2

from insignia.agent.cache.entries import Entry, UnservableEntry
from insignia.agent.cache.store import BundleView, Cache, SyncDelta
from insignia.agent.identity.server_client import (
    ServerClient,
    StreamClosed,
    next_message,
)
from insignia.agent.metrics import AgentMetrics
from insignia.backoff import Backoff, Retries
from insignia.bundle import Bundle, InvalidBundle
from insignia.daemon.logs import get_logger
from insignia.daemon.runtime import call_asyncio
from insignia.spiffeid import InvalidSpiffeId, TrustDomain

log = get_logger(__name__)


class InvalidSyncUpdate(ValueError):
    """An update the agent cannot apply at all (its trust bundle is unusable)."""


def parse_bundle_state(state: agent_pb2.BundleState, trust_domain: TrustDomain) -> BundleView:
    try:
        local = Bundle.parse_spiffe(trust_domain, state.spiffe_bundle)
        federated = {}
        for name, doc in state.federated_bundles.items():
            td = TrustDomain.parse(name)
            if td != trust_domain:
                federated[td] = Bundle.parse_spiffe(td, doc)
    except (InvalidBundle, InvalidSpiffeId) as exc:
        raise InvalidSyncUpdate(f"unusable bundle in sync update: {exc}") from exc
    if not local.x509_authorities:
        raise InvalidSyncUpdate(f"bundle for {trust_domain} has no X.509 authorities")
    return BundleView(
        local,
        federated,
        frozenset(s.lower() for s in state.tainted_x509_authorities),
        frozenset(state.tainted_jwt_authorities),
        frozenset(state.tainted_wit_authorities),
    )


def parse_update(update: agent_pb2.SyncUpdate, trust_domain: TrustDomain) -> SyncDelta:
    """A validated delta; entries the agent cannot serve are dropped with a warning."""
    entries = []
    for msg in update.entries:
        try:
            entries.append(Entry.from_proto(msg))
        except UnservableEntry as exc:
            log.warning("sync.entry_refused", entry_id=exc.entry_id, error=exc.reason)
    bundles = parse_bundle_state(update.bundle, trust_domain) if update.HasField("bundle") else None
    if update.full and bundles is None:
        raise InvalidSyncUpdate("a full sync update must carry the bundle")
    return SyncDelta(
        store_id=update.store_id,
        revision=update.revision,
        full=update.full,
        entries=tuple(entries),
        deleted_entry_ids=tuple(update.deleted_entry_ids),
        bundles=bundles,
    )


class ServerSilent(Exception):
    """Nothing arrived on the Sync stream for longer than the server's heartbeats allow."""


def silence_limit(heartbeat_interval_ms: int) -> float:
    """Seconds without any message after which a Sync stream counts as broken.

    A frozen server or a partition that drops packets ends nothing: TCP and HTTP/2 keepalive
    notice only after tens of seconds. The server says how often it sends (at the latest, a
    heartbeat); two intervals plus half a second of slack for a loaded server or a slow
    path. 0 (a server that does not say) means no limit: keepalive alone decides.
    """
    if heartbeat_interval_ms <= 0:
        return math.inf
    return 2 * heartbeat_interval_ms / 1000 + 0.5


async def _follow(
    server: ServerClient,
    cache: Cache,
    metrics: AgentMetrics,
    on_update: Callable[[], None],
) -> None:
    """Read one Sync stream until it ends; raises AioRpcError, InvalidSyncUpdate or
    ServerSilent."""
    request = agent_pb2.SyncRequest(store_id=cache.store_id, since_revision=cache.revision)
    call = server.sync(request)
    updates = aiter(call)
    attached = False
    limit = math.inf  # until the server's first message says how often to expect one
    try:
        while True:
            with trio.move_on_after(limit) as waiting:
                update = await call_asyncio(next_message, updates)
            if waiting.cancelled_caught:
                raise ServerSilent(f"no message from the server for {limit:g}s")
            if update is None:
                return
            limit = silence_limit(update.heartbeat_interval_ms)
            metrics.server_contact()
            if not attached:  # the first answer: this server holds our stream now
                attached = True
                log.info(
                    "sync.attached",
                    server=str(server.target),
                    since_revision=request.since_revision,
                    full=update.full,
                )
            if update.heartbeat:  # the server is alive and nothing changed
                continue
            delta = parse_update(update, cache.trust_domain)
            cache.apply(delta)
            metrics.cached_entries.set(len(cache.entries))
            on_update()
    finally:
        call.cancel()


async def run_sync(
    server: ServerClient,
    cache: Cache,
    metrics: AgentMetrics,
    backoff: Backoff,
    *,
    rng: random.Random | None = None,
    on_update: Callable[[], None] = lambda: None,
) -> None:
    """Hold the Sync stream forever, reconnecting with backoff; AgentEvicted ends it."""
    retries = Retries(backoff, (rng or random.Random()).random)
    while True:
        revision_before = (cache.store_id, cache.revision)
        generation = server.identity_generation
        try:
            await _follow(server, cache, metrics, on_update)
            error = "server closed the stream"
            server_failed = True
        except grpc.aio.AioRpcError as exc:
            server.raise_if_evicted(exc, generation)
            error = f"{exc.code().name}: {exc.details()}"
            server_failed = True
        except ServerSilent as exc:
            error = str(exc)
            server_failed = True
        except StreamClosed as exc:  # our own channel swap (renewal): same server
            error = str(exc)
            server_failed = False
        except InvalidSyncUpdate as exc:
            error = str(exc)
            server_failed = False
            cache.store_id, cache.revision = "", 0  # ask for full state next time
        if (cache.store_id, cache.revision) != revision_before or (
            generation != server.identity_generation
        ):
            retries.succeeded()  # the stream made progress before it broke
        failed = server.target
        delay = 0.0
        if not server_failed or server.fail_over():  # same server, or every one tried
            delay = retries.failed()
            if server_failed:
                await trio.to_thread.run_sync(server.resolve_targets)
        metrics.sync_reconnects.inc()
        log.warning(
            "sync.disconnected",
            server=str(failed),
            next_server=str(server.target),
            error=error,
            retry_in=round(delay, 3),
            attempt=retries.attempt,
        )
        with trio.move_on_after(delay):  # or sooner: as soon as the server is reachable again
            await call_asyncio(server.back_after_outage)
