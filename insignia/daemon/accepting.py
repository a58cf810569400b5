"""Accepting connections when the process runs out of descriptors or kernel memory.

A flood of connections can exhaust file descriptors; accept() then fails with EMFILE and
friends. Raising would take the whole listener down, and retrying at once would spin, so the
listeners pause 100 ms and try again: connections already open finish and free descriptors.
"""

from __future__ import annotations

import errno
from typing import Any

import trio

from insignia.daemon.logs import get_logger

_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PAUSE = 0.1

log = get_logger(__name__)


async def accept_retrying(
    listener: trio.SocketListener, event: str, **context: Any
) -> trio.SocketStream:
    """The next connection; on resource exhaustion, log `event` (with `context`) and retry."""
    while True:
        try:
            return await listener.accept()
        except OSError as exc:
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            log.warning(event, error=str(exc), **context)
            await trio.sleep(_PAUSE)
