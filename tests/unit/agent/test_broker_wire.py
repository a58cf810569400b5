"""The Broker API's messages are the Workload API's, field for field: the Broker API serves
a workload's views re-read as their broker twins (insignia.agent.workloadapi.broker)."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from insignia_proto import brokerapi_pb2 as broker
from insignia_proto import workload_pb2 as workload

from insignia.agent.workloadapi.broker import BadReference, as_broker, reference_pid


def _shape(descriptor: Descriptor) -> list[tuple[int, str, int, bool, object]]:
    """Every field's number, name, type and repetition; message fields by their own shape."""
    return [
        (
            f.number,
            f.name,
            f.type,
            f.is_repeated,
            None if f.message_type is None else _shape(f.message_type),
        )
        for f in sorted(descriptor.fields, key=lambda f: f.number)
    ]


TWINS: list[tuple[type[Message], type[Message]]] = [
    (workload.X509SVIDResponse, broker.SubscribeToX509SVIDResponse),
    (workload.X509SVID, broker.X509SVID),
    (workload.X509BundlesResponse, broker.SubscribeToX509BundlesResponse),
    (workload.JWTBundlesResponse, broker.SubscribeToJWTBundlesResponse),
    (workload.JWTSVID, broker.JWTSVID),
]


@pytest.mark.parametrize(("ours", "theirs"), TWINS)
def test_twins_have_the_same_fields(ours: type[Message], theirs: type[Message]) -> None:
    assert _shape(ours.DESCRIPTOR) == _shape(theirs.DESCRIPTOR)


def test_a_view_reads_back_as_its_twin() -> None:
    view = workload.X509SVIDResponse(
        svids=[workload.X509SVID(spiffe_id="spiffe://example.org/a", x509_svid=b"c", hint="h")],
        federated_bundles={"spiffe://other.org": b"b"},
    )
    twin = as_broker(view, broker.SubscribeToX509SVIDResponse)
    assert twin.svids[0].spiffe_id == "spiffe://example.org/a"
    assert twin.svids[0].hint == "h"
    assert dict(twin.federated_bundles) == {"spiffe://other.org": b"b"}


def _request(reference: Message | None) -> broker.SubscribeToX509SVIDRequest:
    request = broker.SubscribeToX509SVIDRequest()
    if reference is not None:
        request.reference.reference.Pack(reference)
    return request


def test_pid_reference_is_read() -> None:
    assert reference_pid(_request(broker.WorkloadPIDReference(pid=42))) == 42


@pytest.mark.parametrize(
    ("request_", "cause"),
    [
        (broker.SubscribeToX509SVIDRequest(), "no workload reference"),
        (_request(broker.WorkloadPIDReference(pid=0)), "positive integer"),
        (_request(broker.WorkloadPIDReference(pid=-3)), "positive integer"),
        (
            _request(broker.KubernetesObjectReference(uid="a1b2")),
            "spiffe.broker.KubernetesObjectReference' is not supported",
        ),
    ],
)
def test_bad_references_are_refused(
    request_: broker.SubscribeToX509SVIDRequest, cause: str
) -> None:
    with pytest.raises(BadReference, match=cause):
        reference_pid(request_)
