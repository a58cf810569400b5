"""A private network of Linux network namespaces for multi-host tests (root only).

`network_lab("server", "host1", ...)` builds one namespace per host, each with loopback up and
an `eth0` veth whose other end is a port on a bridge inside a hub namespace. Every address is
in `LAB_NETWORK`, which exists only inside these namespaces: the hosts have no default route
and the root namespace has no route to them, so no lab packet can reach a real network.

All links are created inside the lab's namespaces, so only the namespace names need to be
unique (a pid and random suffix: pytest-xdist runs several workers at once). Deleting the
namespaces deletes every veth and the bridge with them; teardown runs even when the body
fails, and also sweeps labs left behind by a test process that was killed outright.

A host runs commands through `ip netns exec` (`run`, `spawn`), or Python code on a thread that
has entered its namespace (`call_in`): a process that thread starts lives in the namespace,
and a socket it opens belongs to it. Pathname Unix sockets and files are shared by every
namespace, so admin sockets and the Workload API socket stay reachable from the test.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import secrets
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

LAB_NETWORK = ipaddress.ip_network("10.231.64.0/24")
HUB_BRIDGE = "br0"
HOST_DEVICE = "eth0"
NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^insl-(\d+)-[0-9a-f]{6}-")
_libc = ctypes.CDLL(None, use_errno=True)


class LabError(RuntimeError):
    """An `ip` command failed while building or driving the lab; carries its stderr."""


@dataclass(frozen=True)
class Host:
    """One lab host: its namespace, its address, and its port on the hub's bridge."""

    name: str
    netns: str
    address: str
    hub_port: str  # the veth end in the hub namespace: the host's "switch port"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise LabError(f"ip {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def _netns_names() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    return True


def _delete_netns(netns: str) -> None:
    """Kill what still runs in `netns` (only lab processes can be there), then delete it."""
    pids = _ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", netns, check=False)


def sweep_abandoned_labs() -> list[str]:
    """Delete lab namespaces whose creating process is gone (a test killed by SIGKILL)."""
    swept = []
    for netns in _netns_names():
        match = _NAME.match(netns)
        if match and not _pid_alive(int(match.group(1))):
            _delete_netns(netns)
            swept.append(netns)
    return swept


def enter_netns(netns: str) -> None:
    """Move the calling THREAD into `netns` (setns(2) is per thread)."""
    fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {netns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class NetworkLab:
    """The hosts of one lab. Build it with `network_lab()`, which also tears it down."""

    def __init__(self, host_names: Sequence[str]) -> None:
        if len(set(host_names)) != len(host_names) or not host_names:
            raise ValueError(f"expected distinct host names, got {list(host_names)!r}")
        if len(host_names) > LAB_NETWORK.num_addresses - 2:
            raise ValueError(f"{len(host_names)} hosts do not fit in {LAB_NETWORK}")
        self.prefix = f"insl-{os.getpid()}-{secrets.token_hex(3)}-"
        self.hub = self.prefix + "hub"
        addresses = LAB_NETWORK.hosts()
        self.hosts = {
            name: Host(name, f"{self.prefix}{i}", str(next(addresses)), f"port{i}")
            for i, name in enumerate(host_names)
        }
        self._created: list[str] = []
        self._spawned: list[subprocess.Popen[bytes]] = []

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    # --- building and tearing down -------------------------------------------------------------

    def _add_netns(self, netns: str) -> None:
        _ip("netns", "add", netns)
        self._created.append(netns)
        _ip("-n", netns, "link", "set", "lo", "up")

    def build(self) -> None:
        sweep_abandoned_labs()
        self._add_netns(self.hub)
        _ip("-n", self.hub, "link", "add", HUB_BRIDGE, "type", "bridge")
        _ip("-n", self.hub, "link", "set", HUB_BRIDGE, "up")
        for host in self.hosts.values():
            self._add_netns(host.netns)
            veth = ["type", "veth", "peer", "name", host.hub_port, "netns", self.hub]
            _ip("-n", host.netns, "link", "add", HOST_DEVICE, *veth)
            cidr = f"{host.address}/{LAB_NETWORK.prefixlen}"
            _ip("-n", host.netns, "addr", "add", cidr, "dev", HOST_DEVICE)
            _ip("-n", host.netns, "link", "set", HOST_DEVICE, "up")
            _ip("-n", self.hub, "link", "set", host.hub_port, "master", HUB_BRIDGE, "up")

    def close(self) -> None:
        """Stop spawned processes, then delete every namespace (and so every link) we made."""
        for proc in self._spawned:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._spawned:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for netns in reversed(self._created):
            _delete_netns(netns)
        self._created.clear()

    # --- running things on a host ------------------------------------------------------------

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` prefixed to run inside `host`'s namespace."""
        return ["ip", "netns", "exec", self.hosts[host].netns, *argv]

    def run(
        self, host: str, argv: Sequence[str], check: bool = True, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` to completion inside `host`; its output as text."""
        result = subprocess.run(
            self.argv(host, argv), capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and result.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} on {host} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def spawn(self, host: str, argv: Sequence[str], **popen_kw: Any) -> subprocess.Popen[bytes]:
        """Start a long-running `argv` inside `host`; it is stopped at teardown if still up."""
        proc = subprocess.Popen(self.argv(host, argv), **popen_kw)
        self._spawned.append(proc)
        return proc

    def call_in(self, host: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a fresh thread inside `host`'s namespace; its result or exception."""
        outcome: list[Any] = []

        def target() -> None:
            try:
                enter_netns(self.hosts[host].netns)
                outcome.append((True, fn(*args)))
            except BaseException as exc:
                outcome.append((False, exc))

        thread = threading.Thread(target=target, name=f"netns-{host}", daemon=True)
        thread.start()
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        result: T = value
        return result

    # --- the wire -------------------------------------------------------------------------------

    def cut(self, host: str) -> None:
        """Unplug `host`: its switch port goes down, so nothing reaches it or leaves it."""
        _ip("-n", self.hub, "link", "set", self.hosts[host].hub_port, "down")

    def restore(self, host: str) -> None:
        _ip("-n", self.hub, "link", "set", self.hosts[host].hub_port, "up")

    def is_connected(self, host: str) -> bool:
        """Whether `host`'s switch port is administratively up."""
        out = _ip("-n", self.hub, "-o", "link", "show", self.hosts[host].hub_port).stdout
        flags = out.split("<", 1)[1].split(">", 1)[0].split(",")
        return "UP" in flags


@contextlib.contextmanager
def network_lab(*host_names: str) -> Iterator[NetworkLab]:
    """A lab with one namespace per name in `host_names`; torn down however the body ends."""
    lab = NetworkLab(host_names)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()
