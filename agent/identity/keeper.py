"""Keeping the agent's own SVID: resume from disk, attest when needed, renew at half life,
or at once when the CA that signed it is tainted (so a later revoke does not lock it out).

Trust bootstrap, in order: the bundle persisted by a previous run (it follows CA rotation),
then `trust_bundle_path`, then `insecure_bootstrap` (the server's certificate as presented,
unverified: development only, and logged as a warning every time it is used).
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
import grpc.aio
import trio

from insignia.agent.config import AgentConfig
from insignia.agent.identity.node_attestation import (
    AgentIdentity,
    NeedsNewJoinToken,
    attest,
    load_bundle,
    load_identity,
    renew,
    save_identity,
)
from insignia.agent.identity.server_answers import Answer, classify
from insignia.agent.identity.server_client import (
    AgentEvicted,
    ServerClient,
    fetch_server_certificate,
)
from insignia.agent.metrics import AgentMetrics
from insignia.agent.svids.rotation import draw_jitter, half_life_renewal
from insignia.agent.svids.signing import authority_ids
from insignia.attestors.interface import NodeAttestorAgent
from insignia.backoff import Backoff, Retries
from insignia.bundle import Bundle
from insignia.daemon.logs import get_logger
from insignia.daemon.runtime import call_asyncio

log = get_logger(__name__)


# grpc's details of a failed TLS handshake whose peer chain did not verify against our roots.
_CERTIFICATE_NOT_TRUSTED = "CERTIFICATE_VERIFY_FAILED"


def _now() -> datetime:
    return datetime.now(UTC)


class IdentityKeeper:
    def __init__(
        self,
        config: AgentConfig,
        node_attestor: NodeAttestorAgent,
        metrics: AgentMetrics,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.node_attestor = node_attestor
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.identity: AgentIdentity | None = None
        self.resumed = False  # the identity came from disk, not from a fresh attestation
        self._tainted: frozenset[str] = frozenset()
        self._taint_changed = trio.Event()
        self._roots_source = "the certificate the server presented"  # insecure_bootstrap

    async def _bootstrap_roots(self) -> bytes:
        config = self.config
        td = config.trust_domain_value
        persisted = await trio.to_thread.run_sync(load_bundle, config.data_dir, td)
        if persisted is not None:
            self._roots_source = f"the bundle this agent saved in {config.data_dir}"
            return persisted.x509_pem()
        if config.trust_bundle_path is not None:
            self._roots_source = f"trust_bundle_path {config.trust_bundle_path}"
            data = await trio.Path(config.trust_bundle_path).read_bytes()
            if config.trust_bundle_format == "spiffe":
                return Bundle.parse_spiffe(td, data).x509_pem()
            return Bundle.parse_pem(td, data).x509_pem()
        log.warning(
            "agent.insecure_bootstrap",
            detail="trusting the server certificate as presented, without verification; "
            "configure trust_bundle_path outside development",
        )
        target = config.server.targets[0].with_port(config.server.attestation_port)
        return await trio.to_thread.run_sync(fetch_server_certificate, target.host, target.port)

    def _install(self, server: ServerClient, identity: AgentIdentity) -> None:
        self.identity = identity
        server.set_roots(identity.bundle.x509_pem())
        server.set_identity(*identity.credentials_pem())

    async def start(self, backoff: Backoff) -> ServerClient:
        """A client for the server, with an agent SVID from disk or from a fresh attestation."""
        config = self.config
        server = ServerClient(
            config.server.targets,
            config.server.attestation_port,
            await self._bootstrap_roots(),
            config.sync.rpc_timeout.total_seconds(),
            ping_interval=config.sync.keepalive_interval,
        )
        await trio.to_thread.run_sync(server.resolve_targets)
        identity = await trio.to_thread.run_sync(
            load_identity, config.data_dir, config.trust_domain_value, _now()
        )
        if identity is not None:
            log.info(
                "agent.resumed", spiffe_id=str(identity.spiffe_id), expires=str(identity.not_after)
            )
            self._install(server, identity)
            self.resumed = True
        else:
            await self.attest(server, backoff)
        return server

    async def attest(self, server: ServerClient, backoff: Backoff) -> AgentIdentity:
        """Node attestation, retried while the server is unreachable or rate-limits us."""
        name = self.config.node_attestor_name
        retries = Retries(backoff, self.rng.random)
        told_untrusted = False
        while True:
            try:
                identity = await attest(
                    server,
                    name,
                    self.node_attestor,
                    self.config.workload.key_type,
                    self.config.trust_domain_value,
                    _now(),
                )
                break
            except grpc.aio.AioRpcError as exc:
                if classify(exc.code()) is not Answer.TRANSIENT:
                    raise
                if not told_untrusted and _CERTIFICATE_NOT_TRUSTED in (exc.details() or ""):
                    told_untrusted = True
                    log.error(
                        "agent.server_not_trusted",
                        detail=f"the server's certificate does not chain to {self._roots_source}: "
                        "it is stale or belongs to another server. Replace it with the output of "
                        "`insignia-server bundle show --format pem` on the server host, then "
                        "restart the agent",
                        server=str(server.attestation_target),
                    )
                failed = server.attestation_target
                delay = 0.0  # another server may answer: try it at once
                if server.fail_over():  # every server tried: back off, then resolve again
                    delay = retries.failed()
                    await trio.to_thread.run_sync(server.resolve_targets)
                log.warning(
                    "agent.attestation_retry",
                    server=str(failed),
                    error=f"{exc.code().name}: {exc.details()}",
                    retry_in=round(delay, 3),
                )
                await trio.sleep(delay)
        self.metrics.server_contact()
        await trio.to_thread.run_sync(save_identity, self.config.data_dir, identity)
        log.info("agent.attested", spiffe_id=str(identity.spiffe_id), attestor=name)
        self._install(server, identity)
        return identity

    async def update_bundle(self, bundle: Bundle) -> None:
        if self.identity is not None and self.identity.bundle != bundle:
            self.identity = replace(self.identity, bundle=bundle)
            await trio.to_thread.run_sync(save_identity, self.config.data_dir, self.identity)

    def note_tainted(self, tainted_x509: frozenset[str]) -> None:
        """The synced tainted X.509 authority key IDs (lower-case hex); wakes `maintain`."""
        if tainted_x509 != self._tainted:
            self._tainted = tainted_x509
            self._taint_changed.set()
            self._taint_changed = trio.Event()

    def _issuer_tainted(self, handled: frozenset[str]) -> bool:
        """Whether the agent SVID's chain holds a tainted CA, under a taint set not yet acted on.

        `handled` is the taint set of the last taint-driven renewal: if the server still
        signed with a tainted CA then, renewing again before the set changes would only spin.
        """
        identity = self.identity
        if identity is None or self._tainted == handled:
            return False
        return bool(authority_ids(identity.svid.chain) & self._tainted)

    async def _until_renewal(self, renew_at: datetime, handled: frozenset[str] | None) -> bool:
        """Sleep until `renew_at`, or (unless `handled` is None: a retry is pacing us) until
        the issuer is tainted. True when woken by the taint."""
        with trio.move_on_after(max(0.0, (renew_at - _now()).total_seconds())):
            while True:
                changed = self._taint_changed
                if handled is not None and self._issuer_tainted(handled):
                    return True
                await changed.wait()
        return False

    async def maintain(self, server: ServerClient) -> None:
        """Renew the agent SVID at half life (jittered), or at once when its issuer is tainted;
        AgentEvicted when the server says so."""
        retries = Retries(self.config.sync.backoff(), self.rng.random)
        assert self.identity is not None
        renew_at = half_life_renewal(
            self.identity.not_before, self.identity.not_after, draw_jitter(self.rng)
        )
        handled: frozenset[str] = frozenset()
        while True:
            if await self._until_renewal(renew_at, handled if retries.attempt == 0 else None):
                handled = self._tainted
                log.info("agent.issuer_tainted", detail="renewing the agent SVID now")
            identity = self.identity
            assert identity is not None
            generation = server.identity_generation
            try:
                fresh = await renew(server, identity, self.config.workload.key_type, _now())
            except grpc.aio.AioRpcError as exc:
                server.raise_if_evicted(exc, generation)
                if _now() >= identity.not_after:
                    if not identity.reattestable:
                        raise NeedsNewJoinToken(
                            "the agent SVID expired while the server was unreachable"
                        ) from exc
                    raise AgentEvicted("agent SVID expired") from exc
                delay = retries.failed()
                log.warning("agent.renewal_retry", error=exc.code().name, retry_in=round(delay, 3))
                renew_at = _now() + timedelta(seconds=delay)
                continue
            retries.succeeded()
            self.metrics.server_contact()
            await trio.to_thread.run_sync(save_identity, self.config.data_dir, fresh)
            self._install(server, fresh)
            await call_asyncio(server.close_retired)
            log.info("agent.renewed", spiffe_id=str(fresh.spiffe_id), expires=str(fresh.not_after))
            renew_at = half_life_renewal(fresh.not_before, fresh.not_after, draw_jitter(self.rng))
