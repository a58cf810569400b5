"""When to try the Workload API again, and what not to retry.

A workload usually starts before its agent is ready, or before an operator registers its
entry, and outlives agent restarts. So a watcher keeps retrying with the shared backoff
policy (insignia.backoff) and stops only on a refusal that no retry can fix.
"""

from __future__ import annotations

import grpc

from insignia.backoff import Backoff

# A missing security header or malformed request: the agent will refuse it again forever.
# Everything else (UNAVAILABLE while the agent restarts, PERMISSION_DENIED "no identity
# issued" until an entry exists, UNAUTHENTICATED, a stream that ended, an undecodable
# answer from a half-upgraded agent) may heal, as in go-spiffe's watcher.
PERMANENT_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT})

DEFAULT_BACKOFF = Backoff()


def is_retryable(code: grpc.StatusCode | None) -> bool:
    """Whether a watch that failed with `code` (None: undecodable answer) should try again."""
    return code not in PERMANENT_CODES
