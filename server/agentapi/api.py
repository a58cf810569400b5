"""The agent API (insignia.agent.v1.AgentAPI, see agent.proto) on grpc.aio.

Attest runs on the server-auth-only TLS port (no agent SVID yet, see server/tls.py); every
other RPC runs on the mTLS port and starts by checking the caller's certificate: a current
agent SVID (the serial the agents table holds), not evicted, not banned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Protocol, TypeVar

import grpc
from insignia_proto import agent_pb2

from insignia.daemon.reserved_ids import is_agent_id
from insignia.daemon.rpc_refusal import refuse
from insignia.jwtsvid import InvalidAudience
from insignia.keys import PrivateKey
from insignia.server.agentapi.node_attestation import attest_agent
from insignia.server.agentapi.rpc_errors import hide_internal_errors
from insignia.server.agentapi.sync import (
    PendingUpdate,
    SentView,
    delta_update,
    full_update,
    log_resumable,
    log_resume_update,
)
from insignia.server.agentapi.tls import peer_certificate
from insignia.server.ca.signer_pool import SignOutcome, SignRequest
from insignia.server.ca.signing import (
    NoActiveAuthority,
    SignedJwt,
    SigningRefused,
    sign_jwt,
    sign_wit,
    sign_x509_svid,
    svid_fingerprint,
)
from insignia.server.ca.state import KeyKind
from insignia.server.core import ServerCore, log
from insignia.server.datastore.errors import RevisionPruned
from insignia.server.entries import RegistrationEntry
from insignia.spiffeid import SpiffeId
from insignia.x509svid import InvalidX509Svid, leaf_spiffe_id

Context = grpc.aio.ServicerContext[object, object]
SERVICE = "AgentAPI"
ActiveKey = tuple[str, PrivateKey] | None  # the kid and key that sign tokens, if any


class _TokenParams(Protocol):
    @property
    def entry_id(self) -> str: ...


P = TypeVar("P", bound=_TokenParams)
R = TypeVar("R")


def _x509_result(entry_id: str, outcome: SignOutcome) -> agent_pb2.X509SVIDResult:
    if isinstance(outcome, str):
        return agent_pb2.X509SVIDResult(entry_id=entry_id, error=outcome)
    return agent_pb2.X509SVIDResult(
        entry_id=entry_id,
        svid_chain=outcome.chain_der,
        expires_at=int(outcome.expires_at.timestamp()),
    )


class AgentApi:
    def __init__(self, core: ServerCore) -> None:
        self.core = core

    # --- caller authentication ----------------------------------------------------------

    async def _caller(self, context: Context) -> tuple[SpiffeId, str, str]:
        """The agent behind this connection and its SVID's serial and fingerprint, or abort
        UNAUTHENTICATED / PERMISSION_DENIED."""
        cert = peer_certificate(context)
        if cert is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
            raise AssertionError("unreachable")
        try:
            agent_id = leaf_spiffe_id(cert)
        except InvalidX509Svid as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"not an X509-SVID: {exc}")
            raise
        if not agent_id.member_of(self.core.trust_domain) or not is_agent_id(agent_id):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{agent_id} is not an agent of this server"
            )
        if cert.not_valid_after_utc <= self.core.clock():
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "agent SVID has expired")
        serial, fingerprint = str(cert.serial_number), svid_fingerprint(cert)
        problem = self.core.model.check_agent(agent_id, serial, fingerprint)
        if problem is not None and problem.code != "banned":  # maybe news the model lacks
            await self.core.reread_agent(agent_id)
            problem = self.core.model.check_agent(agent_id, serial, fingerprint)
        if problem is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem.message)
        record = self.core.model.agents[agent_id]
        if serial == record.new_serial_number:  # first use of a renewed SVID: promote it
            await self.core.save_agent(
                replace(
                    record,
                    serial_number=serial,
                    svid_fingerprint=record.new_svid_fingerprint,
                    new_serial_number="",
                    new_svid_fingerprint="",
                )
            )
        return agent_id, serial, fingerprint

    async def _limit(self, context: Context, agent_id: SpiffeId, kind: str, cost: float) -> None:
        """Per agent, X.509, JWT and WIT signing have separate budgets (`*_signing_rate`; WIT
        takes the JWT rate): keyed by
        the agent's ID, not its address, so agents behind one address (a NAT, one host) do
        not share one budget, and one agent's flood costs only that agent."""
        limiter = self.core.signing_limiters[kind]
        key = str(agent_id)
        if not limiter.try_acquire(key, time.monotonic(), cost):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{kind} signing rate limit for agent {key} exceeded; retry in "
                f"{limiter.retry_after(key, cost):.2f}s",
            )

    def _unauthorized(self, kind: str, entry_id: str, agent_id: SpiffeId) -> str:
        """Count the refusal and say why: the entry is not one this agent may sign for."""
        self.core.metrics.signing_refused.labels(kind).inc()
        return f"entry {entry_id!r} is not authorized for {agent_id}"

    def _sign_tokens(
        self,
        kind: KeyKind,
        agent_id: SpiffeId,
        requested: Iterable[P],
        result: Callable[..., R],
        sign: Callable[[ActiveKey, datetime | None, RegistrationEntry, P, datetime], SignedJwt],
    ) -> list[R]:
        """One result per requested token (JWT- or WIT-SVID), signed with this server's active
        key of `kind` for the entries the agent is authorized for, or the reason it is not;
        the refusals and the signed tokens are counted."""
        now = self.core.clock()
        authorized = self.core.model.authorized(agent_id, now)
        state = self.core.authorities.state
        active, key_not_after = state.active_key(kind), state.active_key_not_after(kind)
        results = []
        signed_count = 0
        for params in requested:
            entry = authorized.get(params.entry_id)
            if entry is None:
                error = self._unauthorized(kind, params.entry_id, agent_id)
                results.append(result(entry_id=params.entry_id, error=error))
                continue
            try:
                signed = sign(active, key_not_after, entry, params, now)
            except (SigningRefused, NoActiveAuthority) as exc:
                self.core.metrics.signing_refused.labels(kind).inc()
                results.append(result(entry_id=entry.id, error=str(exc)))
                continue
            signed_count += 1
            results.append(
                result(
                    entry_id=entry.id,
                    token=signed.token,
                    issued_at=signed.issued_at,
                    expires_at=signed.expires_at,
                )
            )
        self.core.metrics.svids_signed.labels(kind).inc(signed_count)
        return results

    # --- RPCs -----------------------------------------------------------------------------

    @hide_internal_errors
    async def Attest(self, request_iterator: object, context: Context) -> None:
        with self.core.metrics.rpc(SERVICE, "Attest") as outcome:
            await attest_agent(self.core, request_iterator, context, outcome)

    @hide_internal_errors
    async def RenewAgent(
        self, request: agent_pb2.RenewAgentRequest, context: Context
    ) -> agent_pb2.RenewAgentResponse:
        with self.core.metrics.rpc(SERVICE, "RenewAgent") as outcome:
            agent_id, _, _ = await self._caller(context)
            await self._limit(context, agent_id, "x509", 1)
            try:
                signed = sign_x509_svid(
                    self.core.authorities.state.active_x509(),
                    request.csr,
                    agent_id,
                    self.core.config.agent_svid_ttl,
                    now=self.core.clock(),
                    id_optional=True,
                )
            except SigningRefused as exc:
                outcome[0] = "INVALID_ARGUMENT"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                raise
            except NoActiveAuthority as exc:  # a moment: the agent retries
                outcome[0] = "UNAVAILABLE"
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                raise
            record = self.core.model.agents[agent_id]
            await self.core.save_agent(
                replace(
                    record,
                    new_serial_number=str(signed.serial_number),
                    new_svid_fingerprint=signed.fingerprint,
                    expires_at=signed.expires_at,
                )
            )
            self.core.metrics.svids_signed.labels("agent").inc()
            log.info("agent SVID renewed", agent_id=str(agent_id), serial=signed.serial_number)
            return agent_pb2.RenewAgentResponse(svid_chain=signed.chain_der)

    @hide_internal_errors
    async def Sync(self, request: agent_pb2.SyncRequest, context: Context) -> None:
        agent_id, serial, fingerprint = await self._caller(context)
        core, model = self.core, self.core.model
        history = model.history(agent_id)
        interval = core.config.agent_api.sync_heartbeat_interval.total_seconds()
        interval_ms = round(interval * 1000)
        clock = asyncio.get_running_loop().time
        last_sent = clock()

        async def send(message: agent_pb2.SyncUpdate) -> None:
            # Every message says how often to expect one, so the agent can tell silence
            # (a frozen server, a dropped path) from a quiet stream.
            nonlocal last_sent
            message.heartbeat_interval_ms = interval_ms
            await context.write(message)
            last_sent = clock()

        with model.watch(agent_id) as changed:
            update, view = await self._first_update(agent_id, request)
            history.remember(view)
            for part in update.parts():
                await send(part)
            while True:
                try:  # counted from the last message: changes for others do not reset it
                    await asyncio.wait_for(changed.wait(), last_sent + interval - clock())
                except TimeoutError:  # idle: tell the agent we (and the stream) are alive
                    await send(agent_pb2.SyncUpdate(store_id=model.store_id, heartbeat=True))
                    continue
                changed.clear()
                problem = model.check_agent(agent_id, serial, fingerprint)
                if problem is not None:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem.message)
                maybe, new_view = delta_update(
                    model.store_id,
                    model.revision,
                    view,
                    model.authorized(agent_id, core.clock()).values(),
                    model.bundle_state,
                    core.defaults,
                )
                if maybe is not None:
                    view = new_view
                    history.remember(view)
                    for part in maybe.parts():
                        await send(part)

    async def _first_update(
        self, agent_id: SpiffeId, request: agent_pb2.SyncRequest
    ) -> tuple[PendingUpdate, SentView]:
        """What a new Sync stream starts with: the difference from a view this server sent,
        else from the change log since the agent's revision, else full state."""
        core, model = self.core, self.core.model
        same_store = request.store_id == model.store_id
        previous = model.history(agent_id).find(request.since_revision) if same_store else None
        if previous is not None:
            update, view = delta_update(
                model.store_id,
                model.revision,
                previous,
                model.authorized(agent_id, core.clock()).values(),
                model.bundle_state,
                core.defaults,
            )
            unchanged = agent_pb2.SyncUpdate(store_id=model.store_id, revision=model.revision)
            return update or PendingUpdate(unchanged, (), core.defaults), view
        changed = (
            await self._changed_since(agent_id, request.since_revision) if same_store else None
        )
        if changed is not None:
            log.info(
                "sync resumed from the change log",
                agent_id=str(agent_id),
                since_revision=request.since_revision,
                changed=len(changed),
            )
            return log_resume_update(
                model.store_id,
                model.revision,
                changed,
                model.authorized(agent_id, core.clock()),
                model.bundle_state,
                core.defaults,
            )
        return full_update(
            model.store_id,
            model.revision,
            model.authorized(agent_id, core.clock()).values(),
            model.bundle_state,
            core.defaults,
        )

    async def _changed_since(self, agent_id: SpiffeId, revision: int) -> frozenset[str] | None:
        """`log_resumable` over the change log after `revision`, up to the model's revision;
        None when the log was pruned past it, or the model is not exactly there."""
        model = self.core.model
        if not 0 < revision <= model.revision:
            return None
        try:
            events = await self.core.blocking(self.core.store.events_since, revision)
        except RevisionPruned:
            return None
        reached = events[-1].revision if events else revision
        if model.revision > reached:  # the model moved past what we read: be safe
            return None
        return log_resumable(
            [e for e in events if e.revision <= model.revision], agent_id, model.index
        )

    @hide_internal_errors
    async def BatchNewX509SVID(
        self, request: agent_pb2.BatchNewX509SVIDRequest, context: Context
    ) -> agent_pb2.BatchNewX509SVIDResponse:
        with self.core.metrics.rpc(SERVICE, "BatchNewX509SVID"):
            agent_id, _, _ = await self._caller(context)
            await self._limit(context, agent_id, "x509", max(1, len(request.params)))
            authorized = self.core.model.authorized(agent_id, self.core.clock())
            results: list[agent_pb2.X509SVIDResult | None] = []
            requests: list[SignRequest] = []
            for params in request.params:
                entry = authorized.get(params.entry_id)
                if entry is None:
                    error = self._unauthorized("x509", params.entry_id, agent_id)
                    results.append(agent_pb2.X509SVIDResult(entry_id=params.entry_id, error=error))
                    continue
                ttl = self.core.defaults.x509(entry.x509_svid_ttl).total_seconds()
                requests.append(SignRequest(params.csr, str(entry.spiffe_id), ttl, entry.dns_names))
                results.append(None)  # filled in below, in request order
            try:
                outcomes = iter(
                    await self.core.signer.sign(
                        self.core.authorities.state.active_x509(), requests, self.core.clock()
                    )
                )
            except NoActiveAuthority as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            final = []
            for params, result in zip(request.params, results, strict=True):
                if result is None:
                    result = _x509_result(params.entry_id, next(outcomes))
                    if result.error:
                        self.core.metrics.signing_refused.labels("x509").inc()
                final.append(result)
            signed_count = sum(1 for r in final if not r.error)
            self.core.metrics.svids_signed.labels("x509").inc(signed_count)
            return agent_pb2.BatchNewX509SVIDResponse(results=final)

    @hide_internal_errors
    async def BatchNewJWTSVID(
        self, request: agent_pb2.BatchNewJWTSVIDRequest, context: Context
    ) -> agent_pb2.BatchNewJWTSVIDResponse:
        with self.core.metrics.rpc(SERVICE, "BatchNewJWTSVID") as outcome:
            agent_id, _, _ = await self._caller(context)
            limits = self.core.config.audience_limits
            for params in request.params:
                try:
                    limits.check(params.audience)
                except InvalidAudience as exc:
                    outcome[0] = "INVALID_ARGUMENT"
                    refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    return agent_pb2.BatchNewJWTSVIDResponse()
            await self._limit(context, agent_id, "jwt", max(1, len(request.params)))
            results = self._sign_tokens(
                "jwt",
                agent_id,
                request.params,
                agent_pb2.JWTSVIDResult,
                lambda active, key_not_after, entry, params, now: sign_jwt(
                    active,
                    key_not_after,
                    entry.spiffe_id,
                    list(params.audience),
                    self.core.defaults.jwt(entry.jwt_svid_ttl),
                    now,
                    limits,
                    self.core.config.jwt_issuer,
                ),
            )
            return agent_pb2.BatchNewJWTSVIDResponse(results=results)

    @hide_internal_errors
    async def BatchNewWITSVID(
        self, request: agent_pb2.BatchNewWITSVIDRequest, context: Context
    ) -> agent_pb2.BatchNewWITSVIDResponse:
        """WIT-SVIDs for the agent's public keys: each entry must be authorized for the agent,
        and each key is checked and re-encoded before it is bound (`sign_wit`)."""
        with self.core.metrics.rpc(SERVICE, "BatchNewWITSVID"):
            agent_id, _, _ = await self._caller(context)
            await self._limit(context, agent_id, "wit", max(1, len(request.params)))
            results = self._sign_tokens(
                "wit",
                agent_id,
                request.params,
                agent_pb2.WITSVIDResult,
                lambda active, key_not_after, entry, params, now: sign_wit(
                    active,
                    key_not_after,
                    entry.spiffe_id,
                    params.public_jwk,
                    self.core.defaults.wit(entry.wit_svid_ttl),
                    now,
                ),
            )
            return agent_pb2.BatchNewWITSVIDResponse(results=results)
