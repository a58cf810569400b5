"""Workload attestor `systemd`: the systemd unit a process runs in, without D-Bus.

systemd names cgroups after units: `/system.slice/nginx.service`,
`/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope`. The unit of a process is
the first non-slice segment from the root, the way systemd itself resolves it
(`cg_path_get_unit`): deeper segments live inside the unit's cgroup, which a unit with
`Delegate=yes` controls, so a process there could name them anything (even `sshd.service`).

The hierarchy read is `name=systemd` on v1/hybrid hosts, else the v2 `0::` line. The fragment
path is found by looking the unit up in systemd's unit directories in precedence order (first
hit wins, templates `foo@bar.service` fall back to `foo@.service`). It reflects the files on
disk, which match what systemd loaded unless a `daemon-reload` is pending.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Final

import trio

from insignia.attestors.cgroup import CgroupEntry, MalformedCgroup, parse_cgroup_file
from insignia.attestors.interface import (
    AttestationError,
    PluginConfig,
    WorkloadAttestorPlugin,
)
from insignia.attestors.procfs import open_proc
from insignia.daemon.peercred.credentials import PeerCredentials
from insignia.selectors import Selector

NAME: Final = "systemd"

#: systemd's unit search path for the system manager, highest precedence first.
DEFAULT_UNIT_DIRS: Final = (
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    "/run/systemd/transient",
    "/run/systemd/generator.early",
    "/etc/systemd/system",
    "/etc/systemd/system.attached",
    "/run/systemd/system",
    "/run/systemd/system.attached",
    "/run/systemd/generator",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/run/systemd/generator.late",
)

_UNIT_TYPES = "service|scope|socket|mount|swap|automount|timer|path|target|device"
_UNIT_NAME = re.compile(rf"[A-Za-z0-9:_.\\@-]+\.(?:{_UNIT_TYPES})")
_TEMPLATE_INSTANCE = re.compile(r"(?P<prefix>[^@]+@)[^@]*(?P<suffix>\.[a-z]+)")


def systemd_cgroup_path(entries: Sequence[CgroupEntry]) -> str | None:
    """The path in the hierarchy systemd manages: `name=systemd` if mounted, else v2."""
    for entry in entries:
        if "name=systemd" in entry.controllers:
            return entry.path
    for entry in entries:
        if entry.unified:
            return entry.path
    return None


def unit_from_cgroup_path(path: str) -> str | None:
    """The unit owning `path`, or None (the root cgroup, a foreign cgroup namespace)."""
    for segment in path.split("/")[1:]:
        if segment == "..":
            return None  # relative to another cgroup namespace: the root is unknown
        if segment.endswith(".slice"):
            continue
        return segment if _UNIT_NAME.fullmatch(segment) else None
    return None


def fragment_path(unit: str, unit_dirs: Sequence[str]) -> str | None:
    """The unit file systemd would load for `unit`, or None if none exists (transient)."""
    names = [unit]
    if template := _TEMPLATE_INSTANCE.fullmatch(unit):
        names.append(template["prefix"] + template["suffix"])
    for name in names:
        for directory in unit_dirs:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                return candidate
    return None


class SystemdConfig(PluginConfig, frozen=True, kw_only=True):
    unit_dirs: tuple[str, ...] = DEFAULT_UNIT_DIRS


class SystemdAttestor:
    def __init__(self, config: SystemdConfig) -> None:
        self._unit_dirs = config.unit_dirs

    async def attest(self, caller: PeerCredentials) -> list[Selector]:
        return await trio.to_thread.run_sync(self.attest_sync, caller, abandon_on_cancel=True)

    def attest_sync(self, caller: PeerCredentials) -> list[Selector]:
        with open_proc(NAME, caller) as proc:
            text = proc.read_text("cgroup")
        try:
            path = systemd_cgroup_path(parse_cgroup_file(text))
        except MalformedCgroup as exc:
            raise AttestationError(NAME, f"pid {caller.pid}: {exc}") from exc
        unit = unit_from_cgroup_path(path) if path else None
        if unit is None:
            return []
        selectors = [Selector(NAME, f"id:{unit}")]
        if fragment := fragment_path(unit, self._unit_dirs):
            selectors.append(Selector(NAME, f"fragment_path:{fragment}"))
        return selectors


PLUGIN: Final = WorkloadAttestorPlugin(
    config_model=SystemdConfig,
    selector_types=frozenset({NAME}),
    create=SystemdAttestor,
    selector_keys={NAME: frozenset({"id", "fragment_path"})},
)
