"""Attesting one caller with every configured workload attestor at once.

All-or-nothing is the rule: selectors are matched as a subset, so a partial set (say, unix
without container) could match a broader entry than the full set would and hand out the wrong
identity. Any required attestor that fails, times out, crashes or emits a selector type it did
not declare makes the whole attestation fail; only attestors configured `optional` may be
skipped, and their failures are logged.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from insignia.attestors.interface import AttestationError
from insignia.attestors.registry import ConfiguredWorkloadAttestor
from insignia.daemon.logs import get_logger
from insignia.daemon.peercred.credentials import PeerCredentials
from insignia.selectors import Selector, canonical

_log = get_logger(__name__)


def _checked(plugin: ConfiguredWorkloadAttestor, selectors: object) -> list[Selector]:
    if not isinstance(selectors, list | tuple) or not all(
        isinstance(s, Selector) for s in selectors
    ):
        raise AttestationError(plugin.name, "plugin returned something other than selectors")
    foreign = sorted({s.type for s in selectors} - plugin.selector_types)
    if foreign:
        raise AttestationError(
            plugin.name,
            f"plugin emitted selector types {foreign}; it may only emit "
            f"{sorted(plugin.selector_types)}",
        )
    return list(selectors)


async def _attest_one(
    plugin: ConfiguredWorkloadAttestor, caller: PeerCredentials, attestor_timeout: float
) -> list[Selector]:
    """One attestor's selectors, with every way it can fail turned into AttestationError."""
    with trio.move_on_after(attestor_timeout) as scope:
        try:
            return _checked(plugin, await plugin.attestor.attest(caller))
        except AttestationError:
            raise
        except Exception as exc:  # a plugin bug must not take the agent down
            raise AttestationError(plugin.name, f"plugin crashed: {exc!r}") from exc
    assert scope.cancelled_caught
    raise AttestationError(plugin.name, f"no answer within {attestor_timeout:g}s")


async def attest_workload(
    caller: PeerCredentials,
    attestors: Sequence[ConfiguredWorkloadAttestor],
    attestor_timeout: float,
) -> tuple[Selector, ...]:
    """The caller's selectors from all `attestors`, run concurrently, each within
    `attestor_timeout` seconds.

    Raises the first required attestor's AttestationError (the others are cancelled then).
    """
    found: list[Selector] = []
    failures: list[AttestationError] = []

    async def run(plugin: ConfiguredWorkloadAttestor, cancel: trio.CancelScope) -> None:
        try:
            found.extend(await _attest_one(plugin, caller, attestor_timeout))
        except AttestationError as exc:
            if plugin.optional:
                _log.warning("optional workload attestor skipped", pid=caller.pid, error=str(exc))
                return
            failures.append(exc)
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        for plugin in attestors:
            nursery.start_soon(run, plugin, nursery.cancel_scope)
    if failures:
        _log.info("workload attestation failed", pid=caller.pid, error=str(failures[0]))
        raise failures[0]
    return canonical(found)
