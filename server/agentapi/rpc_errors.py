"""What an agent API caller learns when the server itself fails: a status code, never our text.

An unhandled exception in a grpc.aio handler reaches the client as UNKNOWN with the exception's
class and message, which can hold SQL, paths or library internals, and Attest is reachable by
anyone who can open a TLS connection. So handlers are wrapped: a datastore outage becomes
UNAVAILABLE (the agent retries), anything else INTERNAL, both with a fixed message; the detail
goes to the server log only. Deliberate refusals (`context.abort`) pass through untouched.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import grpc
import grpc.aio

from insignia.daemon.logs import get_logger
from insignia.server.datastore.errors import DatastoreUnavailable

S = TypeVar("S")
R = TypeVar("R")
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]
log = get_logger("insignia.server")

DATASTORE_UNAVAILABLE: Final = "the server's datastore is unavailable; retry later"
INTERNAL_ERROR: Final = "internal server error (details are in the server log)"


def hide_internal_errors(
    handler: Callable[[S, R, Context], Awaitable[T]],
) -> Callable[[S, R, Context], Awaitable[T]]:
    """Wrap an RPC method: aborts pass through; failures become generic UNAVAILABLE/INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: S, request: R, context: Context) -> T:
        try:
            return await handler(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except DatastoreUnavailable as exc:
            log.error("datastore unavailable", rpc=handler.__name__, error=str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, DATASTORE_UNAVAILABLE)
        except Exception:
            log.exception("internal error", rpc=handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)

    return wrapper
