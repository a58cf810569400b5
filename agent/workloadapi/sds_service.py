"""Envoy's SDS on the Workload API socket, loaded on its first call.

The SDS handlers need Envoy's generated messages (xds-protos), about 7 MB of the agent's RSS,
and many nodes run no Envoy: so the agent registers a `LoadedOnFirstCall` handler
(agent/workloadapi/first_call.py), which imports `sds.py` and builds the real one when the
first SDS call arrives (that call waits for the import, once). The `[sds]` names live here
too, so loading the config imports no Envoy code.
"""

from __future__ import annotations

from dataclasses import dataclass

SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"


@dataclass(frozen=True, slots=True)
class SdsNames:
    """The `[sds]` section's resource names (SPIRE's defaults)."""

    default_svid_name: str = "default"
    default_bundle_name: str = "ROOTCA"
    default_all_bundles_name: str = "ALL"
    disable_spiffe_cert_validation: bool = False
