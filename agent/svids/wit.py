"""Getting WIT-SVIDs signed: a key pair made here per entry, its public half sent as a JWK.

Issued on demand: an open FetchWITSVID stream asks for the entries it serves (`request`),
so an agent whose workloads never use WITs never asks the server for one. Each answer is
checked (the subject, the signing kid, the bound key) before it is cached; the cache then
wakes the streams, which push the new token and key. Renewal follows
`insignia.agent.svids.rotation.wit_renew_reason`; a refused entry backs off on its own.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import grpc.aio
from insignia_proto import agent_pb2

from insignia.agent.cache.entries import Entry
from insignia.agent.cache.store import Cache, WitSvidRecord
from insignia.agent.identity.server_client import ServerClient
from insignia.agent.metrics import AgentMetrics
from insignia.agent.svids.rotation import (
    EntryRetry,
    RenewReason,
    WitTiming,
    backing_off,
    draw_jitter,
    half_life_renewal,
    retry_after_refusal,
)
from insignia.backoff import Backoff
from insignia.bundle import b64url_decode, public_key_to_jwk
from insignia.daemon.logs import get_logger
from insignia.keys import KeyType, PrivateKey, generate_key, jwt_algorithm, private_key_to_jwk

log = get_logger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class WitRefused(ValueError):
    """The server refused an entry's WIT-SVID, or answered with one that does not fit."""


def _segment(part: str) -> dict[str, object]:
    value = json.loads(b64url_decode(part))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def checked_token(
    token: str, entry: Entry, public_jwk: dict[str, str]
) -> tuple[str, dict[str, object]]:
    """The kid and claims of the server's answer, if it is a WIT-SVID for `entry` binding
    exactly `public_jwk`; WitRefused otherwise. The signature is the workloads' to check
    (they hold the bundle); this catches a server answering for the wrong key or entry."""
    try:
        head, body, _ = token.split(".")
        header, claims = _segment(head), _segment(body)
    except ValueError as exc:
        raise WitRefused(f"server sent a malformed WIT-SVID: {exc}") from None
    kid = header.get("kid")
    if header.get("typ") != "wit+jwt" or not isinstance(kid, str) or not kid:
        raise WitRefused(f"server token header {header!r} is not a WIT-SVID's")
    if claims.get("sub") != str(entry.spiffe_id):
        raise WitRefused(f"server token has sub={claims.get('sub')!r}")
    cnf = claims.get("cnf")
    if not isinstance(cnf, dict) or cnf.get("jwk") != public_jwk:
        raise WitRefused("server token binds another key than the one sent")
    return kid, claims


class WitIssuer:
    """WIT-SVIDs for the entries open streams serve: coalesced per entry, asyncio side."""

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
        self._inflight: set[str] = set()
        self._retry_at: dict[str, EntryRetry] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def retry_at(self, entry_id: str) -> datetime | None:
        """When a refused entry may be asked for again (a stream re-checks then)."""
        retry = self._retry_at.get(entry_id)
        return retry.at if retry is not None else None

    def request(self, due: Sequence[tuple[Entry, RenewReason]]) -> None:
        """Start signing `due` entries not in flight and not backing off (returns at once)."""
        now = self._clock()
        batch = [
            (e, r)
            for e, r in due
            if e.id not in self._inflight and not backing_off(self._retry_at.get(e.id), now)
        ]
        if not batch:
            return
        self._inflight.update(e.id for e, _ in batch)
        task = asyncio.ensure_future(self._issue(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _issue(self, batch: Sequence[tuple[Entry, RenewReason]]) -> None:
        try:
            keys = await asyncio.to_thread(lambda: [generate_key(self._key_type) for _ in batch])
            public = [
                {**public_key_to_jwk(key.public_key()), "alg": jwt_algorithm(key)} for key in keys
            ]
            params = [
                agent_pb2.WITSVIDParams(entry_id=e.id, public_jwk=json.dumps(p))
                for (e, _), p in zip(batch, public, strict=True)
            ]
            try:
                results = await self._server.batch_new_wit_svid(params)
            except grpc.aio.AioRpcError as exc:
                log.warning("wit.unavailable", error=exc.code().name, detail=exc.details())
                self._refused([e for e, _ in batch])
                return
            self._metrics.server_contact()
            by_id = {r.entry_id: r for r in results}
            records = []
            for (entry, _), key, jwk in zip(batch, keys, public, strict=True):
                try:
                    records.append(self._record(entry, key, jwk, by_id.get(entry.id)))
                except WitRefused as exc:
                    log.warning("wit.entry_refused", entry_id=entry.id, error=str(exc))
                    self._refused([entry])
                    continue
                self._retry_at.pop(entry.id, None)
            self._cache.put_wit(records)
        finally:
            self._inflight.difference_update(e.id for e, _ in batch)

    def _refused(self, entries: Sequence[Entry]) -> None:
        now = self._clock()
        known = self._cache.entries
        self._retry_at = {i: r for i, r in self._retry_at.items() if i in known}
        for entry in entries:
            previous = self._retry_at.get(entry.id)
            retry = retry_after_refusal(previous, now, self._backoff, self._rng.random())
            self._retry_at[entry.id] = retry
        self._cache.touch(e.id for e in entries)  # their streams then wait for `retry_at`

    def _record(
        self,
        entry: Entry,
        key: PrivateKey,
        public_jwk: dict[str, str],
        result: agent_pb2.WITSVIDResult | None,
    ) -> WitSvidRecord:
        if result is None or result.error or not result.token:
            raise WitRefused(result.error if result else "missing from the response")
        kid, _ = checked_token(result.token, entry, public_jwk)
        issued = datetime.fromtimestamp(result.issued_at, UTC)
        expires = datetime.fromtimestamp(result.expires_at, UTC)
        renew_at = half_life_renewal(issued, expires, draw_jitter(self._rng))
        timing = WitTiming(expires, renew_at, kid, entry.wit_svid_ttl)
        return WitSvidRecord(
            entry.id,
            entry.spiffe_id,
            result.token,
            json.dumps(private_key_to_jwk(key)),
            issued,
            timing,
        )
