"""sd_notify(3) without libsystemd: tell systemd a Type=notify daemon is ready or stopping.

The protocol is one datagram of newline-separated `KEY=value` lines sent to the AF_UNIX socket
named by $NOTIFY_SOCKET: a filesystem path, or an abstract name written with a leading '@'.
Both daemons call this, so the address rules live in one place.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class InvalidNotifySocket(ValueError):
    """$NOTIFY_SOCKET holds an address this module cannot send to."""

    def __init__(self, address: str) -> None:
        super().__init__(
            f"NOTIFY_SOCKET {address!r} is not a unix socket address: expected an absolute "
            "path or an abstract name starting with '@'"
        )
        self.address = address


def notify_address(value: str) -> str:
    """The socket address for a $NOTIFY_SOCKET value: '@name' becomes the abstract '\\0name'."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise InvalidNotifySocket(value)


def sd_notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. "READY=1") to systemd; False (and nothing sent) when not under it."""
    value = environ.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = notify_address(value)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(state.encode(), address)
    return True
