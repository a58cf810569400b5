"""Retry policy of Workload API watches: which failures a watch retries."""

from __future__ import annotations

import grpc

from insignia.workloadapi import is_retryable


def test_only_a_malformed_request_is_permanent() -> None:
    assert not is_retryable(grpc.StatusCode.INVALID_ARGUMENT)
    for code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.CANCELLED,
        None,
    ):
        assert is_retryable(code)
