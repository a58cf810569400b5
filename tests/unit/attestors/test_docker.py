"""The docker attestor against an Engine-API-shaped server on a Unix socket.

The real runtime (podman's Docker-compatible service) is exercised in
tests/integration/test_attestor_docker.py; this file covers the failures a real daemon will
not produce on demand.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import msgspec
import pytest
import trio

from insignia.attestors.interface import AttestationError
from insignia.attestors.workload.docker import DockerAttestor, DockerConfig, inspect_selectors
from insignia.daemon.config.loading import validate_config
from insignia.selectors import Selector
from tests.unit.attestors.engine_api import engine_api, inspect_document, json_body

CID = "7" * 64


def attestor(sock: Path | str, **config: object) -> DockerAttestor:
    return DockerAttestor(
        validate_config("test.toml", {"socket_path": str(sock), **config}, DockerConfig)
    )


async def test_image_labels_and_only_allowlisted_env_become_selectors(tmp_path: Path) -> None:
    sock = tmp_path / "docker.sock"

    async def handler(target: str) -> tuple[int, bytes]:
        return json_body(inspect_document(CID))

    async with engine_api(sock, handler) as seen:
        docker = attestor(sock, env_allowlist=["APP_ENV"], api_version="1.43")
        inspect = await docker.inspect(CID)
    assert seen == [f"/v1.43/containers/{CID}/json"]
    assert inspect is not None
    assert inspect_selectors(inspect, frozenset({"APP_ENV"})) == [
        Selector("docker", "image_id:sha256:" + "5" * 64),
        Selector("docker", "label:team:payments"),
        Selector("docker", "label:tier:backend"),
        Selector("docker", "env:APP_ENV=prod"),
    ]


def test_labels_that_cannot_be_selectors_are_dropped_not_mangled() -> None:
    from insignia.attestors.workload.docker import ContainerInspect

    doc = inspect_document(CID)
    doc["Config"]["Labels"] = {"ok": "yes", "evil": "a\nb"}
    doc["Config"]["Env"] = None
    selectors = inspect_selectors(msgspec.convert(doc, ContainerInspect), frozenset())
    assert Selector("docker", "label:ok:yes") in selectors
    assert not any("evil" in s.value for s in selectors)


async def test_container_unknown_to_the_runtime_gives_no_docker_selectors(tmp_path: Path) -> None:
    sock = tmp_path / "docker.sock"

    async def handler(target: str) -> tuple[int, bytes]:
        return 404, b'{"message": "No such container"}'

    async with engine_api(sock, handler):
        assert await attestor(sock).inspect(CID) is None


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (500, b'{"message": "boom"}', "answered HTTP 500"),
        (200, b"<html>", "unexpected inspect document"),
        (200, b"[]", "unexpected inspect document"),
        (200, json.dumps({"Id": CID}).encode(), "unexpected inspect document.*Image"),
        (200, json.dumps(inspect_document("8" * 64)).encode(), "answered for container"),
        (200, b" " * 5000, "bad HTTP response: response larger than 4096 bytes"),
    ],
)
async def test_bad_answers_are_errors_not_identities(
    tmp_path: Path, status: int, body: bytes, reason: str
) -> None:
    sock = tmp_path / "docker.sock"

    async def handler(target: str) -> tuple[int, bytes]:
        return status, body

    async with engine_api(sock, handler):
        with pytest.raises(AttestationError, match=reason):
            await attestor(sock, max_response_bytes=4096).inspect(CID)


async def test_a_slow_engine_api_is_an_error(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    sock = tmp_path / "docker.sock"

    async def handler(target: str) -> tuple[int, bytes]:
        await trio.sleep_forever()
        raise AssertionError

    async with engine_api(sock, handler):
        with pytest.raises(AttestationError, match=r"did not answer within 1.5s"):
            await attestor(sock, timeout="1500ms").inspect(CID)


async def test_an_engine_api_that_is_down_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="unreachable: No such file or directory"):
        await attestor(tmp_path / "absent.sock").inspect(CID)
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # a socket file left behind by a dead daemon
    with pytest.raises(AttestationError, match="unreachable: Connection refused"):
        await attestor(f"unix://{stale}").inspect(CID)


async def test_a_connection_closed_mid_answer_is_an_error(tmp_path: Path) -> None:
    sock_path = tmp_path / "docker.sock"
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(str(sock_path))
    listener.listen(1)

    async def half_answer() -> None:
        conn, _ = await listener.accept()
        with conn:
            await conn.recv(65536)
            await conn.send(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"Id"')

    async with trio.open_nursery() as nursery:
        nursery.start_soon(half_answer)
        with pytest.raises(AttestationError, match="bad HTTP response"):
            await attestor(sock_path).inspect(CID)
    listener.close()
