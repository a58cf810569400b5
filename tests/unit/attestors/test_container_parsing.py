"""Cgroup lines as each runtime writes them (SPIRE's fixtures, runtime docs, and this machine's
podman), and what the container attestor believes about them."""

from __future__ import annotations

import pytest

from insignia.attestors.cgroup import parse_cgroup_file
from insignia.attestors.interface import AttestationError
from insignia.attestors.workload.container import (
    ConflictingCgroups,
    ContainerInfo,
    container_from_cgroups,
    container_from_text,
    container_selectors,
    match_cgroup_path,
)
from insignia.selectors import Selector

A = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
B = "09bc3d7ade839efec32b6bec4ec79d099027a668ddba043083ec21d3c3b8f1e6"
NODE = "93529524695bb00d91c1f6dba692ea8d3550c3b94fb2463af7bc9ec82f992d26"
POD = "2c48913c-b29f-11e7-9350-020968147796"
POD_ = POD.replace("-", "_")

# (runtime/layout, cgroup line, expected container id, expected pod uid)
TABLE: list[tuple[str, str, str | None, str | None]] = [
    ("docker cgroupfs v1", f"12:pids:/docker/{A}", A, None),
    ("docker cgroupfs v2", f"0::/docker/{A}", A, None),
    ("docker systemd v2", f"0::/system.slice/docker-{A}.scope", A, None),
    ("docker systemd v1", f"1:name=systemd:/system.slice/docker-{A}.scope", A, None),
    ("nerdctl systemd v2", f"0::/system.slice/nerdctl-{A}.scope", A, None),
    ("podman cgroupfs (seen here)", f"10:hugetlb:/libpod_parent/libpod-{A}", A, None),
    ("podman systemd v2", f"0::/machine.slice/libpod-{A}.scope/container", A, None),
    ("podman conmon cgroupfs", "10:hugetlb:/libpod_parent/conmon", None, None),
    ("podman conmon systemd", f"0::/machine.slice/libpod-conmon-{A}.scope", None, None),
    ("kubepods cgroupfs no QoS", f"4:memory:/kubepods/pod{POD}/{A}", A, POD),
    ("kubepods cgroupfs burstable", f"4:memory:/kubepods/burstable/pod{POD}/{A}", A, POD),
    ("kubepods cgroupfs besteffort", f"0::/kubepods/besteffort/pod{POD}/{A}", A, POD),
    ("docker desktop kubepods", f"4:cpu:/kubepods/kubepods/besteffort/pod{POD}/{A}", A, POD),
    ("kubepods cgroupfs pod uid with underscores", f"0::/kubepods/pod{POD_}/{A}", A, POD),
    ("cri-o cgroupfs", f"0::/kubepods/burstable/pod{POD}/crio-{A}", A, POD),
    (
        "containerd CRI systemd v2",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
        f"cri-containerd-{A}.scope",
        A,
        POD,
    ),
    (
        "docker shim systemd v1",
        f"5:blkio:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD}.slice/"
        f"docker-{A}.scope",
        A,
        POD,
    ),
    (
        "cri-o systemd v1 (minikube)",
        "9:devices:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod561fd272_d131"
        "_47ef_a01b_46a997a778f3.slice/crio-030ded69d4c98fcf69c988f75a5eb3a1b4357e1432bd5510c936a"
        "40d7e9a1198.scope",
        "030ded69d4c98fcf69c988f75a5eb3a1b4357e1432bd5510c936a40d7e9a1198",
        "561fd272-d131-47ef-a01b-46a997a778f3",
    ),
    (
        "guaranteed QoS systemd v2",
        f"0::/kubepods.slice/kubepods-pod{POD_}.slice/cri-containerd-{A}.scope",
        A,
        POD,
    ),
    (
        "containerd literal systemd path on cgroupfs",
        f"3:pids:/kubepods-besteffort-pod{POD_}.slice:cri-containerd:{A}",
        A,
        POD,
    ),
    (
        "agent in its own cgroup namespace",
        f"0::/../../../burstable/pod{POD}/{A}",
        A,
        POD,
    ),
    ("cri-o, agent in a cgroup namespace (kubeedge)", f"0::/../crio-{A}.scope", A, None),
    (
        "static pod uid without dashes",
        f"0::/kubepods/burstable/pod2732ca68f6358eba7703fb6f82a25c94/{A}",
        A,
        "2732ca68f6358eba7703fb6f82a25c94",
    ),
    # Not containers: hosts, services, and names a user could have made in a delegated tree.
    ("root", "0::/", None, None),
    ("host service", "0::/system.slice/docker.service", None, None),
    ("init", "0::/init.scope", None, None),
    (
        "user-delegated scope mimicking docker",
        f"0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{A}.scope",
        None,
        None,
    ),
    ("pod without container", f"0::/kubepods/pod{POD}", None, None),
    ("kubepods without pod", f"0::/kubepods/{A}", None, None),
    ("id too short", f"0::/docker/{A[:-1]}", None, None),
    ("id inside a longer segment", f"0::/docker/{A}x", None, None),
    ("uppercase id", f"0::/docker/{A.upper()}", None, None),
    ("runtime scope without slice at the real root", f"0::/crio-{A}.scope", None, None),
]


@pytest.mark.parametrize(
    ("line", "container_id", "pod_uid"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_cgroup_lines_of_each_runtime(
    line: str, container_id: str | None, pod_uid: str | None
) -> None:
    found = container_from_cgroups(parse_cgroup_file(line))
    if container_id is None:
        assert found is None
        return
    assert found == ContainerInfo(container_id, pod_uid, container_id if pod_uid else None)


def test_a_processes_own_subtree_cannot_rename_its_container() -> None:
    # Inside its container a process may create cgroups; only the runtime's level counts.
    path = f"/docker/{A}/docker/{B}"
    assert match_cgroup_path(path) == ContainerInfo(A)
    path = f"/system.slice/docker-{A}.scope/kubepods/pod{POD}/{B}"
    assert match_cgroup_path(path) == ContainerInfo(A)


# SPIRE's fixture for a pod in kind: kubelet runs inside a docker container (the kind node).
KIND = "\n".join(
    [
        f"13:name=systemd:/docker/{NODE}/kubepods/besteffort/pod{POD}/{B}",
        f"12:pids:/docker/{NODE}/kubepods/besteffort/pod{POD}/{B}",
        f"4:blkio:/docker/{NODE}/kubepods/besteffort/pod{POD}/{B}",
        f"0::/docker/{NODE}/system.slice/containerd.service",
    ]
)


def test_nested_runtimes_are_believed_only_when_configured() -> None:
    entries = parse_cgroup_file(KIND)
    assert container_from_cgroups(entries) == ContainerInfo(NODE)
    assert container_from_cgroups(entries, trust_nested=True) == ContainerInfo(B, POD, B)


def test_docker_inside_a_pod_keeps_the_pod_and_its_container() -> None:
    path = f"/kubepods/burstable/pod{POD}/{A}/docker/{B}"
    assert match_cgroup_path(path, trust_nested=True) == ContainerInfo(B, POD, A)


def test_hybrid_host_with_v2_line_outside_the_container_agrees() -> None:
    text = (
        f"12:hugetlb:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}"
        f".slice/crio-{B}.scope\n3:rdma:/\n0::/system.slice/crio.service\n"
    )
    assert container_from_cgroups(parse_cgroup_file(text)) == ContainerInfo(B, POD, B)


def test_hierarchies_naming_different_containers_are_an_error() -> None:
    text = f"12:pids:/docker/{A}\n4:memory:/docker/{B}\n"
    with pytest.raises(ConflictingCgroups, match=f"disagree.*{B}, {A}"):
        container_from_cgroups(parse_cgroup_file(text))


def test_selectors_for_a_pod_and_for_a_plain_container() -> None:
    assert container_selectors(ContainerInfo(A)) == [Selector("container", f"id:{A}")]
    assert container_selectors(ContainerInfo(B, POD, A)) == [
        Selector("container", f"id:{B}"),
        Selector("k8s", f"pod-uid:{POD}"),
        Selector("k8s", f"container-id:{A}"),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("garbage", "malformed cgroup line 'garbage'"),
        ("", "no cgroup lines"),
        (f"12:pids:/docker/{A}\n0::/docker/{B}\n", "disagree"),
    ],
)
def test_a_bad_cgroup_file_is_an_attestation_error_not_a_host_process(
    text: str, reason: str
) -> None:
    with pytest.raises(AttestationError, match=f"container attestor: pid 42: .*{reason}"):
        container_from_text("container", 42, text, trust_nested=False)
