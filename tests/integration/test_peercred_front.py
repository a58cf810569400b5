"""The peer-credentials front with a real grpc.aio server and real client processes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import trio

from insignia.daemon import runtime
from insignia.daemon.peercred.credentials import CallerTable, PeerCredentials, still_same_process
from insignia.daemon.peercred.front import NotASocket, serve_peercred_front
from insignia.daemon.peercred.grpc_server import (
    PeerCredentialsUnsupported,
    probe_handler,
    self_test,
    serve_grpc_with_peercred,
    start_upstream_server,
)
from insignia.daemon.runtime import call_asyncio

WHO_AM_I = "/Who/AmI"

# A client process: calls WHO_AM_I through the front and reports what the server saw
# beside what it knows about itself. With "hold" it waits for stdin to close before exiting.
CLIENT = """
import grpc, json, os, sys
channel = grpc.insecure_channel("unix:" + sys.argv[1])
seen = json.loads(channel.unary_unary("/Who/AmI")(b"", timeout=20))
print(json.dumps({"me": [os.getpid(), os.geteuid(), os.getegid()], "seen": seen}), flush=True)
if sys.argv[2:] == ["hold"]:
    sys.stdin.read()
channel.close()
"""


@dataclass
class Front:
    public: Path
    table: CallerTable
    seen: list[tuple[str, PeerCredentials]] = field(default_factory=list)
    stream_ended: trio.Event = field(default_factory=trio.Event)


def _who_handler(front: Front) -> grpc.GenericRpcHandler[Any, Any]:
    async def who(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        creds = await front.table.caller_or_abort(context)
        front.seen.append((context.peer(), creds))
        return json.dumps(
            {"pid": creds.pid, "uid": creds.uid, "gid": creds.gid, "peer": context.peer()}
        ).encode()

    async def watch(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        creds = await front.table.caller_or_abort(context)
        try:
            yield str(creds.pid).encode()
            await asyncio.Event().wait()  # a Workload API stream: open until the client goes
        finally:
            front.stream_ended.set()

    return grpc.method_handlers_generic_handler(
        "Who",
        {
            "AmI": grpc.unary_unary_rpc_method_handler(who),
            "Watch": grpc.unary_stream_rpc_method_handler(watch),
        },
    )


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other uids can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="insignia-front-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def run_front(
    public_dir: Path,
    private_dir: Path,
    body: Callable[[Front], Awaitable[None]],
    *,
    mode: int = 0o777,
    gid: int | None = None,
    max_connections: int = 10_000,
    max_connections_per_uid: int = 10_000,
    server_options: tuple[tuple[str, Any], ...] = (),
    grace: float = 2.0,
) -> None:
    async def main() -> None:
        front = Front(public_dir / "api.sock", CallerTable())
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_grpc_with_peercred(
                    front.public,
                    [_who_handler(front)],
                    front.table,
                    private_dir=private_dir,
                    mode=mode,
                    gid=gid,
                    max_connections=max_connections,
                    max_connections_per_uid=max_connections_per_uid,
                    server_options=server_options,
                    grace=grace,
                    task_status=task_status,
                )
            )
            with trio.fail_after(60):
                await body(front)
            nursery.cancel_scope.cancel()
        assert not front.public.exists()  # removed on exit

    runtime.run(main)


# Another uid for the client. setpriv rather than Popen(user=...): the interpreter may live
# under /root (0700); setpriv keeps its capabilities until execve (they drop there, the
# client runs with none), so it can still reach the interpreter; Popen(user=...) cannot.
AS_NOBODY = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")


async def _client(front: Front, *args: str, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    done = await trio.run_process(
        [*prefix, sys.executable, "-c", CLIENT, str(front.public), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def _drained(table: CallerTable, size: int = 0) -> None:
    with trio.fail_after(10):
        while len(table) > size:  # noqa: ASYNC110 - polling with a deadline
            await trio.sleep(0.01)


def test_handler_sees_client_pid_uid_and_entry_goes_away(public_dir: Path, tmp_path: Path) -> None:
    async def body(front: Front) -> None:
        out = await _client(front)
        assert [out["seen"]["pid"], out["seen"]["uid"], out["seen"]["gid"]] == out["me"]
        assert out["seen"]["pid"] != os.getpid()
        peer, creds = front.seen[-1]
        assert peer == out["seen"]["peer"]
        assert (
            peer.startswith("unix-abstract:insignia-")
            and len(peer) == len("unix-abstract:insignia-") + 32
        )
        await _drained(front.table)  # the client exited: its entry is gone
        assert peer not in front.table
        assert not still_same_process(creds)

    run_front(public_dir, tmp_path / "private", body)
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o700


def test_live_client_is_still_same_process_until_it_exits(public_dir: Path, tmp_path: Path) -> None:
    async def body(front: Front) -> None:
        async with trio.open_nursery() as nursery:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", CLIENT, str(front.public), "hold"],
                stdin=-1,
                stdout=-1,
            )
            assert process.stdout is not None and process.stdin is not None
            with trio.fail_after(20):
                line = await _read_line(process.stdout)
            out = json.loads(line)
            peer, creds = front.seen[-1]
            assert creds.pid == process.pid == out["me"][0]
            assert peer in front.table
            assert await trio.to_thread.run_sync(still_same_process, creds)
            await process.stdin.aclose()
            with trio.fail_after(20):
                assert await process.wait() == 0
            await _reap(process)
            await _drained(front.table)
            assert not still_same_process(creds)
            nursery.cancel_scope.cancel()

    run_front(public_dir, tmp_path / "private", body)


async def _reap(process: trio.Process) -> None:
    """Close the pipes and wait, so no ResourceWarning escapes into a later test."""
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            await stream.aclose()
    with trio.fail_after(20):
        await process.wait()


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.root
def test_client_under_another_uid_is_seen_with_that_uid(public_dir: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to start a client as uid 65534")

    async def body(front: Front) -> None:
        out = await _client(front, prefix=AS_NOBODY)
        assert out["me"][1:] == [65534, 65534]
        assert [out["seen"]["pid"], out["seen"]["uid"], out["seen"]["gid"]] == out["me"]

    run_front(public_dir, tmp_path / "private", body)


@pytest.mark.root
def test_socket_mode_keeps_other_uids_out(public_dir: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to start a client as uid 65534")

    async def body(front: Front) -> None:
        assert front.public.stat().st_mode & 0o777 == 0o600
        done = await trio.run_process(
            [*AS_NOBODY, sys.executable, "-c", CLIENT, str(front.public)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert done.returncode != 0
        assert b"UNAVAILABLE" in done.stderr
        assert front.seen == []

    run_front(public_dir, tmp_path / "private", body, mode=0o600)


@pytest.mark.root
def test_group_restricted_socket_admits_its_group(public_dir: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to start a client as uid 65534")

    async def body(front: Front) -> None:
        st = front.public.stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o660, 0, 65534)
        out = await _client(front, prefix=AS_NOBODY)  # uid 65534, gid 65534: by group
        assert [out["seen"]["uid"], out["seen"]["gid"]] == [65534, 65534]

    run_front(public_dir, tmp_path / "private", body, mode=0o660, gid=65534)


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


def test_floods_garbage_and_silent_clients_do_not_stop_a_good_client(
    public_dir: Path, tmp_path: Path
) -> None:
    async def body(front: Front) -> None:
        baseline = len(front.table)
        silent = []
        for _ in range(100):  # connect and never send
            silent.append(await trio.to_thread.run_sync(_connect, front.public))
        for i in range(300):  # garbage, then hang up
            s = await trio.to_thread.run_sync(_connect, front.public)
            s.sendall(os.urandom(64 + i) if i % 2 else b"GET / HTTP/1.1\r\n\r\n" * 10)
            s.close()

        def connect_and_drop(n: int) -> None:
            for _ in range(n):
                _connect(front.public).close()

        await trio.to_thread.run_sync(connect_and_drop, 1000)
        out = await _client(front)
        assert [out["seen"]["pid"], out["seen"]["uid"], out["seen"]["gid"]] == out["me"]
        for s in silent:
            s.close()
        await _drained(front.table, baseline)

    run_front(public_dir, tmp_path / "private", body)


def test_silent_client_loses_its_slot_when_grpc_drops_it(public_dir: Path, tmp_path: Path) -> None:
    async def body(front: Front) -> None:
        await _drained(front.table)
        silent = await trio.to_thread.run_sync(_connect, front.public)
        silent.settimeout(20)

        def read_until_eof() -> bytes:
            data = b""
            while chunk := silent.recv(65536):
                data += chunk
            return data

        # grpc sends its SETTINGS, then GOAWAY at the handshake timeout; the front then
        # closes the client even though the client itself never closes or sends.
        assert await trio.to_thread.run_sync(read_until_eof) != b""
        await _drained(front.table)
        silent.close()

    run_front(
        public_dir,
        tmp_path / "private",
        body,
        server_options=(("grpc.server_handshake_timeout_ms", 300),),
    )


WATCHER = """
import grpc, sys
channel = grpc.insecure_channel("unix:" + sys.argv[1])
for message in channel.unary_stream("/Who/Watch")(b"", timeout=60):
    print(message.decode(), flush=True)
"""


def test_killed_client_cancels_its_stream_and_loses_its_entry(
    public_dir: Path, tmp_path: Path
) -> None:
    async def body(front: Front) -> None:
        await _drained(front.table)
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", WATCHER, str(front.public)], stdout=-1
        )
        assert process.stdout is not None
        with trio.fail_after(20):
            assert int(await _read_line(process.stdout)) == process.pid
        assert len(front.table) == 1
        process.kill()
        with trio.fail_after(10):
            await front.stream_ended.wait()  # the handler was cancelled
        await _drained(front.table)
        await _reap(process)

    run_front(public_dir, tmp_path / "private", body)


def test_shutdown_with_an_open_stream_ends_it(public_dir: Path, tmp_path: Path) -> None:
    async def main() -> None:
        front = Front(public_dir / "api.sock", CallerTable())
        async with trio.open_nursery() as nursery:
            server_scope = trio.CancelScope()

            async def serve(task_status: trio.TaskStatus[None]) -> None:
                with server_scope:
                    await serve_grpc_with_peercred(
                        front.public,
                        [_who_handler(front)],
                        front.table,
                        private_dir=tmp_path / "private",
                        grace=0.2,
                        task_status=task_status,
                    )

            await nursery.start(serve)
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", WATCHER, str(front.public)], stdout=-1, stderr=-1
            )
            assert process.stdout is not None
            with trio.fail_after(20):
                assert int(await _read_line(process.stdout)) == process.pid
            server_scope.cancel()
            with trio.fail_after(20):
                await front.stream_ended.wait()  # grace ran out: the handler was cancelled
                assert await process.wait() != 0  # the client saw its stream fail
            await _reap(process)
        assert not front.public.exists()

    runtime.run(main)


def test_connections_over_the_limit_are_closed_at_once(public_dir: Path, tmp_path: Path) -> None:
    async def body(front: Front) -> None:
        await _drained(front.table)  # the self-test connection has gone
        held = [await trio.to_thread.run_sync(_connect, front.public) for _ in range(3)]
        with trio.fail_after(10):
            while len(front.table) < 3:  # noqa: ASYNC110 - polling with a deadline
                await trio.sleep(0.01)
        extra = await trio.to_thread.run_sync(_connect, front.public)
        extra.settimeout(10)
        assert await trio.to_thread.run_sync(extra.recv, 1) == b""  # closed by the front
        extra.close()
        held.pop().close()
        await _drained(front.table, 2)
        out = await _client(front)
        assert out["seen"]["pid"] == out["me"][0]
        for s in held:
            s.close()

    run_front(public_dir, tmp_path / "private", body, max_connections=3)


@pytest.mark.root
def test_a_uid_at_its_connection_cap_does_not_block_another_uid(
    public_dir: Path, tmp_path: Path
) -> None:
    async def body(front: Front) -> None:
        await _drained(front.table)  # the self-test connection has gone
        held = [await trio.to_thread.run_sync(_connect, front.public) for _ in range(3)]
        with trio.fail_after(10):
            while len(front.table) < 3:  # noqa: ASYNC110 - polling with a deadline
                await trio.sleep(0.01)
        extra = await trio.to_thread.run_sync(_connect, front.public)
        extra.settimeout(10)
        assert await trio.to_thread.run_sync(extra.recv, 1) == b""  # root is at its cap
        extra.close()
        out = await _client(front, prefix=AS_NOBODY)  # while root still holds all three
        assert [out["seen"]["uid"], out["seen"]["pid"]] == [65534, out["me"][0]]
        for s in held:
            s.close()

    run_front(public_dir, tmp_path / "private", body, max_connections_per_uid=3)


def test_self_test_refuses_when_peers_are_not_identified(tmp_path: Path) -> None:
    """Straight to the internal server (no front): peer() is 'unix:', so refuse to start."""

    async def main() -> str:
        table = CallerTable()
        upstream = tmp_path / "private" / "grpc.sock"
        server = await start_upstream_server(upstream, [probe_handler(table)])
        try:
            with pytest.raises(PeerCredentialsUnsupported) as info:
                await self_test(upstream)
            return str(info.value)
        finally:
            await call_asyncio(server.stop, None)

    message = runtime.run(main)
    assert "UNAUTHENTICATED" in message and "'unix:'" in message


def test_public_path_that_is_not_a_socket_is_refused(public_dir: Path, tmp_path: Path) -> None:
    target = public_dir / "api.sock"
    target.write_text("not a socket")

    async def main() -> None:
        with pytest.raises(NotASocket):
            await serve_peercred_front(target, tmp_path / "up.sock", CallerTable())

    runtime.run(main)
    assert target.read_text() == "not a socket"
