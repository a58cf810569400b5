"""Envoy's SDS on the Workload API socket, loaded on its first call.

The SDS handlers need Envoy's generated messages (xds-protos), about 7 MB of the agent's RSS,
and many nodes run no Envoy: so the agent registers this small handler, which imports
`sds.py` and builds the real one when the first SDS call arrives (that call waits for the
import, once). The `[sds]` names live here too, so loading the config imports no Envoy code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    _Handler = grpc.GenericRpcHandler[Any, Any]
else:  # grpcio's class is not subscriptable at runtime
    _Handler = grpc.GenericRpcHandler

SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"


@dataclass(frozen=True, slots=True)
class SdsNames:
    """The `[sds]` section's resource names (SPIRE's defaults)."""

    default_svid_name: str = "default"
    default_bundle_name: str = "ROOTCA"
    default_all_bundles_name: str = "ALL"
    disable_spiffe_cert_validation: bool = False


class SdsOnFirstCall(_Handler):
    """Answers nothing but SDS methods; builds the SDS handler with `load` the first time."""

    def __init__(self, load: Callable[[], grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._load = load
        self._handler: grpc.GenericRpcHandler[Any, Any] | None = None

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if not handler_call_details.method.startswith(f"/{SDS_SERVICE}/"):
            return None
        if self._handler is None:
            self._handler = self._load()
        return self._handler.service(handler_call_details)
