"""Workload attestor `container`: container and Kubernetes pod identity from the cgroup path.

Only cgroup paths that a container runtime or the kubelet creates count, and they are matched
from the root of the hierarchy. That anchoring is the security property: a process cannot
choose its cgroup path above its own (delegated) subtree, so `/system.slice/docker-<id>.scope`
at the root was made by the runtime, while the same name under
`/user.slice/.../user@1000.service/` could be a user's own creation and is not believed.

Layouts recognised (v1 lines and the v2 `0::` line alike):

- docker, cgroupfs driver            `/docker/<id>`
- systemd driver (docker, containerd/nerdctl, cri-o, podman) `/system.slice/<rt>-<id>.scope`
- podman  `/machine.slice/libpod-<id>.scope` (systemd), `/libpod_parent/libpod-<id>` (cgroupfs)
- kubelet, cgroupfs driver           `/kubepods[/burstable|/besteffort]/pod<uid>/<id>`
  (container segment bare, `crio-<id>` or `<rt>-<id>.scope`)
- kubelet, systemd driver            `/kubepods.slice/kubepods-<qos>.slice/
  kubepods-<qos>-pod<uid_with_underscores>.slice/<rt>-<id>.scope`, and containerd's literal
  `...pod<uid>.slice:cri-containerd:<id>` when its cgroup driver is misconfigured

Leading `/..` segments (the agent runs in its own cgroup namespace, so the path starts at a
common ancestor) are skipped, and then a runtime's scope is also accepted without its slice.
Anything below the container segment is inside the container and ignored, unless
`trust_nested_containers` is set: then a runtime layout found inside the container (kind,
docker-in-docker) is believed too, which trusts the outer container's processes with
identity, so it is off by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
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

NAME: Final = "container"

_ID = r"(?P<cid>[0-9a-f]{64})"
_POD = (
    r"pod(?P<pod>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
    r"|[0-9a-f]{32})"
)
_QOS = r"(?:besteffort|burstable)"
_RUNTIMES = r"(?:docker|crio|cri-containerd|containerd|libpod|nerdctl)"
# Container segment below a pod: bare id (cgroupfs), crio-<id> (cri-o on cgroupfs) or
# <runtime>-<id>.scope (systemd driver); containerd's literal form is ':cri-containerd:<id>'.
_IN_POD = rf"(?:/(?:{_RUNTIMES}-)?|:(?:cri-containerd|crio|docker):){_ID}(?:\.scope)?"

_LAYOUTS: Final = tuple(
    re.compile(pattern)
    for pattern in (
        rf"/docker/{_ID}",
        rf"/system\.slice/{_RUNTIMES}-{_ID}\.scope",
        rf"/machine\.slice/libpod-{_ID}\.scope",
        rf"/libpod_parent/libpod-{_ID}",
        rf"(?:/kubepods){{0,2}}(?:/{_QOS})?/{_POD}{_IN_POD}",
        rf"(?:/kubepods\.slice)?(?:/kubepods-{_QOS}\.slice)?/kubepods(?:-{_QOS})?-{_POD}\.slice"
        + _IN_POD,
    )
)

# Past leading '/..' the root is unknown, so a runtime's scope may appear without its slice.
_RELATIVE_LAYOUTS: Final = (*_LAYOUTS, re.compile(rf"/{_RUNTIMES}-{_ID}\.scope"))


class ConflictingCgroups(ValueError):
    """Cgroup hierarchies that place one process in different containers."""

    def __init__(self, found: Iterable[ContainerInfo]) -> None:
        ids = ", ".join(sorted(str(info) for info in found))
        super().__init__(f"cgroup hierarchies disagree about the container: {ids}")


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """The innermost believed container, and the Kubernetes pod container if any."""

    container_id: str
    pod_uid: str | None = None
    pod_container_id: str | None = None

    def __str__(self) -> str:
        pod = f" (pod {self.pod_uid}, container {self.pod_container_id})" if self.pod_uid else ""
        return self.container_id + pod


def _match_one(path: str, layouts: tuple[re.Pattern[str], ...]) -> tuple[re.Match[str], str] | None:
    for layout in layouts:
        found = layout.match(path)
        if found is None:
            continue
        rest = path[found.end() :]
        if rest and not rest.startswith("/"):
            continue  # matched part of a longer segment name
        return found, rest
    return None


def match_cgroup_path(path: str, trust_nested: bool = False) -> ContainerInfo | None:
    """The container a cgroup path belongs to, or None for a path no runtime made."""
    layouts = _LAYOUTS
    while path.startswith("/../"):
        path = path[3:]
        layouts = _RELATIVE_LAYOUTS
    info: ContainerInfo | None = None
    while (step := _match_one(path, layouts)) is not None:
        found, path = step
        cid = found["cid"]
        pod = found.groupdict().get("pod")
        if pod:
            info = ContainerInfo(cid, pod.replace("_", "-"), cid)
        elif info is not None:
            info = ContainerInfo(cid, info.pod_uid, info.pod_container_id)
        else:
            info = ContainerInfo(cid)
        if not trust_nested:
            break
        layouts = _LAYOUTS
    return info


def container_from_cgroups(
    entries: Iterable[CgroupEntry], trust_nested: bool = False
) -> ContainerInfo | None:
    """One container for the whole cgroup file, None if none, ConflictingCgroups if several.

    On hybrid hosts the v1 and v2 lines can name different things (kind: the v2 line shows
    the node container, the v1 lines the pod). A line that places the process in a pod is
    more specific, so when any line does, only those lines are compared.
    """
    found = {info for e in entries if (info := match_cgroup_path(e.path, trust_nested))}
    in_pods = {info for info in found if info.pod_uid}
    candidates = in_pods or found
    if len(candidates) > 1:
        raise ConflictingCgroups(candidates)
    return next(iter(candidates), None)


def container_selectors(info: ContainerInfo) -> list[Selector]:
    selectors = [Selector("container", f"id:{info.container_id}")]
    if info.pod_uid and info.pod_container_id:
        selectors.append(Selector("k8s", f"pod-uid:{info.pod_uid}"))
        selectors.append(Selector("k8s", f"container-id:{info.pod_container_id}"))
    return selectors


def container_from_text(
    plugin: str, pid: int, text: str, trust_nested: bool
) -> ContainerInfo | None:
    """`container_from_cgroups` over a cgroup file's text; problems become AttestationError."""
    try:
        return container_from_cgroups(parse_cgroup_file(text), trust_nested)
    except (MalformedCgroup, ConflictingCgroups) as exc:
        raise AttestationError(plugin, f"pid {pid}: {exc}") from exc


def read_container(
    plugin: str, caller: PeerCredentials, trust_nested: bool
) -> ContainerInfo | None:
    """The caller's container from its own /proc/<pid>/cgroup (blocking: run in a thread)."""
    with open_proc(plugin, caller) as proc:
        text = proc.read_text("cgroup")
    return container_from_text(plugin, caller.pid, text, trust_nested)


class ContainerConfig(PluginConfig, frozen=True, kw_only=True):
    trust_nested_containers: bool = False


class ContainerAttestor:
    def __init__(self, config: ContainerConfig) -> None:
        self._trust_nested = config.trust_nested_containers

    async def attest(self, caller: PeerCredentials) -> list[Selector]:
        info = await trio.to_thread.run_sync(
            read_container, NAME, caller, self._trust_nested, abandon_on_cancel=True
        )
        return container_selectors(info) if info else []


PLUGIN: Final = WorkloadAttestorPlugin(
    config_model=ContainerConfig,
    selector_types=frozenset({"container", "k8s"}),
    create=ContainerAttestor,
    selector_keys={"container": frozenset({"id"}), "k8s": frozenset({"pod-uid", "container-id"})},
)
