"""One classification of the server's status codes for every agent loop (attestation, renewal,
signing, Sync)."""

from __future__ import annotations

import grpc
import pytest

from insignia.agent.identity.server_answers import Answer, classify, refuses_identity

C = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "answer", "identity"),
    [
        (C.UNAVAILABLE, Answer.TRANSIENT, False),
        (C.RESOURCE_EXHAUSTED, Answer.TRANSIENT, False),
        (C.DEADLINE_EXCEEDED, Answer.TRANSIENT, False),
        (C.CANCELLED, Answer.TRANSIENT, False),
        (C.PERMISSION_DENIED, Answer.REFUSED, True),
        (C.UNAUTHENTICATED, Answer.REFUSED, True),
        (C.INVALID_ARGUMENT, Answer.REFUSED, False),
        (C.FAILED_PRECONDITION, Answer.REFUSED, False),
        (C.INTERNAL, Answer.UNEXPECTED, False),
        (C.UNKNOWN, Answer.UNEXPECTED, False),
    ],
)
def test_each_code_has_one_meaning(code: grpc.StatusCode, answer: Answer, identity: bool) -> None:
    assert classify(code) is answer
    assert refuses_identity(code) is identity


def test_an_identity_refusal_is_never_retried() -> None:
    for code in grpc.StatusCode:
        if refuses_identity(code):
            assert classify(code) is Answer.REFUSED
