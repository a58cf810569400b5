"""The all-or-nothing rule of running several workload attestors on one caller.

The attestors here are small plugins written for the test (the plugin interface is the unit
under test), not stand-ins for Insignia components.
"""

from __future__ import annotations

import os
from typing import cast

import pytest
import trio

from devtools.callers import caller_of
from insignia.attestors.interface import AttestationError, WorkloadAttestor
from insignia.attestors.registry import ConfiguredWorkloadAttestor
from insignia.attestors.workload_attestation import attest_workload
from insignia.daemon.peercred.credentials import PeerCredentials
from insignia.selectors import Selector

CALLER = caller_of(os.getpid())


class Fixed:
    def __init__(self, *selectors: str, delay: float = 0.0) -> None:
        self.selectors = [Selector.parse(s) for s in selectors]
        self.delay = delay
        self.cancelled = False

    async def attest(self, caller: PeerCredentials) -> list[Selector]:
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled = True
            raise
        return self.selectors


class Failing:
    async def attest(self, caller: PeerCredentials) -> list[Selector]:
        raise AttestationError("broken", "cannot see the process")


class Crashing:
    async def attest(self, caller: PeerCredentials) -> list[Selector]:
        raise KeyError("missing")


def plugin(
    name: str, attestor: object, types: str = "", optional: bool = False
) -> ConfiguredWorkloadAttestor:
    """`attestor` is `object`: some of these plugins break the protocol on purpose."""
    checked = cast(WorkloadAttestor, attestor)
    return ConfiguredWorkloadAttestor(
        name, checked, frozenset((types or name).split(",")), optional
    )


async def test_selectors_of_all_attestors_are_merged_sorted_and_deduplicated() -> None:
    result = await attest_workload(
        CALLER,
        [
            plugin("unix", Fixed("unix:uid:0", "unix:gid:0")),
            plugin("container", Fixed("container:id:a", "k8s:pod-uid:p"), "container,k8s"),
            plugin("docker", Fixed()),
        ],
        attestor_timeout=5,
    )
    assert [str(s) for s in result] == [
        "container:id:a",
        "k8s:pod-uid:p",
        "unix:gid:0",
        "unix:uid:0",
    ]


async def test_attestors_run_concurrently(autojump_clock: trio.abc.Clock) -> None:
    start = trio.current_time()
    await attest_workload(
        CALLER,
        [plugin("a", Fixed("a:x", delay=3)), plugin("b", Fixed("b:y", delay=3))],
        attestor_timeout=5,
    )
    assert trio.current_time() - start == pytest.approx(3)


async def test_one_required_failure_fails_all_and_cancels_the_rest(
    autojump_clock: trio.abc.Clock,
) -> None:
    slow = Fixed("slow:x", delay=100)
    start = trio.current_time()
    with pytest.raises(AttestationError, match="broken attestor: cannot see the process"):
        await attest_workload(
            CALLER,
            [
                plugin("unix", Fixed("unix:uid:0")),
                plugin("broken", Failing()),
                plugin("slow", slow),
            ],
            attestor_timeout=200,
        )
    assert slow.cancelled
    assert trio.current_time() - start < 1


async def test_optional_failures_are_skipped_and_the_rest_returned() -> None:
    result = await attest_workload(
        CALLER,
        [plugin("unix", Fixed("unix:uid:0")), plugin("broken", Failing(), optional=True)],
        attestor_timeout=5,
    )
    assert result == (Selector("unix", "uid:0"),)


async def test_a_slow_attestor_times_out_as_an_error(autojump_clock: trio.abc.Clock) -> None:
    with pytest.raises(AttestationError, match="slow attestor: no answer within 2s"):
        await attest_workload(
            CALLER,
            [plugin("unix", Fixed("unix:uid:0")), plugin("slow", Fixed("slow:x", delay=60))],
            attestor_timeout=2,
        )


async def test_a_slow_optional_attestor_is_dropped(autojump_clock: trio.abc.Clock) -> None:
    result = await attest_workload(
        CALLER,
        [
            plugin("unix", Fixed("unix:uid:0")),
            plugin("slow", Fixed("slow:x", delay=60), optional=True),
        ],
        attestor_timeout=2,
    )
    assert result == (Selector("unix", "uid:0"),)


async def test_a_crashing_plugin_is_an_attestation_error_not_an_agent_crash() -> None:
    with pytest.raises(AttestationError, match=r"crashy attestor: plugin crashed: KeyError"):
        await attest_workload(CALLER, [plugin("crashy", Crashing())], attestor_timeout=5)


async def test_a_plugin_cannot_emit_another_plugins_selector_types() -> None:
    forger = plugin("thirdparty", Fixed("thirdparty:ok", "unix:uid:0"))
    with pytest.raises(AttestationError, match=r"selector types \['unix'\]"):
        await attest_workload(CALLER, [forger], attestor_timeout=5)


async def test_a_plugin_returning_strings_is_refused() -> None:
    class Sloppy:
        async def attest(self, caller: PeerCredentials) -> list[str]:
            return ["sloppy:x"]

    with pytest.raises(AttestationError, match="other than selectors"):
        await attest_workload(CALLER, [plugin("sloppy", Sloppy())], attestor_timeout=5)
