"""Workload API endpoint addresses: `SPIFFE_ENDPOINT_SOCKET` values and gRPC targets.

The SPIFFE Workload Endpoint spec names the socket with a URI; `unix:///path` and `unix:/path`
both mean the Unix socket at `/path`. Only Unix sockets are supported: the caller's identity
comes from the kernel's peer credentials, which a TCP endpoint cannot provide.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

ENDPOINT_ENV: Final = "SPIFFE_ENDPOINT_SOCKET"


class InvalidEndpoint(ValueError):
    def __init__(self, value: str, reason: str) -> None:
        super().__init__(
            f"invalid Workload API endpoint {value!r}: {reason}; "
            "expected unix:///absolute/path, unix:/absolute/path or /absolute/path"
        )
        self.value = value
        self.reason = reason


def parse_endpoint(value: str) -> Path:
    """The socket path named by an endpoint address (a bare absolute path is accepted too)."""
    if value.startswith("unix://"):
        rest = value.removeprefix("unix://")
        if not rest.startswith("/"):
            raise InvalidEndpoint(value, "unix:// must be followed by an absolute path (no host)")
        path = rest
    elif value.startswith("unix:"):
        path = value.removeprefix("unix:")
    elif "://" in value or value.startswith(("tcp:", "http:")):
        raise InvalidEndpoint(value, "only unix sockets are supported")
    else:
        path = value
    if not path.startswith("/"):
        raise InvalidEndpoint(value, "the socket path must be absolute")
    if any(ch in path for ch in "?#"):
        raise InvalidEndpoint(value, "query and fragment are not allowed")
    return Path(path)


def endpoint_from_env(default: Path | None = None) -> Path:
    """The socket from `SPIFFE_ENDPOINT_SOCKET`, else `default`; InvalidEndpoint when neither."""
    value = os.environ.get(ENDPOINT_ENV, "")
    if value:
        return parse_endpoint(value)
    if default is None:
        raise InvalidEndpoint("", f"{ENDPOINT_ENV} is not set and no socket path was given")
    return default


def grpc_target(socket_path: Path) -> str:
    """The grpcio target string for a Unix socket path."""
    return f"unix:{socket_path}"
