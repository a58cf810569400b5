"""Workload attestor `docker`: image and labels of the caller's container, from the Engine API.

The container id comes from the caller's cgroup (see `insignia.attestors.workload.container`), never
from the workload; the facts come from the runtime over its Unix socket
(`GET /containers/<id>/json`, which Docker and podman's compatible service both answer).
Environment variables are the workload's own choice at start, so only names on an explicit
`env_allowlist` become selectors.

HTTP is spoken with h11 over a trio Unix socket: one GET per attestation needs no connection
pool or client library, h11 does the parsing (it ships with hypercorn, which we depend on),
and trio's cancellation then bounds the whole exchange, connect included.
"""

from __future__ import annotations

from typing import Annotated, Final

import h11
import msgspec
import trio
from msgspec import Meta, field

from insignia.attestors.interface import (
    AttestationError,
    PluginConfig,
    WorkloadAttestorPlugin,
)
from insignia.attestors.workload.container import read_container
from insignia.daemon.config.loading import PositiveDuration, describe
from insignia.daemon.logs import get_logger
from insignia.daemon.peercred.credentials import PeerCredentials
from insignia.selectors import InvalidSelector, Selector

NAME: Final = "docker"
_log = get_logger(__name__)


class _InspectConfig(msgspec.Struct, frozen=True):
    Labels: dict[str, str] | None = None
    Env: list[str] | None = None


class ContainerInspect(msgspec.Struct, frozen=True):
    """The fields of the Engine API's ContainerInspectResponse that selectors use (the rest of
    the document is ignored)."""

    Id: str
    Image: str
    config: _InspectConfig = field(default_factory=_InspectConfig, name="Config")


def inspect_selectors(inspect: ContainerInspect, env_allowlist: frozenset[str]) -> list[Selector]:
    values = [f"image_id:{inspect.Image}"]
    values += [f"label:{k}:{v}" for k, v in sorted((inspect.config.Labels or {}).items())]
    for item in inspect.config.Env or []:
        name, sep, _ = item.partition("=")
        if sep and name in env_allowlist:
            values.append(f"env:{item}")
    selectors = []
    for value in values:
        try:
            selectors.append(Selector(NAME, value))
        except InvalidSelector as exc:
            # Dropping a fact narrows what the workload matches; it can never widen it.
            _log.warning("container fact is not a valid selector", error=str(exc))
    return selectors


async def engine_get(socket_path: str, target: str, max_bytes: int) -> tuple[int, bytes]:
    """(status, body) of one `GET target` on the Engine API socket; raise on transport errors."""
    stream = await trio.open_unix_socket(socket_path)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("Host", "docker"), ("Accept", "application/json"), ("Connection", "close")],
        )
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        status = 0
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_bytes:
                    raise ValueError(f"response larger than {max_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return status, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise ValueError("connection closed before a complete response")


class DockerConfig(PluginConfig, frozen=True, kw_only=True):
    #: Engine API socket: Docker's, or podman's (`podman system service`) compatible one.
    socket_path: Annotated[str, Meta(min_length=1)] = "/var/run/docker.sock"
    #: Pin an API version (`1.41`); default: the daemon's own.
    api_version: Annotated[str, Meta(pattern=r"^1\.\d{1,3}$")] | None = None
    timeout: PositiveDuration = PositiveDuration(seconds=2)
    env_allowlist: tuple[str, ...] = ()
    max_response_bytes: Annotated[int, Meta(ge=1024)] = 4 << 20


class DockerAttestor:
    def __init__(self, config: DockerConfig) -> None:
        self._config = config
        self._socket = config.socket_path.removeprefix("unix://")
        self._allow = frozenset(config.env_allowlist)

    async def attest(self, caller: PeerCredentials) -> list[Selector]:
        info = await trio.to_thread.run_sync(
            read_container, NAME, caller, False, abandon_on_cancel=True
        )
        if info is None:
            return []
        inspect = await self.inspect(info.container_id)
        return [] if inspect is None else inspect_selectors(inspect, self._allow)

    async def inspect(self, container_id: str) -> ContainerInspect | None:
        """The container's inspect document, None if the runtime does not know it."""
        version = f"/v{self._config.api_version}" if self._config.api_version else ""
        target = f"{version}/containers/{container_id}/json"
        seconds = self._config.timeout.total_seconds()
        where = f"Engine API at {self._socket}"
        try:
            with trio.fail_after(seconds):
                status, body = await engine_get(
                    self._socket, target, self._config.max_response_bytes
                )
        except trio.TooSlowError as exc:
            raise AttestationError(NAME, f"{where} did not answer within {seconds:g}s") from exc
        except OSError as exc:
            raise AttestationError(NAME, f"{where} unreachable: {exc.strerror or exc}") from exc
        except (h11.ProtocolError, ValueError) as exc:
            raise AttestationError(NAME, f"{where} sent a bad HTTP response: {exc}") from exc
        if status == 404:
            _log.info("container unknown to the Engine API", container_id=container_id)
            return None
        if status != 200:
            raise AttestationError(NAME, f"{where} answered HTTP {status} for {target}")
        try:
            inspect = parse_inspect(body)
        except ValueError as exc:
            raise AttestationError(
                NAME, f"{where} sent an unexpected inspect document: {exc}"
            ) from exc
        if inspect.Id != container_id:
            raise AttestationError(
                NAME, f"{where} answered for container {inspect.Id!r}, asked {container_id!r}"
            )
        return inspect


def parse_inspect(body: bytes) -> ContainerInspect:
    """The inspect document, or ValueError with a one-line reason."""
    try:
        return msgspec.json.decode(body, type=ContainerInspect)
    except msgspec.ValidationError as exc:
        where, problem = describe(exc)
        raise ValueError(f"{where}: {problem}" if where else problem) from None
    except msgspec.DecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None


PLUGIN: Final = WorkloadAttestorPlugin(
    config_model=DockerConfig,
    selector_types=frozenset({NAME}),
    create=DockerAttestor,
    selector_keys={NAME: frozenset({"image_id", "label", "env"})},
)
