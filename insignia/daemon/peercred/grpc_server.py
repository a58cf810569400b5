"""The internal grpc.aio server behind the peer-credentials front, and the one call that
wires both up: ``serve_grpc_with_peercred`` (used by the agent's Workload API and the
server's admin API).

At start it calls a probe method through the front and checks the handler saw this very
process: if a grpcio release changes how ``context.peer()`` reports an abstract-bound
client, the daemon refuses to start instead of treating every caller as unknown.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import trio

from insignia.daemon.files import ensure_private_dir
from insignia.daemon.instance import claim_socket_path
from insignia.daemon.peercred.credentials import CallerTable
from insignia.daemon.peercred.front import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_UID,
    FrontLimits,
    OtherProtocol,
    serve_peercred_front,
)
from insignia.daemon.runtime import call_asyncio

_SELF_TEST_TIMEOUT = 10.0

# A connection that has not sent the HTTP/2 preface within 10 s is dropped (grpc's default is
# 120 s): every connection holds a slot in the front, so silent clients must not keep theirs.
DEFAULT_SERVER_OPTIONS: dict[str, Any] = {
    "grpc.server_handshake_timeout_ms": 10_000,
    "grpc.max_concurrent_streams": 100,
    "grpc.so_reuseport": 0,
}


async def start_upstream_server(
    upstream_path: Path,
    handlers: Sequence[grpc.GenericRpcHandler[Any, Any]],
    *,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Server:
    """Start (from trio) a grpc.aio server on ``unix:upstream_path``; its dir is made 0700.

    ``options`` are grpc channel args; they override DEFAULT_SERVER_OPTIONS. Stop it with
    ``await call_asyncio(server.stop, grace)``.
    """
    ensure_private_dir(upstream_path.parent)
    claim_socket_path(upstream_path)  # grpc would unlink it, even under a live server

    async def start() -> grpc.aio.Server:
        server = grpc.aio.server(options=list({**DEFAULT_SERVER_OPTIONS, **dict(options)}.items()))
        server.add_generic_rpc_handlers(list(handlers))
        server.add_insecure_port(f"unix:{upstream_path}")
        await server.start()
        return server

    return await call_asyncio(start)


PROBE_SERVICE = "insignia.PeerCredentialsProbe"
PROBE_METHOD = f"/{PROBE_SERVICE}/Self"


class PeerCredentialsUnsupported(RuntimeError):
    """grpc did not report a proxied peer as ``unix-abstract:<name>``: refuse to start."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"grpcio {grpc.__version__} does not expose callers the way the peer-credentials "
            f"front relies on ({detail}); refusing to start. Use the grpcio range pinned in "
            "pyproject.toml."
        )
        self.detail = detail


def probe_handler(table: CallerTable) -> grpc.GenericRpcHandler[Any, Any]:
    """``PROBE_METHOD`` answers "<pid> <uid> <gid>" of the caller as the table knows it.

    It tells a caller only its own credentials, so it is safe on the public socket.
    """

    async def whoami(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        creds = await table.caller_or_abort(context)
        return f"{creds.pid} {creds.uid} {creds.gid}".encode()

    return grpc.method_handlers_generic_handler(
        PROBE_SERVICE, {"Self": grpc.unary_unary_rpc_method_handler(whoami)}
    )


async def self_test(public_path: Path) -> None:
    """Call ``PROBE_METHOD`` through the front; raise PeerCredentialsUnsupported unless the
    handler saw exactly this process (pid, effective uid, effective gid)."""

    async def call() -> bytes:
        async with grpc.aio.insecure_channel(f"unix:{public_path}") as channel:
            answer: bytes = await channel.unary_unary(PROBE_METHOD, None, None)(
                b"", timeout=_SELF_TEST_TIMEOUT
            )
            return answer

    try:
        answer = await call_asyncio(call)
    except grpc.aio.AioRpcError as exc:
        raise PeerCredentialsUnsupported(f"probe failed: {exc.code()} {exc.details()}") from exc
    expected = f"{os.getpid()} {os.geteuid()} {os.getegid()}".encode()
    if answer != expected:
        raise PeerCredentialsUnsupported(f"probe saw {answer!r}, expected {expected!r}")


async def _shielded_front(
    scope: trio.CancelScope,
    public_path: Path,
    upstream_path: Path,
    table: CallerTable,
    mode: int,
    gid: int | None,
    max_connections: int,
    max_connections_per_uid: int,
    limits: FrontLimits,
    other_protocol: OtherProtocol | None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await serve_peercred_front(
            public_path,
            upstream_path,
            table,
            mode=mode,
            gid=gid,
            max_connections=max_connections,
            max_connections_per_uid=max_connections_per_uid,
            limits=limits,
            other_protocol=other_protocol,
            task_status=task_status,
        )


async def serve_grpc_with_peercred(
    public_path: Path,
    handlers: Sequence[grpc.GenericRpcHandler[Any, Any]],
    table: CallerTable,
    *,
    private_dir: Path,
    mode: int = 0o777,
    gid: int | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_connections_per_uid: int = DEFAULT_MAX_CONNECTIONS_PER_UID,
    limits: FrontLimits = DEFAULT_LIMITS,
    grace: float = 2.0,
    server_options: Sequence[tuple[str, Any]] = (),
    other_protocol: OtherProtocol | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handlers`` on ``public_path`` with each caller's credentials in ``table``
    (and clients that do not speak HTTP/2 with ``other_protocol``, when given).

    Needs ``runtime.run`` (grpc.aio under trio guest mode). Starts the internal grpc.aio
    server on ``private_dir/grpc.sock`` (dir made 0700), the front on ``public_path``, then
    self-tests (PeerCredentialsUnsupported if grpc's peer() format drifted) before
    ``task_status.started()``. Runs until cancelled; then stops grpc with ``grace`` seconds
    for in-flight RPCs while the front still proxies them, and only then closes the front.
    """
    upstream_path = private_dir / "grpc.sock"
    claim_socket_path(public_path)  # first: the refusal names the path operators configured
    server = await start_upstream_server(
        upstream_path, [*handlers, probe_handler(table)], options=server_options
    )
    try:
        async with trio.open_nursery() as nursery:
            front_scope = trio.CancelScope(shield=True)
            await nursery.start(
                _shielded_front,
                front_scope,
                public_path,
                upstream_path,
                table,
                mode,
                gid,
                max_connections,
                max_connections_per_uid,
                limits,
                other_protocol,
            )
            try:
                await self_test(public_path)
                task_status.started()
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await call_asyncio(server.stop, grace)
                front_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await call_asyncio(server.stop, None)  # no-op when already stopped above
