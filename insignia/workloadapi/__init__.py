"""SPIFFE Workload API client SDK: a blocking client, a trio client with reconnecting
watches, and X.509 sources that keep a workload's SVID and bundles current.

    from insignia.workloadapi import open_x509_source   # trio
    from insignia.workloadapi import ThreadedX509Source # threads / blocking code
    from insignia.workloadapi import ThreadedWitSource  # WIT-SVIDs and their keys
"""

from insignia.backoff import Backoff
from insignia.workloadapi._address import (
    InvalidEndpoint,
    endpoint_from_env,
    grpc_target,
    parse_endpoint,
)
from insignia.workloadapi._backoff import DEFAULT_BACKOFF, is_retryable
from insignia.workloadapi._client import (
    JwtSvidToken,
    WorkloadApiClient,
    WorkloadApiError,
    X509Context,
    x509_context_from_response,
)
from insignia.workloadapi._source import (
    SourceNotReady,
    SvidPicker,
    ThreadedX509Source,
    WorkloadX509Source,
    merge_bundles,
    open_x509_source,
)
from insignia.workloadapi._trio_client import TrioWorkloadApiClient, resolve_socket
from insignia.workloadapi._wit_source import ThreadedWitSource

__all__ = [
    "DEFAULT_BACKOFF",
    "Backoff",
    "InvalidEndpoint",
    "JwtSvidToken",
    "SourceNotReady",
    "SvidPicker",
    "ThreadedWitSource",
    "ThreadedX509Source",
    "TrioWorkloadApiClient",
    "WorkloadApiClient",
    "WorkloadApiError",
    "WorkloadX509Source",
    "X509Context",
    "endpoint_from_env",
    "grpc_target",
    "is_retryable",
    "merge_bundles",
    "open_x509_source",
    "parse_endpoint",
    "resolve_socket",
    "x509_context_from_response",
]
