import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2 as d
from google.rpc import status_pb2

from insignia.agent.workloadapi.sds_protocol import DeltaStream, SotwStream, WrongType
from insignia.agent.workloadapi.sds_secrets import SECRET_TYPE_URL


def secret(name: str, body: bytes = b"x") -> secret_pb2.Secret:
    return secret_pb2.Secret(name=name, validation_context={"trusted_ca": {"inline_bytes": body}})


def sotw(
    names: list[str], nonce: str = "", version: str = "", error: str = ""
) -> d.DiscoveryRequest:
    request = d.DiscoveryRequest(
        resource_names=names, response_nonce=nonce, version_info=version, type_url=SECRET_TYPE_URL
    )
    if error:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def test_sotw_answers_the_first_request_and_stays_quiet_on_its_ack():
    stream = SotwStream()
    assert stream.respond([secret("default")]) is None  # nothing asked yet
    stream.hear(sotw(["default"]))
    first = stream.respond([secret("default")])
    assert first is not None and first.version_info == "1" and first.nonce
    assert first.type_url == SECRET_TYPE_URL and len(first.resources) == 1
    assert not stream.hear(sotw(["default"], first.nonce, "1")).stale
    assert stream.respond([secret("default")]) is None


def test_sotw_pushes_new_content_and_new_names_with_a_new_version_and_nonce():
    stream = SotwStream()
    stream.hear(sotw(["default"]))
    first = stream.respond([secret("default", b"a")])
    assert first is not None
    rotated = stream.respond([secret("default", b"b")])
    assert rotated is not None and rotated.version_info == "2" and rotated.nonce != first.nonce
    stream.hear(sotw(["default", "ROOTCA"], rotated.nonce, "2"))
    more = stream.respond([secret("default", b"b"), secret("ROOTCA")])
    assert more is not None and len(more.resources) == 2


def test_sotw_ignores_a_stale_nonce():
    stream = SotwStream()
    stream.hear(sotw(["default"]))
    stream.respond([secret("default", b"a")])
    stream.respond([secret("default", b"b")])  # nonce 2 is the last one sent
    heard = stream.hear(sotw(["other"], "1", "1"))
    assert heard.stale and stream.names == ("default",)


def test_a_nack_is_reported_and_the_rejected_secrets_are_not_sent_again():
    stream = SotwStream()
    stream.hear(sotw(["default"]))
    sent = stream.respond([secret("default", b"bad")])
    assert sent is not None
    heard = stream.hear(sotw(["default"], sent.nonce, "", error="bad key"))
    assert heard.nack == "bad key" and not heard.stale
    assert stream.respond([secret("default", b"bad")]) is None  # no loop
    fixed = stream.respond([secret("default", b"good")])
    assert fixed is not None and fixed.version_info == "2"


def test_an_answer_with_nothing_in_it_still_goes_out_for_unknown_names():
    stream = SotwStream()
    stream.hear(sotw(["spiffe://example.org/not-mine"]))
    response = stream.respond([])
    assert response is not None and list(response.resources) == []


@pytest.mark.parametrize("stream", [SotwStream(), DeltaStream()])
def test_another_resource_type_is_refused(stream):
    request = (d.DiscoveryRequest if isinstance(stream, SotwStream) else d.DeltaDiscoveryRequest)(
        type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"
    )
    with pytest.raises(WrongType, match="serves only"):
        stream.hear(request)


def delta(subscribe=(), unsubscribe=(), nonce="", initial=None, error=""):
    request = d.DeltaDiscoveryRequest(
        type_url=SECRET_TYPE_URL,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if error:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def test_delta_sends_only_what_changed_and_names_what_went():
    stream = DeltaStream()
    assert stream.requested is None
    stream.hear(delta(["default", "ROOTCA"]))
    assert stream.requested == ("ROOTCA", "default")
    first = stream.respond([secret("default", b"a"), secret("ROOTCA")])
    assert first is not None and {r.name for r in first.resources} == {"default", "ROOTCA"}
    stream.hear(delta(nonce=first.nonce))
    assert stream.respond([secret("default", b"a"), secret("ROOTCA")]) is None
    rotated = stream.respond([secret("default", b"b"), secret("ROOTCA")])
    assert rotated is not None and [r.name for r in rotated.resources] == ["default"]
    gone = stream.respond([secret("default", b"b")])
    assert gone is not None and list(gone.removed_resources) == ["ROOTCA"]


def test_delta_starts_from_the_versions_the_client_already_holds():
    held = DeltaStream()
    held.hear(delta(["default"]))
    version = held.respond([secret("default")]).resources[0].version
    stream = DeltaStream()
    stream.hear(delta(["default"], initial={"default": version}))
    response = stream.respond([secret("default")])
    assert response is not None and list(response.resources) == []  # answered, nothing resent


def test_delta_wildcard_unsubscribe_and_nack():
    stream = DeltaStream()
    stream.hear(delta())
    assert stream.wildcard and stream.requested == ()
    sent = stream.respond([secret("default")])
    heard = stream.hear(delta(nonce=sent.nonce, error="rejected"))
    assert heard.nack == "rejected"
    assert stream.respond([secret("default")]) is None
    stream.hear(delta(["x"], nonce="stale"))
    assert stream.names == {"x"}
    stream.hear(delta(unsubscribe=["*", "x"]))
    assert not stream.wildcard and stream.requested is None  # subscribed to nothing
