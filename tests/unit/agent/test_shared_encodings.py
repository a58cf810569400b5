"""One encoding per identity set and cache generation, rebuilt when stale; errors not kept."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from insignia_proto import workload_pb2 as pb

from insignia.agent.workloadapi.shared import SharedEncodings
from insignia.selectors import Selector
from insignia.workload_wire import serialize_stream_message
from tests.unit.common import NOW

A = frozenset({Selector.parse("unix:uid:1")})
B = frozenset({Selector.parse("unix:uid:2")})


class Builder:
    def __init__(self) -> None:
        self.calls: list[frozenset[Selector]] = []
        self.stale_at: datetime | None = None
        self.fail = False

    def __call__(
        self, selectors: frozenset[Selector], now: datetime
    ) -> tuple[pb.X509SVIDResponse, datetime | None]:
        self.calls.append(selectors)
        if self.fail:
            raise LookupError("no identity")
        svid = pb.X509SVID(spiffe_id=f"spiffe://example.org/{len(self.calls)}")
        return pb.X509SVIDResponse(svids=[svid]), self.stale_at


def test_streams_with_one_identity_set_share_one_encoding() -> None:
    build = Builder()
    shared = SharedEncodings(build, lambda m: len(m.svids))  # type: ignore[attr-defined]
    first, _ = shared.get(A, NOW, 1)
    again, _ = shared.get(A, NOW, 1)
    assert first is again and build.calls == [A]
    assert first is not None and first.count == 1
    assert pb.X509SVIDResponse.FromString(first.data).svids[0].spiffe_id.endswith("/1")
    assert serialize_stream_message(first) == first.data  # the wire sends these bytes
    shared.get(B, NOW, 1)
    shared.get(A, NOW, 2)  # a change: built again
    assert build.calls == [A, B, A]


def test_a_stale_encoding_is_built_again() -> None:
    build = Builder()
    build.stale_at = NOW + timedelta(seconds=5)
    shared = SharedEncodings(build)
    shared.get(A, NOW, 1)
    shared.get(A, NOW + timedelta(seconds=4), 1)
    assert len(build.calls) == 1
    shared.get(A, NOW + timedelta(seconds=5), 1)
    assert len(build.calls) == 2


def test_a_failed_build_is_not_kept() -> None:
    build = Builder()
    build.fail = True
    shared = SharedEncodings(build)
    for _ in range(2):
        with pytest.raises(LookupError):
            shared.get(A, NOW, 1)
    assert len(build.calls) == 2
