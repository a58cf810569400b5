"""sd_notify over a real AF_UNIX datagram socket, as systemd listens for it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from insignia.daemon.systemd_notify import InvalidNotifySocket, notify_address, sd_notify


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(5)
    yield sock
    sock.close()


def test_a_path_socket_receives_the_state(tmp_path: Path, listener: socket.socket) -> None:
    path = tmp_path / "notify"
    listener.bind(str(path))
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": str(path)})
    assert listener.recv(4096) == b"READY=1"


def test_an_abstract_name_receives_the_state(listener: socket.socket) -> None:
    name = f"insignia-test-notify-{os.getpid()}-{os.urandom(8).hex()}"
    listener.bind("\0" + name)
    assert sd_notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
    assert listener.recv(4096) == b"STOPPING=1"


def test_the_process_environment_is_read_by_default(
    tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    listener.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert sd_notify("READY=1\nSTATUS=serving")
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving"


def test_without_systemd_nothing_is_sent() -> None:
    assert sd_notify("READY=1", {}) is False
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": ""}) is False


def test_a_socket_that_is_gone_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "missing")})


@pytest.mark.parametrize("value", ["relative/notify", "@", "vsock:2:1234"])
def test_addresses_that_are_not_unix_sockets_are_refused(value: str) -> None:
    with pytest.raises(InvalidNotifySocket) as caught:
        notify_address(value)
    assert caught.value.address == value
