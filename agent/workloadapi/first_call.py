"""A gRPC handler built when its first call arrives.

Some services on the Workload API socket need large generated modules (Envoy's xds-protos,
about 7 MB of RSS) that most nodes never use: SDS, and reflection, which describes SDS. The
agent registers this stand-in, which answers nothing but its services' methods and imports
and builds the real handlers on the first such call (that call waits for the import, once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    _Handler = grpc.GenericRpcHandler[Any, Any]
else:  # grpcio's class is not subscriptable at runtime
    _Handler = grpc.GenericRpcHandler


class LoadedOnFirstCall(_Handler):
    """Answers the methods of `services` only, from the handlers `load` builds the first time."""

    def __init__(self, services: Sequence[str], load: Callable[[], Sequence[_Handler]]) -> None:
        self._prefixes = tuple(f"/{service}/" for service in services)
        self._load = load
        self._handlers: Sequence[_Handler] | None = None

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if not handler_call_details.method.startswith(self._prefixes):
            return None
        if self._handlers is None:
            self._handlers = self._load()
        for handler in self._handlers:
            found = handler.service(handler_call_details)
            if found is not None:
                return found
        return None
