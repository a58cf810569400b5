"""Attest: drive a node attestor's server-side state machine over the bidirectional stream,
then issue the agent's first SVID and record the agent.

The stream carries the plugin's opaque bytes both ways (params, challenges, answers); the
plugin runs in trio (through the bridge) and decides. A refusal answers PERMISSION_DENIED with
the plugin's reason; a banned agent is refused even when its evidence is good.

Everything checkable without the plugin (the CSR, an active CA, a ban on the agent ID the CSR
names) is checked before the plugin runs, because the plugin may consume a single-use join
token. Whatever fails after that (a datastore outage while recording the agent) still costs
the token: the operator issues a new one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from insignia_proto import agent_pb2

from insignia.attestors.interface import AgentAttestation, AttestationError, Challenge
from insignia.daemon.ratelimit import peer_ip
from insignia.server.ca.signing import (
    NoActiveAuthority,
    SigningRefused,
    checked_agent_csr,
    sign_x509_svid,
)
from insignia.server.core import ServerCore, log
from insignia.server.datastore.records import AgentRecord
from insignia.spiffeid import SpiffeId

Context = grpc.aio.ServicerContext[Any, Any]
MAX_CHALLENGES = 8


async def _next(requests: AsyncIterator[agent_pb2.AttestRequest]) -> agent_pb2.AttestRequest | None:
    try:
        return await requests.__anext__()
    except StopAsyncIteration:
        return None


async def attest_agent(
    core: ServerCore, request_iterator: Any, context: Context, outcome: list[str]
) -> None:
    """The whole attestation, bounded: the port is unauthenticated, so a peer that stalls (or
    answers challenges slowly) is cut off after `agent_api.attestation_timeout`, and at most
    `agent_api.max_concurrent_attestations` run at once."""
    api = core.config.agent_api
    if core.attestations_in_flight >= api.max_concurrent_attestations:
        outcome[0] = "RESOURCE_EXHAUSTED"
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{core.attestations_in_flight} concurrent attestations in progress "
            f"(max_concurrent_attestations); retry shortly",
        )
    timeout = api.attestation_timeout.total_seconds()
    core.attestations_in_flight += 1
    try:
        async with asyncio.timeout(timeout):
            await _attest(core, request_iterator, context, outcome)
    except TimeoutError:
        outcome[0] = "DEADLINE_EXCEEDED"
        log.warning("attestation timed out", peer=peer_ip(context.peer()), timeout=timeout)
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"attestation did not finish within {timeout:g}s"
        )
    finally:
        core.attestations_in_flight -= 1


async def _attest(
    core: ServerCore, request_iterator: Any, context: Context, outcome: list[str]
) -> None:
    ip = peer_ip(context.peer())
    if not core.attestation_limiter.try_acquire(ip, time.monotonic()):
        outcome[0] = "RESOURCE_EXHAUSTED"
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"attestation rate limit for {ip} exceeded; retry in "
            f"{core.attestation_limiter.retry_after(ip):.2f}s",
        )
    requests: AsyncIterator[agent_pb2.AttestRequest] = request_iterator.__aiter__()
    first = await _next(requests)
    if first is None or first.WhichOneof("step") != "params":
        outcome[0] = "INVALID_ARGUMENT"
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be params")
    params = first.params
    server = core.attestors.get(params.attestor)
    if server is None:
        outcome[0] = "INVALID_ARGUMENT"
        configured = ", ".join(sorted(core.attestors)) or "none"
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"node attestor {params.attestor!r} is not configured (configured: {configured})",
        )
    await _before_attestor(core, context, params, outcome)
    assert core.bridge is not None
    session = server.session()
    try:
        step = await core.bridge.call_trio(session.begin, params.payload)
        for _ in range(MAX_CHALLENGES):
            if not isinstance(step, Challenge):
                break
            await context.write(agent_pb2.AttestResponse(challenge=step.data))
            answer = await _next(requests)
            if answer is None or answer.WhichOneof("step") != "challenge_response":
                raise AttestationError(params.attestor, "expected a challenge_response")
            step = await core.bridge.call_trio(session.answer, answer.challenge_response)
        if not isinstance(step, AgentAttestation):
            raise AttestationError(params.attestor, f"more than {MAX_CHALLENGES} challenges")
    except AttestationError as exc:
        core.metrics.attestations_failed.labels(params.attestor).inc()
        log.warning("attestation refused", attestor=params.attestor, peer=ip, reason=exc.reason)
        outcome[0] = "PERMISSION_DENIED"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"attestation failed: {exc}")
    await _issue(core, context, params, step, outcome)


async def _before_attestor(
    core: ServerCore, context: Context, params: agent_pb2.AttestParams, outcome: list[str]
) -> None:
    """Refuse what can be refused before the attestor runs: it may use up something that
    cannot be given back (a join token is consumed by `begin`)."""
    try:
        named = checked_agent_csr(params.csr, core.trust_domain)
    except SigningRefused as exc:
        outcome[0] = "INVALID_ARGUMENT"
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if core.authorities.state.active_x509() is None:
        outcome[0] = "UNAVAILABLE"
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(NoActiveAuthority("X.509")))
    if named is not None:
        await _refuse_if_banned(core, context, params, named, outcome)


async def _refuse_if_banned(
    core: ServerCore,
    context: Context,
    params: agent_pb2.AttestParams,
    agent_id: SpiffeId,
    outcome: list[str],
) -> None:
    existing = await core.blocking(core.store.find_agent, agent_id)
    if existing is not None and existing.banned:
        core.metrics.attestations_failed.labels(params.attestor).inc()
        log.warning("banned agent tried to attest", agent_id=str(agent_id))
        outcome[0] = "PERMISSION_DENIED"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"agent {agent_id} is banned")


async def _issue(
    core: ServerCore,
    context: Context,
    params: agent_pb2.AttestParams,
    attestation: AgentAttestation,
    outcome: list[str],
) -> None:
    agent_id = attestation.agent_id
    if not agent_id.member_of(core.trust_domain):
        outcome[0] = "PERMISSION_DENIED"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{agent_id}: wrong trust domain")
    await _refuse_if_banned(core, context, params, agent_id, outcome)
    try:
        signed = sign_x509_svid(
            core.authorities.state.active_x509(),
            params.csr,
            agent_id,
            core.config.agent_svid_ttl,
            now=core.clock(),
            id_optional=True,
        )
    except (SigningRefused, NoActiveAuthority) as exc:
        outcome[0] = "INVALID_ARGUMENT"
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    await core.save_agent(
        AgentRecord(
            spiffe_id=agent_id,
            attestation_type=params.attestor,
            serial_number=str(signed.serial_number),
            svid_fingerprint=signed.fingerprint,
            expires_at=signed.expires_at,
            selectors=attestation.selectors,
            can_reattest=attestation.can_reattest,
        )
    )
    core.metrics.agents_attested.labels(params.attestor).inc()
    core.metrics.svids_signed.labels("agent").inc()
    log.info("agent attested", agent_id=str(agent_id), attestor=params.attestor)
    await context.write(
        agent_pb2.AttestResponse(
            result=agent_pb2.AttestResult(
                agent_id=str(agent_id),
                svid_chain=signed.chain_der,
                bundle=core.model.bundle_state.spiffe_bundle,
                reattestable=attestation.can_reattest,
            )
        )
    )
