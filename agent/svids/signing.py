"""Getting SVIDs signed: workload keys made here, CSRs batched to the server, JWTs on demand.

A workload's private key is generated on this node and only its CSR travels, so the server
(and anything between) never holds it. X.509-SVIDs are signed eagerly for every authorized
entry and renewed on the schedule in agent/rotation.py; JWT-SVIDs are minted when a workload
asks and cached per (entry, audience set) until half their life has passed.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import grpc.aio
import trio
from cryptography import x509
from insignia_proto import agent_pb2

from insignia.agent.cache.entries import Entry
from insignia.agent.cache.store import Cache, Change, JwtSvidRecord, X509SvidRecord
from insignia.agent.identity.csr import build_csr
from insignia.agent.identity.server_client import ServerClient
from insignia.agent.metrics import AgentMetrics
from insignia.agent.svids.rotation import (
    EntryRetry,
    RenewReason,
    SvidTiming,
    backing_off,
    draw_jitter,
    half_life_renewal,
    jwt_needs_renewal,
    jwt_servable,
    next_wakeup,
    retry_after_refusal,
    x509_renew_reason,
)
from insignia.agent.workloadapi.rpcs import JwtRateLimited, JwtUnavailable
from insignia.backoff import Backoff, Retries
from insignia.bundle import b64url_decode
from insignia.daemon.logs import get_logger
from insignia.daemon.ratelimit import RateLimiter
from insignia.daemon.runtime import call_asyncio
from insignia.keys import KeyType, PrivateKey, generate_key, private_key_to_der
from insignia.spiffeid import SpiffeId
from insignia.x509svid import InvalidX509Svid, X509Svid, parse_chain_der

log = get_logger(__name__)

BATCH_SIZE: Final = 100
IDLE_RECHECK: Final = timedelta(minutes=1)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def authority_ids(chain: Sequence[x509.Certificate]) -> frozenset[str]:
    """Hex key IDs of every CA above the leaf: tainting any of them taints the SVID."""
    ids: set[str] = set()
    for i, cert in enumerate(chain):
        try:
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
            if aki.key_identifier:
                ids.add(aki.key_identifier.hex())
        except x509.ExtensionNotFound:
            pass
        if i > 0:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
                ids.add(ski.digest.hex())
            except x509.ExtensionNotFound:
                pass
    return frozenset(ids)


class X509Signer:
    """Keeps an X.509-SVID for every cached entry, renewing each when rotation says so."""

    def __init__(
        self,
        cache: Cache,
        server: ServerClient,
        key_type: KeyType,
        metrics: AgentMetrics,
        backoff: Backoff,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._cache = cache
        self._server = server
        self._key_type = key_type
        self._metrics = metrics
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._clock = clock
        self._event = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._retry_at: dict[str, EntryRetry] = {}
        cache.add_listener(self._on_change)

    def _on_change(self, change: Change) -> None:
        # Changes can come from asyncio code too; hop into trio through its token.
        if self._token is not None:
            self._token.run_sync_soon(self._event.set)

    def due(self, now: datetime) -> list[tuple[Entry, RenewReason]]:
        """Entries whose SVID must be signed now, skipping ones still backing off."""
        tainted = self._cache.bundles.tainted_x509 if self._cache.bundles else frozenset()
        result = []
        for entry in self._cache.entries.values():
            record = self._cache.x509_svid(entry.id)
            timing = record.timing if record is not None else None
            reason = x509_renew_reason(timing, entry.signing_fields, now, tainted)
            if reason is not None and not backing_off(self._retry_at.get(entry.id), now):
                result.append((entry, reason))
        return result

    async def run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        retries = Retries(self._backoff, self._rng.random)
        while True:
            self._event = trio.Event()
            now = self._clock()
            due = self.due(now)
            if due:
                generation = self._server.identity_generation
                try:
                    for start in range(0, len(due), BATCH_SIZE):
                        await self.sign(due[start : start + BATCH_SIZE])
                    retries.succeeded()
                    continue
                except grpc.aio.AioRpcError as exc:
                    self._server.raise_if_evicted(exc, generation)
                    delay = retries.failed()
                    log.warning(
                        "signer.unavailable", error=exc.code().name, retry_in=round(delay, 3)
                    )
                    with trio.move_on_after(delay):
                        await self._event.wait()
                    continue
            renew_times = [r.timing.renew_at for r in self._cache.x509_svids().values()]
            renew_times += [retry.at for retry in self._retry_at.values()]
            wake_at = next_wakeup(renew_times, now, IDLE_RECHECK)
            with trio.move_on_after(max(0.0, (wake_at - self._clock()).total_seconds())):
                await self._event.wait()

    async def sign(self, batch: Sequence[tuple[Entry, RenewReason]]) -> None:
        """Sign one batch: keys and CSRs in a thread, one BatchNewX509SVID call."""
        keys: list[tuple[Entry, PrivateKey, bytes]] = await trio.to_thread.run_sync(
            lambda: [(e, k, build_csr(k, e.spiffe_id)) for e, k in _keys(batch, self._key_type)]
        )
        params = [agent_pb2.X509SVIDParams(entry_id=e.id, csr=csr) for e, _, csr in keys]
        results = await call_asyncio(self._server.batch_new_x509_svid, params)
        self._metrics.server_contact()
        by_id = {r.entry_id: r for r in results}
        reasons = {e.id: reason for e, reason in batch}
        records = []
        now = self._clock()
        for entry, key, _ in keys:
            result = by_id.get(entry.id)
            try:
                if result is None or result.error:
                    raise ValueError(result.error if result else "missing from the response")
                records.append(self._record(entry, key, result.svid_chain))
                self._retry_at.pop(entry.id, None)
                self._metrics.rotations.labels(reasons[entry.id].value).inc()
            except (ValueError, InvalidX509Svid) as exc:
                previous = self._retry_at.get(entry.id)
                retry = retry_after_refusal(previous, now, self._backoff, self._rng.random())
                self._retry_at[entry.id] = retry
                log.warning("signer.entry_refused", entry_id=entry.id, error=str(exc))
        self._cache.put_x509(records)

    def _record(self, entry: Entry, key: PrivateKey, chain_der: bytes) -> X509SvidRecord:
        chain = parse_chain_der(chain_der)
        svid = X509Svid(entry.spiffe_id, chain, key)  # checks the URI SAN and the key match
        nb, na = svid.leaf.not_valid_before_utc, svid.leaf.not_valid_after_utc
        renew_at = half_life_renewal(nb, na, draw_jitter(self._rng))
        timing = SvidTiming(nb, na, renew_at, authority_ids(chain), entry.signing_fields)
        return X509SvidRecord(entry.id, entry.spiffe_id, chain_der, private_key_to_der(key), timing)


def _keys(
    batch: Sequence[tuple[Entry, RenewReason]], key_type: KeyType
) -> list[tuple[Entry, PrivateKey]]:
    return [(entry, generate_key(key_type)) for entry, _ in batch]


def _jwt_header_and_claims(token: str) -> tuple[dict[str, object], dict[str, object]]:
    head, body, _ = token.split(".")
    return json.loads(b64url_decode(head)), json.loads(b64url_decode(body))


class MintBudget:
    """How many JWT-SVIDs per second each caller uid and each SPIFFE ID may have minted.

    The server's signing budget is per agent, so without this one local caller asking for
    ever new audiences would spend it for every workload on the node.
    """

    def __init__(self, per_uid: float, per_spiffe_id: float) -> None:
        self._by_uid = RateLimiter(per_uid)
        self._by_id = RateLimiter(per_spiffe_id)

    def refusal(self, uid: int, spiffe_id: SpiffeId, now: float) -> str | None:
        """None if a mint for (uid, spiffe_id) may go ahead (its cost is taken), else why not."""
        for limiter, key, what in (
            (self._by_uid, f"uid {uid}", "jwt_mint_rate_per_uid"),
            (self._by_id, str(spiffe_id), "jwt_mint_rate_per_spiffe_id"),
        ):
            if not limiter.try_acquire(key, now):
                return (
                    f"JWT-SVID mint rate for {key} exceeded ({what} = {limiter.rate:g}/s); "
                    f"retry in {limiter.retry_after(key):.2f}s"
                )
        return None


class JwtMinter:
    """JWT-SVIDs per (entry, audience set): cached, coalesced, and minted by the server."""

    def __init__(
        self,
        cache: Cache,
        server: ServerClient,
        metrics: AgentMetrics,
        budget: MintBudget,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._cache = cache
        self._server = server
        self._metrics = metrics
        self._budget = budget
        self._clock = clock
        self._inflight: dict[tuple[str, frozenset[str]], asyncio.Future[JwtSvidRecord]] = {}

    async def jwt_svid(self, entry: Entry, audience: frozenset[str], uid: int) -> JwtSvidRecord:
        """Cached if still fresh; else minted, and the mint charged to `uid` and the entry's ID."""
        now = self._clock()
        cached = self._cache.jwt_svid(entry.id, audience)
        tainted = self._cache.bundles.tainted_jwt if self._cache.bundles else frozenset()
        usable = cached is not None and jwt_servable(cached.expires_at, now, cached.kid, tainted)
        if cached is not None and not jwt_needs_renewal(
            cached.issued_at, cached.expires_at, now, cached.kid, tainted
        ):
            return cached
        key = (entry.id, audience)
        future = self._inflight.get(key)
        if future is None:
            refusal = self._budget.refusal(uid, entry.spiffe_id, time.monotonic())
            if refusal is not None:
                if cached is not None and usable:
                    return cached  # renewal can wait for the caller's budget (jwt_servable)
                raise JwtRateLimited(refusal)
            future = asyncio.ensure_future(self._mint(entry, audience))
            self._inflight[key] = future
            future.add_done_callback(lambda _f: self._inflight.pop(key, None))
        try:
            return await asyncio.shield(future)
        except JwtUnavailable:
            if cached is not None and usable:
                return cached  # server unreachable: the half-life rule yields to availability
            raise

    async def _mint(self, entry: Entry, audience: frozenset[str]) -> JwtSvidRecord:
        params = [agent_pb2.JWTSVIDParams(entry_id=entry.id, audience=sorted(audience))]
        try:
            results = await self._server.batch_new_jwt_svid(params)
        except grpc.aio.AioRpcError as exc:
            raise JwtUnavailable(f"server: {exc.code().name}: {exc.details()}") from exc
        self._metrics.server_contact()
        if len(results) != 1 or results[0].error or not results[0].token:
            raise JwtUnavailable(results[0].error if results else "empty response from server")
        result = results[0]
        try:
            header, claims = _jwt_header_and_claims(result.token)
        except ValueError as exc:
            raise JwtUnavailable(f"server sent a malformed token: {exc}") from exc
        aud = claims.get("aud")
        token_aud = {aud} if isinstance(aud, str) else set(aud if isinstance(aud, list) else [])
        if claims.get("sub") != str(entry.spiffe_id) or not audience <= token_aud:
            raise JwtUnavailable(f"server token has sub={claims.get('sub')!r} aud={aud!r}")
        record = JwtSvidRecord(
            spiffe_id=entry.spiffe_id,
            token=result.token,
            kid=str(header.get("kid", "")),
            issued_at=datetime.fromtimestamp(result.issued_at, UTC),
            expires_at=datetime.fromtimestamp(result.expires_at, UTC),
        )
        self._cache.put_jwt(entry.id, audience, record, self._clock())
        return record
