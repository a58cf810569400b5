"""The gate every Workload API call passes: who is calling, and may they be answered.

An answer is only as good as the proof that the process asking is the one that was attested.
So the gate looks the caller up (kernel credentials recorded by the peer-credentials front),
attests it (a deadline and the connection-holder check included), and confirms afterwards
that the same process still holds the connection unchanged. Attestations are reused for a
moment per connection, so a busy client's back-to-back calls do not each pay for one; the
same-process check runs on every call all the same.

Pure of gRPC I/O: refusals are values (a status code, a message, a metric reason), which the
RPC layer logs and sends.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from insignia.daemon.peercred.credentials import (
    CallerTable,
    PeerCredentials,
    UnknownPeer,
)
from insignia.selectors import Selector

# How long a connection's attestation is reused for its next calls. Short: the cache only
# spares a busy client's back-to-back calls. A connection's entry goes when the connection
# does (CallerTable.on_remove), so there are never more entries than open connections.
RECENT_ATTESTATION_TTL = 1.0


class WorkloadAttestationFailed(Exception):
    """Attestation could not establish the caller's selectors; `reason` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class ConnectionNotOwned(WorkloadAttestationFailed):
    """The caller does not hold its connection alone (insignia.daemon.peercred.holders): refused."""

    def __init__(self, detail: str) -> None:
        super().__init__("connection_not_owned", detail)


class Refused(Exception):
    """The call must not be answered: `code` and `message` go to the client, `reason` to the
    attestation-failure metric (None: not an attestation failure), `event` to the log."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        event: str,
        reason: str | None = None,
        caller: PeerCredentials | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.event = event
        self.reason = reason
        self.caller = caller


@dataclass(frozen=True, slots=True)
class Admitted:
    """A caller allowed through, with its selectors; `fresh` when attested for this call."""

    caller: PeerCredentials
    selectors: frozenset[Selector]
    fresh: bool


AttestCaller = Callable[[PeerCredentials], Awaitable[frozenset[Selector]]]
"""Asyncio side: the caller's selectors, or WorkloadAttestationFailed."""


class WorkloadGate:
    def __init__(
        self,
        callers: CallerTable,
        attest: AttestCaller,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._callers = callers
        self._attest = attest
        self._clock = clock
        self._recent: dict[PeerCredentials, tuple[float, frozenset[Selector]]] = {}
        callers.on_remove(self._forget)

    async def admit(self, peer: str) -> Admitted:
        """The caller behind gRPC peer `peer` and its selectors, or Refused."""
        try:
            caller = self._callers.lookup(peer)
        except UnknownPeer as exc:
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED, str(exc), "workload.unknown_peer"
            ) from None
        now = self._clock()
        cached = self._recent.get(caller)
        if cached is not None and cached[0] > now:
            # Attested moments ago on this connection: only facts that change without an exec
            # or a uid change can be this stale, and the same-process check still runs.
            self.confirm(caller, "since attestation")
            return Admitted(caller, cached[1], fresh=False)
        try:
            selectors = await self._attest(caller)
        except WorkloadAttestationFailed as exc:
            if isinstance(exc, ConnectionNotOwned):
                self.confirm(caller, "during attestation")  # a caller that exec'd is told so
                code = grpc.StatusCode.PERMISSION_DENIED
            else:
                code = grpc.StatusCode.UNAVAILABLE
            raise Refused(
                code,
                f"workload attestation failed: {exc.detail}",
                "workload.attestation_failed",
                exc.reason,
                caller,
            ) from exc
        self.confirm(caller, "during attestation")
        if peer in self._callers:  # not when the connection closed while it was attested
            self._recent[caller] = (now + RECENT_ATTESTATION_TTL, selectors)
        return Admitted(caller, selectors, fresh=True)

    def confirm(self, caller: PeerCredentials, when: str) -> None:
        """Refused (UNAUTHENTICATED) unless the attested process still holds the connection
        unchanged: same pid, start time, uid/gid and executable
        (insignia.daemon.peercred.credentials)."""
        if not caller.still_same_process():
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the calling process exited or was replaced {when}",
                "workload.caller_replaced",
                "process_replaced",
                caller,
            )

    def _forget(self, caller: PeerCredentials) -> None:
        self._recent.pop(caller, None)
