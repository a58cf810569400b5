"""The docker attestor against a real runtime: podman's Docker-compatible Engine API service.

The machine cannot pull images, so the test imports a one-binary image (busybox-static) with
`podman import`, runs a container from it, and attests the container's process through the
registry exactly as the agent configures it. It skips, with podman's own error, where podman
cannot run containers.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.callers import caller_of
from devtools.harness.waiting import wait_for
from insignia.attestors.registry import load_workload_attestors
from insignia.attestors.workload_attestation import attest_workload

IMAGE = "localhost/insignia-test-busybox:1"
# This machine refuses to raise RLIMIT_NPROC/NOFILE (no CAP_SYS_RESOURCE); pinning them to
# values below the hard limits keeps crun from trying. Harmless elsewhere.
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("podman") or not shutil.which("busybox"),
        reason="needs root, podman and busybox-static",
    ),
]


def podman(*args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def ensure_image() -> None:
    if subprocess.run(["podman", "image", "exists", IMAGE]).returncode == 0:
        return
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        tar.add(os.path.realpath(shutil.which("busybox") or ""), arcname="bin/busybox")
        for name in ("sh", "sleep"):
            link = tarfile.TarInfo(f"bin/{name}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    subprocess.run(
        ["podman", "import", "-", IMAGE], input=data.getvalue(), check=True, capture_output=True
    )


def mount_missing_hugetlb_hierarchy() -> None:
    """crun refuses to start containers on a hybrid cgroup host whose v1 hugetlb controller is
    not mounted ("drop all controllers from cgroupv2"), as on this kind of machine after boot.
    Mounting it is what a host set up for containers would have done."""
    root = Path("/sys/fs/cgroup")
    hugetlb = root / "hugetlb"
    if not (root / "pids").is_dir() or os.path.ismount(hugetlb):
        return
    hugetlb.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", str(hugetlb)],
        capture_output=True,
        timeout=30,
    )


@pytest.fixture
def engine_socket(tmp_path: Path) -> Iterator[Path]:
    """podman's Engine API service on a private socket, with the test image present."""
    try:
        mount_missing_hugetlb_hierarchy()
        ensure_image()
        podman("run", "--rm", *ULIMITS, IMAGE, "/bin/sh", "-c", "true")
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"podman cannot run containers here: {exc}")
    path = tmp_path / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def accepting() -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            return s.connect_ex(str(path)) == 0

    try:
        wait_for(accepting, 30, "the fake docker engine to accept")
        yield path
    finally:
        service.terminate()
        service.wait(timeout=30)


async def test_container_process_gets_runtime_facts_from_podman(engine_socket: Path) -> None:
    cid = podman(
        "run", "-d", *ULIMITS, "--label", "team=payments", "--label", "tier=backend",
        "-e", "APP_ENV=prod", "-e", "DB_PASSWORD=hunter2", IMAGE, "/bin/sleep", "300",
    )  # fmt: skip
    try:
        pid = int(podman("inspect", "-f", "{{.State.Pid}}", cid))
        image_id = podman("inspect", "-f", "{{.Image}}", cid)
        attestors = load_workload_attestors(
            {
                "container": {},
                "docker": {"socket_path": f"unix://{engine_socket}", "env_allowlist": ["APP_ENV"]},
            }
        )
        caller = caller_of(pid, 0, 0)
        try:
            selectors = await attest_workload(caller, attestors, 10)
        finally:
            caller.pidfd.close()
    finally:
        podman("rm", "-f", "-t", "0", cid)
    assert {str(s) for s in selectors} == {
        f"container:id:{cid}",
        f"docker:image_id:sha256:{image_id.removeprefix('sha256:')}",
        "docker:label:team:payments",
        "docker:label:tier:backend",
        "docker:env:APP_ENV=prod",
    }


async def test_a_host_process_gets_no_docker_selectors(engine_socket: Path) -> None:
    attestors = load_workload_attestors({"docker": {"socket_path": str(engine_socket)}})
    caller = caller_of(os.getpid())
    try:
        assert await attest_workload(caller, attestors, 10) == ()
    finally:
        caller.pidfd.close()
