"""The namespace lab itself: hosts talk over the bridge, nothing leaks, links cut and heal."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import subprocess

import pytest

from devtools.harness.waiting import wait_for
from tests.integration.netns import (
    LAB_NETWORK,
    NetworkLab,
    _ip,
    network_lab,
    sweep_abandoned_labs,
)

pytestmark = [pytest.mark.root, pytest.mark.integration]


def _listen(address: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.listen(4)
    return sock


def _connect(address: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((address, port), timeout=timeout)


def _exchange(lab: NetworkLab, server: socket.socket, client_host: str, timeout: float) -> bytes:
    """Connect from `client_host` to `server` (a listener in another host); the echoed bytes."""
    address, port = server.getsockname()[:2]
    client = lab.call_in(client_host, _connect, address, port, timeout)
    with client:
        peer, _ = server.accept()
        with peer:
            client.sendall(b"ping")
            peer.sendall(peer.recv(4))
            return client.recv(4)


def _namespaces() -> set[str]:
    return {line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line}


def _addresses(
    lab: NetworkLab | None, host: str | None
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    argv = ["ip", "-j", "-4", "addr", "show"]
    text = (
        lab.run(host, argv).stdout
        if lab and host
        else subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    )
    return [
        ipaddress.ip_address(a["local"]) for link in json.loads(text) for a in link["addr_info"]
    ]


def test_hosts_reach_each_other_over_the_bridge() -> None:
    with network_lab("a", "b") as lab:
        assert ipaddress.ip_address(lab["a"].address) in _addresses(lab, "a")
        server = lab.call_in("a", _listen, lab["a"].address)
        with server:
            assert _exchange(lab, server, "b", timeout=10) == b"ping"


def test_lab_addresses_exist_only_inside_the_lab() -> None:
    with network_lab("a") as lab:
        assert not [a for a in _addresses(None, None) if a in LAB_NETWORK]
        routes = json.loads(subprocess.run(["ip", "-j", "route"], capture_output=True).stdout)
        lab_routes = [
            r
            for r in routes
            if r["dst"] != "default"
            and ipaddress.ip_network(r["dst"], strict=False).overlaps(LAB_NETWORK)
        ]
        assert lab_routes == []
        assert lab.run("a", ["ip", "route", "show", "default"]).stdout.strip() == ""
        # No route out: connect fails at once, before any packet is sent (TEST-NET-3 address).
        with pytest.raises(OSError) as caught:
            lab.call_in("a", _connect, "203.0.113.1", 9, 5)
        assert caught.value.errno == errno.ENETUNREACH


def test_cutting_a_host_isolates_it_and_restoring_heals() -> None:
    with network_lab("a", "b") as lab:
        server = lab.call_in("a", _listen, lab["a"].address)
        with server:
            assert _exchange(lab, server, "b", timeout=10) == b"ping"
            lab.cut("a")
            assert not lab.is_connected("a")
            with pytest.raises(OSError):
                _exchange(lab, server, "b", timeout=1)
            lab.restore("a")
            assert lab.is_connected("a")

            def heals() -> bool:
                try:
                    return _exchange(lab, server, "b", timeout=1) == b"ping"
                except OSError:
                    return False

            wait_for(heals, 20, "host a to be reachable again")


def test_spawned_processes_run_in_the_host_and_teardown_removes_everything() -> None:
    with pytest.raises(RuntimeError, match="body failed"), network_lab("a", "b") as lab:
        names = {lab.hub, lab["a"].netns, lab["b"].netns}
        assert names <= _namespaces()
        proc = lab.spawn("b", ["sleep", "600"])
        wait_for(
            lambda: _ip("netns", "identify", str(proc.pid)).stdout.strip() == lab["b"].netns,
            10,
            "the spawned process to appear in host b",
        )
        raise RuntimeError("body failed")
    assert proc.poll() is not None
    assert not names & _namespaces()


def test_sweep_removes_labs_whose_creator_died() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"insl-{dead.pid}-abcdef-hub"
    _ip("netns", "add", stale)
    try:
        assert stale in sweep_abandoned_labs()
        assert stale not in _namespaces()
    finally:
        _ip("netns", "del", stale, check=False)
