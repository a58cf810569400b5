"""What the server's gRPC status codes mean to the agent: one classification for every loop.

Node attestation, agent SVID renewal, SVID signing and the Sync stream all ask the same two
questions of a failed call: may a retry succeed, and did the server refuse this agent's
identity? The answers live here once, so the loops cannot drift apart.
"""

from __future__ import annotations

import enum
from typing import Final

import grpc


class Answer(enum.Enum):
    TRANSIENT = "transient"  # away, busy or slow: retry with backoff
    REFUSED = "refused"  # no retry can change it: wrong evidence, a used token, an unknown attestor
    UNEXPECTED = "unexpected"  # neither: a bug on one side; the loop's caller decides


_TRANSIENT: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
# The server does not accept the credentials the call carried: on the agent's mTLS channel,
# an evicted (or unknown) agent; during attestation, evidence it rejects.
_IDENTITY_REFUSALS: Final = frozenset(
    {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
)
_REFUSED: Final = _IDENTITY_REFUSALS | {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
}


def classify(code: grpc.StatusCode) -> Answer:
    if code in _TRANSIENT:
        return Answer.TRANSIENT
    if code in _REFUSED:
        return Answer.REFUSED
    return Answer.UNEXPECTED


def refuses_identity(code: grpc.StatusCode) -> bool:
    """Whether the server refused the caller's credentials (evicted, unknown, bad evidence)."""
    return code in _IDENTITY_REFUSALS
