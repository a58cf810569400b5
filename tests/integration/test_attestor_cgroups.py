"""Container and systemd attestors against processes placed in real cgroups.

Each case makes the cgroup a runtime would make (v1 `pids` hierarchy, the v2 unified
hierarchy, or systemd's named hierarchy), moves a live process into it, attests it, and
removes what it created. The layouts share top-level names (`/docker`, `/kubepods`), so they
run one after another inside one test rather than as parallel parametrized cases.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest

from insignia.attestors.interface import AttestationError
from insignia.attestors.workload.container import ContainerAttestor, ContainerConfig
from insignia.attestors.workload.systemd import SystemdAttestor, SystemdConfig
from insignia.daemon.peercred.credentials import PeerCredentials
from tests.unit.attestors.processes import sleeper

CGROUP = Path("/sys/fs/cgroup")
HIERARCHIES = {"v1": CGROUP / "pids", "v2": CGROUP / "unified", "systemd": CGROUP / "systemd"}


def _writable(root: Path) -> bool:
    return os.access(root / "cgroup.procs", os.W_OK)


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(_writable(p) for p in HIERARCHIES.values()),
        reason="needs root and writable v1 pids, v2 unified and name=systemd hierarchies",
    ),
]


@contextmanager
def placed_in(pid: int, hierarchy: str, path: str) -> Iterator[None]:
    """Move `pid` into cgroup `path` of `hierarchy`, creating it; undo both afterwards."""
    root = HIERARCHIES[hierarchy]
    created: list[Path] = []
    current = root
    for part in path.strip("/").split("/"):
        current = current / part
        try:
            current.mkdir()
            created.append(current)
        except FileExistsError:
            pass
    (current / "cgroup.procs").write_text(str(pid))
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            (root / "cgroup.procs").write_text(str(pid))
        for directory in reversed(created):
            try:
                directory.rmdir()
            except OSError as exc:  # a parallel test still uses a shared parent
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise


def new_id() -> str:
    return secrets.token_hex(32)


def pod_uid(sep: str) -> str:
    raw = secrets.token_hex(16)
    return sep.join([raw[:8], raw[8:12], raw[12:16], raw[16:20], raw[20:]])


async def attest_in(caller: PeerCredentials, *placements: tuple[str, str]) -> set[str]:
    with ExitStack() as stack:
        for hierarchy, path in placements:
            stack.enter_context(placed_in(caller.pid, hierarchy, path))
        selectors = await ContainerAttestor(ContainerConfig()).attest(caller)
    return {str(s) for s in selectors}


async def test_container_layouts_of_each_runtime_in_real_cgroups() -> None:
    with sleeper() as (_, caller):
        cid = new_id()
        assert await attest_in(caller, ("v1", f"/docker/{cid}")) == {f"container:id:{cid}"}

        cid = new_id()
        assert await attest_in(caller, ("v2", f"/system.slice/docker-{cid}.scope")) == {
            f"container:id:{cid}"
        }

        cid = new_id()
        assert await attest_in(caller, ("v1", f"/libpod_parent/libpod-{cid}")) == {
            f"container:id:{cid}"
        }

        cid = new_id()
        assert await attest_in(caller, ("v2", f"/machine.slice/libpod-{cid}.scope/container")) == {
            f"container:id:{cid}"
        }

        cid, uid = new_id(), pod_uid("-")
        assert await attest_in(caller, ("v1", f"/kubepods/burstable/pod{uid}/crio-{cid}")) == {
            f"container:id:{cid}",
            f"k8s:pod-uid:{uid}",
            f"k8s:container-id:{cid}",
        }

        cid, uid = new_id(), pod_uid("_")
        kube = (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/"
            f"cri-containerd-{cid}.scope"
        )
        dashed = uid.replace("_", "-")
        assert await attest_in(caller, ("v2", kube), ("v1", kube)) == {
            f"container:id:{cid}",
            f"k8s:pod-uid:{dashed}",
            f"k8s:container-id:{cid}",
        }


async def test_a_host_process_and_a_self_made_lookalike_are_not_containers() -> None:
    with sleeper() as (_, caller):
        assert await attest_in(caller) == set()
        fake = f"/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{new_id()}.scope"
        assert await attest_in(caller, ("v2", fake)) == set()


async def test_hierarchies_that_disagree_give_no_identity() -> None:
    with sleeper() as (_, caller):
        a, b = new_id(), new_id()
        with pytest.raises(AttestationError, match="cgroup hierarchies disagree"):
            await attest_in(caller, ("v1", f"/docker/{a}"), ("v2", f"/docker/{b}"))


async def test_systemd_unit_and_fragment_from_the_named_hierarchy(tmp_path: Path) -> None:
    unit = f"insignia-test-{secrets.token_hex(4)}.service"
    unit_dir = tmp_path / "system"
    unit_dir.mkdir()
    (unit_dir / unit).write_text("[Service]\nExecStart=/usr/bin/sleep 300\n")
    attestor = SystemdAttestor(SystemdConfig(unit_dirs=(str(unit_dir),)))
    with sleeper() as (_, caller):
        assert await attestor.attest(caller) == []
        with placed_in(caller.pid, "systemd", f"/system.slice/{unit}"):
            selectors = {str(s) for s in await attestor.attest(caller)}
        # A Delegate=yes unit's own sub-cgroups cannot rename the unit.
        with placed_in(caller.pid, "systemd", f"/system.slice/{unit}/sshd.service"):
            delegated = {str(s) for s in await attestor.attest(caller)}
    assert selectors == {f"systemd:id:{unit}", f"systemd:fragment_path:{unit_dir / unit}"}
    assert delegated == selectors
