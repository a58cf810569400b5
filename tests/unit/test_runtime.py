"""trio as a guest of asyncio: results, errors and cancellation cross both ways."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import grpc.aio
import pytest
import trio
import trio.lowlevel

from insignia.daemon import runtime
from insignia.daemon.runtime import (
    BridgeClosed,
    NotInGuestMode,
    call_asyncio,
    first_leaf,
    open_trio_bridge,
)


class Boom(Exception):
    pass


def test_run_returns_result_and_shares_the_thread() -> None:
    async def main(a: int, b: int) -> tuple[int, bool]:
        # asyncio's loop is reachable from trio code: both run on this one thread.
        loop = asyncio.get_running_loop()
        return a + b, loop.is_running()

    assert runtime.run(main, 2, 3) == (5, True)


def test_run_propagates_trio_exception() -> None:
    async def main() -> None:
        await trio.lowlevel.checkpoint()
        raise Boom("from trio")

    with pytest.raises(Boom, match="from trio"):
        runtime.run(main)


def test_call_trio_and_call_asyncio_round_trip() -> None:
    async def main() -> int:
        async with open_trio_bridge() as bridge:

            async def double(x: int) -> int:
                await trio.lowlevel.checkpoint()
                return x * 2

            async def handler() -> int:
                return await bridge.call_trio(double, 21)

            return await call_asyncio(handler)

    assert runtime.run(main) == 42


def test_trio_exception_reaches_asyncio_caller_and_asyncio_exception_reaches_trio() -> None:
    async def main() -> tuple[str, str]:
        async with open_trio_bridge() as bridge:

            async def fails() -> None:
                await trio.lowlevel.checkpoint()
                raise Boom("trio side")

            async def handler() -> str:
                try:
                    await bridge.call_trio(fails)
                except Boom as exc:
                    return str(exc)
                return "no error"

            seen_in_asyncio = await call_asyncio(handler)

            async def aio_fails() -> None:
                await asyncio.sleep(0)
                raise Boom("asyncio side")

            try:
                await call_asyncio(aio_fails)
            except Boom as exc:
                seen_in_trio = str(exc)
            return seen_in_asyncio, seen_in_trio

    assert runtime.run(main) == ("trio side", "asyncio side")


def test_cancelling_asyncio_caller_cancels_trio_task() -> None:
    async def main() -> list[str]:
        events: list[str] = []
        started = trio.Event()
        async with open_trio_bridge() as bridge:

            async def forever() -> None:
                started.set()
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    events.append("trio cancelled")
                    raise
                finally:
                    events.append("trio finally")

            async def handler() -> None:
                try:
                    await bridge.call_trio(forever)
                except asyncio.CancelledError:
                    events.append("asyncio cancelled")
                    raise

            loop = asyncio.get_running_loop()
            task = loop.create_task(handler())
            with trio.fail_after(5):
                await started.wait()
            task.cancel()
            done = trio.Event()
            task.add_done_callback(lambda _t: done.set())
            with trio.fail_after(5):
                await done.wait()
            assert task.cancelled()
        return events

    # The trio task has finished before the asyncio side sees its CancelledError.
    assert runtime.run(main) == ["trio cancelled", "trio finally", "asyncio cancelled"]


def test_trio_cancel_scope_cancels_awaited_asyncio_coroutine() -> None:
    async def main() -> tuple[list[str], bool]:
        events: list[str] = []
        started = trio.Event()

        async def slow() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                events.append("asyncio cancelled")
                raise

        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(_cancel_when_set, started, scope)
                await call_asyncio(slow)
            events.append("trio resumed")
        return events, scope.cancelled_caught

    assert runtime.run(main) == (["asyncio cancelled", "trio resumed"], True)


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    with trio.fail_after(5):
        await event.wait()
    scope.cancel()


def test_closed_bridge_refuses_calls_and_cancels_outstanding_ones() -> None:
    async def main() -> tuple[bool, bool]:
        started = trio.Event()
        async with open_trio_bridge() as bridge:

            async def forever() -> None:
                started.set()
                await trio.sleep_forever()

            async def handler() -> None:
                await bridge.call_trio(forever)

            task = asyncio.get_running_loop().create_task(handler())
            with trio.fail_after(5):
                await started.wait()
        # Leaving the bridge block cancelled `forever`; the handler sees CancelledError.
        done = trio.Event()
        task.add_done_callback(lambda _t: done.set())
        with trio.fail_after(5):
            await done.wait()

        async def late() -> None:
            await bridge.call_trio(trio.sleep, 0)

        try:
            await call_asyncio(late)
        except BridgeClosed:
            refused = True
        else:
            refused = False
        return task.cancelled(), refused

    assert runtime.run(main) == (True, True)


async def test_bridges_need_guest_mode() -> None:
    # pytest-trio runs this under plain trio.run: no asyncio loop to talk to.
    async def nothing() -> None:
        return None

    with pytest.raises(NotInGuestMode, match="call_asyncio"):
        await call_asyncio(nothing)
    with pytest.raises(NotInGuestMode, match="open_trio_bridge"):
        async with open_trio_bridge():
            pass


def test_grpc_client_cancel_cancels_trio_task_behind_handler(tmp_path: Path) -> None:
    """A real grpc.aio handler awaits a trio task; the client cancels the RPC."""

    async def main() -> list[str]:
        events: list[str] = []
        started = trio.Event()
        trio_cancelled = trio.Event()
        async with open_trio_bridge() as bridge:

            async def attest() -> bytes:
                started.set()
                try:
                    await trio.sleep(60)
                except trio.Cancelled:
                    events.append("trio task cancelled")
                    trio_cancelled.set()
                    raise
                return b"slept"

            async def handle(
                request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
            ) -> bytes:
                return await bridge.call_trio(attest)

            handler = grpc.method_handlers_generic_handler(
                "T", {"Slow": grpc.unary_unary_rpc_method_handler(handle)}
            )
            address = f"unix:{tmp_path / 'grpc.sock'}"

            async def start() -> grpc.aio.Server:
                server = grpc.aio.server()
                server.add_generic_rpc_handlers([handler])
                server.add_insecure_port(address)
                await server.start()
                return server

            server = await call_asyncio(start)
            try:

                async def client() -> grpc.StatusCode:
                    async with grpc.aio.insecure_channel(address) as channel:
                        call = channel.unary_unary("/T/Slow", None, None)(b"", timeout=30)
                        await bridge.call_trio(started.wait)
                        call.cancel()
                        try:
                            await call
                        except asyncio.CancelledError:
                            return grpc.StatusCode.CANCELLED
                        return grpc.StatusCode.OK

                assert await call_asyncio(client) == grpc.StatusCode.CANCELLED
                with trio.fail_after(5):
                    await trio_cancelled.wait()
            finally:
                await call_asyncio(server.stop, None)
        return events

    assert runtime.run(main) == ["trio task cancelled"]


def test_sigint_cancels_trio_main_then_raises_keyboard_interrupt() -> None:
    script = textwrap.dedent(
        """
        import os, signal, trio
        from insignia.daemon import runtime

        async def main():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                await trio.sleep(30)
            finally:
                print("trio cleaned up", flush=True)

        try:
            runtime.run(main)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20
    )
    assert result.stdout.splitlines() == ["trio cleaned up", "KeyboardInterrupt"], result.stderr


def test_first_leaf_digs_through_nested_nursery_groups() -> None:
    inner = ValueError("the real cause")
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [inner, KeyError("x")])])
    assert first_leaf(nested) is inner
