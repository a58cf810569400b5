"""Attest: drive a node attestor's server-side state machine over the bidirectional stream,
then issue the agent's first SVID and record the agent.

The stream carries the plugin's opaque bytes both ways (params, challenges, answers); the
plugin runs in trio (through the bridge) and decides. A refusal answers PERMISSION_DENIED with
the plugin's reason; a banned agent is refused even when its evidence is good.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from insignia_proto import agent_pb2

from attestors.interface import AgentAttestation, AttestationError, Challenge
from server.core import ServerCore, log
from server.datastore.records import AgentRecord
from server.ratelimit import peer_ip
from server.signing import NoActiveAuthority, SigningRefused, sign_x509_svid

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
    existing = await core.blocking(core.store.find_agent, agent_id)
    if existing is not None and existing.banned:
        core.metrics.attestations_failed.labels(params.attestor).inc()
        log.warning("banned agent tried to attest", agent_id=str(agent_id))
        outcome[0] = "PERMISSION_DENIED"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"agent {agent_id} is banned")
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
