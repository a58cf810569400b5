"""The cache on disk, so an agent restarted while no server answers still serves its workloads.

SPIRE persists only the agent's own SVID: an agent restarted during a server outage has
nothing to hand its workloads until a server returns. Insignia also keeps, in one sealed file
under data_dir (insignia.daemon.sealed: 0600, atomic, versioned, checksummed), the entries
this agent is entitled to with the store id and revision they reached, the bundles, and the
workloads' current X.509-SVIDs with their private keys. The security cost is that those keys
sit on disk, readable by root and the agent's uid only (data_dir is 0700): the same exposure
as the agent's own key, which an attacker holding that uid could use to obtain them anyway.
JWT-SVIDs are minted on demand and are not kept.

The file is written by `CachePersister` after changes, at most once per `MIN_INTERVAL`, so a
burst of updates costs one write. It is read once, at start, only when the agent resumed its
persisted identity and the file was written for that same agent.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import trio
from insignia_proto import agent_pb2

from insignia.agent.cache.entries import SigningFields
from insignia.agent.cache.store import BundleView, Cache, X509SvidRecord
from insignia.agent.cache.sync import InvalidSyncUpdate, parse_update
from insignia.agent.svids.rotation import SvidTiming
from insignia.agent.svids.signing import authority_ids
from insignia.daemon.logs import get_logger
from insignia.daemon.sealed import discard, read_sealed, write_sealed
from insignia.spiffeid import SpiffeId
from insignia.x509svid import parse_chain_der

log = get_logger(__name__)

CACHE_FILE: Final = "cache.sealed"
_KIND: Final = "agent_cache"
_VERSION: Final = 1
MIN_INTERVAL: Final = 1.0  # seconds between two writes of the cache file


def bundle_state(view: BundleView) -> agent_pb2.BundleState:
    """The Sync form of a bundle view (the inverse of `parse_bundle_state`)."""
    return agent_pb2.BundleState(
        spiffe_bundle=view.local.to_spiffe(),
        tainted_x509_authorities=sorted(view.tainted_x509),
        tainted_jwt_authorities=sorted(view.tainted_jwt),
        tainted_wit_authorities=sorted(view.tainted_wit),
        federated_bundles={str(td): b.to_spiffe() for td, b in view.federated.items()},
    )


def snapshot(cache: Cache, agent_id: SpiffeId, now: datetime) -> dict[str, Any] | None:
    """What the cache file holds, taken on the cache's thread; None before the first sync."""
    if cache.bundles is None:
        return None
    update = agent_pb2.SyncUpdate(
        store_id=cache.store_id,
        revision=cache.revision,
        full=True,
        entries=[entry.to_proto() for entry in cache.entries.values()],
        bundle=bundle_state(cache.bundles),
    )
    svids = [
        {
            "entry_id": r.entry_id,
            "spiffe_id": str(r.spiffe_id),
            "chain": base64.b64encode(r.chain_der).decode(),
            "key": base64.b64encode(r.key_der).decode(),
            "renew_at": r.timing.renew_at.isoformat(),
            "x509_svid_ttl": r.timing.signed_for.x509_svid_ttl,
            "dns_names": list(r.timing.signed_for.dns_names),
        }
        for r in cache.x509_svids().values()
        if r.timing.not_after > now
    ]
    return {
        "agent_id": str(agent_id),
        "sync": base64.b64encode(update.SerializeToString()).decode(),
        "x509_svids": svids,
    }


def _record(item: dict[str, Any]) -> X509SvidRecord:
    chain_der = base64.b64decode(item["chain"], validate=True)
    chain = parse_chain_der(chain_der)
    leaf = chain[0]
    spiffe_id = SpiffeId.parse(item["spiffe_id"])
    signed_for = SigningFields(spiffe_id, int(item["x509_svid_ttl"]), tuple(item["dns_names"]))
    timing = SvidTiming(
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
        datetime.fromisoformat(item["renew_at"]),
        authority_ids(chain),
        signed_for,
    )
    key_der = base64.b64decode(item["key"], validate=True)
    return X509SvidRecord(str(item["entry_id"]), spiffe_id, chain_der, key_der, timing)


def restore(cache: Cache, payload: dict[str, Any], agent_id: SpiffeId, now: datetime) -> int:
    """Fill an empty cache from the file's payload; the number of SVIDs still valid.

    ValueError (and its kin) when the payload cannot be used: the caller discards the file.
    """
    if payload.get("agent_id") != str(agent_id):
        raise ValueError(f"written for {payload.get('agent_id')!r}, this agent is {agent_id}")
    update = agent_pb2.SyncUpdate.FromString(base64.b64decode(payload["sync"], validate=True))
    records = [_record(item) for item in payload["x509_svids"]]
    cache.apply(parse_update(update, cache.trust_domain))
    fresh = [r for r in records if r.timing.not_after > now]
    cache.put_x509(fresh)
    return len(fresh)


def read_cache_file(data_dir: Path, cache: Cache) -> tuple[dict[str, Any], str] | None:
    """The cache file's payload and when it was written (RFC 3339), or None (missing, or
    refused and discarded). Blocking."""
    path = data_dir / CACHE_FILE
    payload = read_sealed(path, _KIND, _VERSION, str(cache.trust_domain))
    if payload is None:
        return None
    saved = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return payload, saved


def restore_cache(
    data_dir: Path, cache: Cache, payload: dict[str, Any], agent_id: SpiffeId
) -> int | None:
    """`restore`, or None after discarding a file whose content cannot be used."""
    try:
        return restore(cache, payload, agent_id, datetime.now(UTC))
    except (ValueError, KeyError, TypeError, InvalidSyncUpdate) as exc:
        discard(data_dir / CACHE_FILE, f"unusable cache: {exc}")
        return None


class CachePersister:
    """Writes the cache file after changes (`mark_dirty`), at most once per MIN_INTERVAL."""

    def __init__(
        self, data_dir: Path, cache: Cache, agent_id: Callable[[], SpiffeId | None]
    ) -> None:
        self._path = data_dir / CACHE_FILE
        self._cache = cache
        self._agent_id = agent_id
        self._dirty = trio.Event()

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            await self.write_now()
            await trio.sleep(MIN_INTERVAL)

    async def write_now(self) -> None:
        agent_id = self._agent_id()
        if agent_id is None:
            return
        payload = snapshot(self._cache, agent_id, datetime.now(UTC))
        if payload is None:
            return
        td = str(self._cache.trust_domain)
        await trio.to_thread.run_sync(write_sealed, self._path, _KIND, _VERSION, td, payload)
