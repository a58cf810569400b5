"""Keep gRPC C-core's own log lines out of the daemons' structured log.

grpcio's C-core logs through absl straight to file descriptor 2, in its own text format, and
grpcio offers no hook to receive those records in Python (the old `grpc_set_log_function`
bridge is gone), so they cannot be routed into structlog. What is possible: C-core reads
`GRPC_VERBOSITY` once, when `grpc` is first imported, and below ERROR its lines are the noise
of normal retries (a stale bootstrap bundle printed an INFO "Handshake failed" line for every
attempt: 53 of 69 lines in 10 s). So the daemons' packages default it to ERROR before anything
imports grpc, and the agent recognises the conditions that matter (a server certificate that
does not chain to its trust bundle) from the RPC errors and logs them itself, once, in JSON.
An operator who sets GRPC_VERBOSITY (or GRPC_TRACE) gets what they asked for.
"""

from __future__ import annotations

import os
import sys

DEFAULT_VERBOSITY = "ERROR"


def quiet_grpc_core() -> None:
    """Default GRPC_VERBOSITY to ERROR; effective only before `grpc` is imported."""
    if "grpc" not in sys.modules:
        os.environ.setdefault("GRPC_VERBOSITY", DEFAULT_VERBOSITY)
