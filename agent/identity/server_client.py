"""The agent's gRPC channels to the server: TLS for Attest, mTLS with the agent SVID otherwise.

grpcio checks the server's certificate against the trust bundle and its DNS SAN (through
`grpc.ssl_target_name_override`), so the agent talks only to a server holding an SVID of its
own trust domain. Channels are rebuilt when the agent SVID or the bundle changes; streams
already open on the previous channel run on until they end. Methods are asyncio coroutines
(grpc.aio); trio code calls them through `insignia.daemon.runtime.call_asyncio`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any, Final, TypeVar

import grpc
import grpc.aio
from insignia_proto import agent_pb2
from insignia_proto.agent_pb2_grpc import AgentAPIStub

from insignia.agent.identity.server_answers import refuses_identity
from insignia.agent.identity.targets import Resolver, ServerTarget, expand, system_resolver
from insignia.daemon.keepalive import AGENT_PING_INTERVAL, agent_channel_options
from insignia.daemon.logs import get_logger
from insignia.daemon.server_name import SERVER_TLS_NAME

T = TypeVar("T")
log = get_logger(__name__)

# grpc's own reconnect backoff (1 s growing to 120 s by default) decides when a channel sees a
# returned server, whatever the agent's retry loop does: after a long outage it waited up to
# 27 s. Capped at 1 s, the channel is READY within about a second of the server's return; a
# connection attempt may still take 5 s (a TLS handshake with a busy server).
_RECONNECT: Final = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.min_reconnect_backoff_ms", 5_000),
)


class AgentEvicted(Exception):
    """The server no longer accepts this agent's SVID: evicted or banned in the datastore
    (a server re-reads it before refusing), or the SVID expired."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the server refused this agent's identity: {detail}")
        self.detail = detail


def fetch_server_certificate(host: str, port: int, timeout: float = 10.0) -> bytes:
    """The server's leaf certificate, UNVERIFIED (PEM): only for `insecure_bootstrap`.

    The agent then pins exactly this certificate for its first attestation, so it is at
    least talking to one consistent server; it trusts the bundle that server returns.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the whole point of insecure bootstrap
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_TLS_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ConnectionError(f"{host}:{port} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


class StreamClosed(Exception):
    """The channel under a stream was closed (replaced after an SVID or bundle change)."""


async def next_message(stream: AsyncIterator[T]) -> T | None:
    """The next message of a grpc.aio response stream, or None at its end (asyncio side).

    grpc.aio reports a stream whose channel was closed as CancelledError; unless this task
    itself is being cancelled, that is a closed stream, not a cancellation to propagate.
    """
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise StreamClosed("the channel was closed under the stream") from None


class ServerClient:
    """Channels to the one server the agent is attached to, out of `targets`.

    `fail_over` moves to the next server; every RPC (Sync, renewals, signing) then goes there,
    so the agent talks to one server at a time and its renewals follow its stream.
    """

    def __init__(
        self,
        targets: Sequence[ServerTarget],
        attestation_port: int,
        roots_pem: bytes,
        rpc_timeout: float,
        tls_name: str = SERVER_TLS_NAME,
        ping_interval: timedelta = AGENT_PING_INTERVAL,
        resolve: Resolver = system_resolver,
    ) -> None:
        if not targets:
            raise ValueError("no server to connect to")
        self._configured = tuple(targets)
        self._targets = self._configured
        self._index = 0
        self._resolve = resolve
        self.attestation_port = attestation_port
        self.rpc_timeout = rpc_timeout
        self._tls_name = tls_name
        self._keepalive = agent_channel_options(ping_interval)
        self._roots = roots_pem
        self._identity: tuple[bytes, bytes] | None = None
        # Bumped with every new agent SVID; lets a refusal of an older SVID be told apart.
        self.identity_generation = 0
        self._channel: grpc.aio.Channel | None = None
        self._retired: list[grpc.aio.Channel] = []

    @property
    def target(self) -> ServerTarget:
        """The server this client is attached to."""
        return self._targets[self._index]

    @property
    def attestation_target(self) -> ServerTarget:
        return self.target.with_port(self.attestation_port)

    @property
    def target_count(self) -> int:
        return len(self._targets)

    def resolve_targets(self) -> None:
        """Resolve the configured names again (blocking: run in a thread); starts over at
        the first server of the fresh list."""
        targets, problems = expand(self._configured, self._resolve)
        for problem in problems:
            log.warning("agent.server_name_unresolved", detail=problem)
        self._targets, self._index = targets, 0
        self._retire()

    def fail_over(self) -> bool:
        """Attach to the next server; True when the list has wrapped around (the caller
        then backs off and resolves the names again)."""
        if len(self._targets) > 1:
            self._retire()
        self._index = (self._index + 1) % len(self._targets)
        return self._index == 0

    def _options(self) -> Sequence[tuple[str, Any]]:
        return (("grpc.ssl_target_name_override", self._tls_name), *self._keepalive, *_RECONNECT)

    def set_roots(self, roots_pem: bytes) -> None:
        """Trust a new bundle (after attestation or a bundle change); rebuilds the channel."""
        if roots_pem != self._roots:
            self._roots = roots_pem
            self._retire()

    def set_identity(self, chain_pem: bytes, key_pem: bytes) -> None:
        """Present a new agent SVID from now on."""
        if (chain_pem, key_pem) != self._identity:
            self._identity = (chain_pem, key_pem)
            self.identity_generation += 1
            self._retire()

    def evicted(self, exc: grpc.aio.AioRpcError, generation: int) -> bool:
        """Whether a refusal means this agent is evicted. Once a renewed SVID is in use the
        server refuses the old one, so a call still riding the old SVID (a Sync stream opened
        before the renewal) is refused without the agent being evicted: it just reconnects."""
        return refuses_identity(exc.code()) and generation == self.identity_generation

    def raise_if_evicted(self, exc: grpc.aio.AioRpcError, generation: int) -> None:
        """AgentEvicted from `exc` when it means eviction (`evicted`); the loops' common first
        step on a failed call, before they back off and retry."""
        if self.evicted(exc, generation):
            raise AgentEvicted(exc.details() or exc.code().name) from exc

    def _retire(self) -> None:
        if self._channel is not None:
            self._retired.append(self._channel)
            self._channel = None

    def _mtls_channel(self) -> grpc.aio.Channel:
        if self._identity is None:
            raise RuntimeError("no agent SVID yet: attest first")
        if self._channel is None:
            chain, key = self._identity
            creds = grpc.ssl_channel_credentials(self._roots, key, chain)
            target = str(self.target)
            self._channel = grpc.aio.secure_channel(target, creds, options=self._options())
        return self._channel

    def _stub(self) -> AgentAPIStub[Any, Any, Any, Any, Any]:
        return AgentAPIStub(self._mtls_channel())

    async def back_after_outage(self) -> None:
        """Return once the channel to the server goes from not ready to READY (asyncio side).

        A retry loop races its backoff sleep against this, so it retries as soon as the
        server is back. A channel that is READY throughout never returns: a server that is up
        but failing calls gets the full backoff, not a tight loop.
        """
        channel = self._mtls_channel()
        was_down = False
        while True:
            state = channel.get_state(try_to_connect=True)
            if state is grpc.ChannelConnectivity.READY:
                if was_down:
                    return
            else:
                was_down = True
            await channel.wait_for_state_change(state)

    def attest(
        self,
    ) -> grpc.aio.StreamStreamCall[agent_pb2.AttestRequest, agent_pb2.AttestResponse]:
        """An Attest stream on the attestation port (server TLS only). Close the returned
        channel-owning call with `cancel()`; its one-off channel closes with the client."""
        creds = grpc.ssl_channel_credentials(self._roots)
        target = str(self.attestation_target)
        # No keepalive: the channel is one-off, and the attestation port (open to anyone)
        # keeps gRPC's strict ping policy.
        options = (("grpc.ssl_target_name_override", self._tls_name),)
        channel = grpc.aio.secure_channel(target, options=options, credentials=creds)
        self._retired.append(channel)
        call: grpc.aio.StreamStreamCall[agent_pb2.AttestRequest, agent_pb2.AttestResponse] = (
            AgentAPIStub(channel).Attest(None, timeout=self.rpc_timeout)
        )
        return call

    def sync(
        self, request: agent_pb2.SyncRequest
    ) -> grpc.aio.UnaryStreamCall[agent_pb2.SyncRequest, agent_pb2.SyncUpdate]:
        call: grpc.aio.UnaryStreamCall[agent_pb2.SyncRequest, agent_pb2.SyncUpdate] = (
            self._stub().Sync(request)
        )
        return call

    async def renew_agent(self, csr_der: bytes) -> bytes:
        request = agent_pb2.RenewAgentRequest(csr=csr_der)
        response: agent_pb2.RenewAgentResponse = await self._stub().RenewAgent(
            request, timeout=self.rpc_timeout
        )
        return response.svid_chain

    async def batch_new_x509_svid(
        self, params: Sequence[agent_pb2.X509SVIDParams]
    ) -> Sequence[agent_pb2.X509SVIDResult]:
        request = agent_pb2.BatchNewX509SVIDRequest(params=params)
        response: agent_pb2.BatchNewX509SVIDResponse = await self._stub().BatchNewX509SVID(
            request, timeout=self.rpc_timeout
        )
        return response.results

    async def batch_new_jwt_svid(
        self, params: Sequence[agent_pb2.JWTSVIDParams]
    ) -> Sequence[agent_pb2.JWTSVIDResult]:
        request = agent_pb2.BatchNewJWTSVIDRequest(params=params)
        response: agent_pb2.BatchNewJWTSVIDResponse = await self._stub().BatchNewJWTSVID(
            request, timeout=self.rpc_timeout
        )
        return response.results

    async def batch_new_wit_svid(
        self, params: Sequence[agent_pb2.WITSVIDParams]
    ) -> Sequence[agent_pb2.WITSVIDResult]:
        request = agent_pb2.BatchNewWITSVIDRequest(params=params)
        response: agent_pb2.BatchNewWITSVIDResponse = await self._stub().BatchNewWITSVID(
            request, timeout=self.rpc_timeout
        )
        return response.results

    async def close_retired(self) -> None:
        """Close channels replaced by newer credentials (their streams have moved on)."""
        retired, self._retired = self._retired, []
        for channel in retired:
            await channel.close(grace=1.0)

    async def close(self) -> None:
        self._retire()
        await self.close_retired()
