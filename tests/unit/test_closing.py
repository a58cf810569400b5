"""The `with` mixin closes on the way out, also when the block raises."""

from __future__ import annotations

import pytest

from insignia._closing import Closing


class Resource(Closing):
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_with_returns_the_object_and_closes_it() -> None:
    with Resource() as resource:
        assert isinstance(resource, Resource) and resource.closed == 0
    assert resource.closed == 1


def test_an_exception_in_the_block_still_closes_and_propagates() -> None:
    resource = Resource()
    with pytest.raises(RuntimeError, match="boom"), resource:
        raise RuntimeError("boom")
    assert resource.closed == 1


def test_a_subclass_without_close_cannot_be_made() -> None:
    class Leaky(Closing):
        pass

    with pytest.raises(TypeError, match="close"):
        Leaky()  # type: ignore[abstract]
