"""Acting on behalf of another workload: who may, for whom, and the audit line of every call.

Two APIs let a trusted caller fetch identities for other workloads: SPIRE's Delegated Identity
API (on the admin socket) and the SPIFFE Broker API (on its own socket). Both are one more
front end on the Workload API's core: the caller passes the same gate (kernel credentials,
attestation, same-process check) and is let through only when one of the SPIFFE IDs its own
selectors entitle it to is on that API's allow-list. A workload named by pid is pinned and
attested by the agent itself (the pid is only the caller's word): a pidfd first, then the same
attestors as a Workload API caller, and every later send checks that the pidfd still names
that very process. What is served then comes from the same cache, views and stream loop.

Every call leaves one structured line per outcome (`delegation.audit`): the API, the method,
the caller (pid, uid, SPIFFE ID), the target (pid or selectors) and the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import grpc
import grpc.aio

from insignia._clock import utc_now
from insignia.agent.cache.store import Cache
from insignia.agent.workloadapi.gate import AttestCaller, WorkloadAttestationFailed
from insignia.agent.workloadapi.rpcs import Context, WorkloadApi
from insignia.daemon.logs import get_logger
from insignia.daemon.peercred.credentials import (
    PeerCredentials,
    ProcessGone,
    process_credentials,
)
from insignia.selectors import Selector
from insignia.spiffeid import SpiffeId

log = get_logger(__name__)

NOT_AUTHORIZED = "caller is not authorized"


def allowed_identity(
    cache: Cache, selectors: frozenset[Selector], now: datetime, allowed: frozenset[SpiffeId]
) -> SpiffeId | None:
    """The first SPIFFE ID the caller's selectors entitle it to that is on `allowed`; None
    when none is (no identity at all included)."""
    for entry in cache.entitled(selectors, now.timestamp()):
        if entry.spiffe_id in allowed:
            return entry.spiffe_id
    return None


def describe_selectors(selectors: Iterable[Selector]) -> str:
    return ",".join(sorted(str(s) for s in selectors))


@dataclass
class Audit:
    """What one call's audit lines say; filled in as the call learns who and whom."""

    api: str
    method: str
    caller_pid: int | None = None
    caller_uid: int | None = None
    caller_id: str | None = None
    target: str | None = None

    def line(self, outcome: str, **extra: object) -> None:
        log.info(
            "delegation.audit",
            api=self.api,
            method=self.method,
            caller_pid=self.caller_pid,
            caller_uid=self.caller_uid,
            caller_id=self.caller_id,
            target=self.target,
            outcome=outcome,
            **extra,
        )


@dataclass(frozen=True, slots=True)
class Referenced:
    """A workload named by pid, as the agent itself found and attested it."""

    process: PeerCredentials
    selectors: frozenset[Selector]


class OnBehalf:
    """The shared core of the Delegated Identity and Broker APIs (one instance per API)."""

    def __init__(
        self,
        api_name: str,
        role: str,
        api: WorkloadApi,
        cache: Cache,
        attest: AttestCaller,
        allowed: frozenset[SpiffeId],
    ) -> None:
        self.api_name = api_name
        self._role = role  # what its callers are called: "delegate", "broker"
        self.api = api
        self.cache = cache
        self._attest = attest
        self._allowed = allowed

    def now(self) -> datetime:
        return utc_now(None)

    @contextlib.asynccontextmanager
    async def audited(self, context: Context, method: str) -> AsyncIterator[Audit]:
        """One audit line when the call ends, with its status (OK, or the abort's code)."""
        audit = Audit(self.api_name, method)
        try:
            yield audit
        except grpc.aio.AbortError:
            code = context.code()
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            audit.line(name.lower(), error=context.details())
            raise
        except asyncio.CancelledError:  # the caller went away, or the agent is stopping
            audit.line("cancelled")
            raise
        except Exception as exc:
            audit.line("failed", error=repr(exc))
            raise
        audit.line("ok")

    async def authorize(
        self, context: Context, audit: Audit
    ) -> tuple[PeerCredentials, frozenset[Selector]]:
        """The caller, attested by the Workload API's gate and found on the allow-list, or the
        call aborted (PERMISSION_DENIED when its identities are not listed)."""
        caller, selectors = await self.api.authenticate(context, audit.method, header=False)
        audit.caller_pid, audit.caller_uid = caller.pid, caller.uid
        spiffe_id = allowed_identity(self.cache, selectors, self.now(), self._allowed)
        if spiffe_id is None:
            entries = self.cache.entitled(selectors, self.now().timestamp())
            ids = sorted(str(e.spiffe_id) for e in entries)
            audit.caller_id = ",".join(ids) or None
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{NOT_AUTHORIZED}: none of its SPIFFE IDs is an authorized {self._role}",
            )
        audit.caller_id = str(spiffe_id)
        return caller, selectors

    @contextlib.asynccontextmanager
    async def referenced(
        self, context: Context, audit: Audit, pid: int
    ) -> AsyncIterator[Referenced]:
        """The process `pid` names, pinned by a pidfd and attested, for the length of the
        block; NOT_FOUND when there is none, INVALID_ARGUMENT for a pid that cannot be one."""
        audit.target = f"pid:{pid}"
        if pid <= 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"pid must be a positive integer, not {pid}"
            )
        try:
            process = process_credentials(pid)
        except ProcessGone as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"workload not found: {exc}")
        try:
            try:
                selectors = await self._attest(process)
            except WorkloadAttestationFailed as exc:
                if exc.reason == "process_gone" or not process.is_alive():
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"workload not found: {exc}")
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, f"workload attestation failed: {exc.detail}"
                )
            await self.confirm(context, process)
            yield Referenced(process, selectors)
        finally:
            process.pidfd.close()

    def confirmer(
        self, context: Context, process: PeerCredentials
    ) -> Callable[[], Awaitable[None]]:
        """`serve_stream`'s check for a referenced workload: NOT_FOUND once it has gone."""
        return functools.partial(self.confirm, context, process)

    async def confirm(self, context: Context, process: PeerCredentials) -> None:
        """NOT_FOUND unless the pidfd still names the process that was attested."""
        if not process.still_same_process():
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"workload not found: process {process.pid} exited or was replaced",
            )
