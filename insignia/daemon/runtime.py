"""trio as a guest of asyncio, so trio logic and grpc.aio share one thread.

grpc.aio needs asyncio; all our logic is trio (docs/design-notes.md §2). Trio runs in guest mode on
asyncio's loop, so both sides run on one thread and trio-owned state needs no locks. Calls
cross the boundary in both directions with cancellation mirrored:

- an asyncio coroutine (a grpc.aio handler) awaits ``TrioBridge.call_trio(fn, ...)``: ``fn``
  runs in the daemon's trio nursery; cancelling the handler cancels ``fn``;
- trio code awaits ``call_asyncio(coro_fn, ...)``: cancelling the trio scope cancels the task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar, TypeVarTuple, Unpack

import outcome
import trio

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)
Ts = TypeVarTuple("Ts")


class NotInGuestMode(RuntimeError):
    """An asyncio<->trio bridge was used outside ``runtime.run`` (no asyncio loop to talk to)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs trio running as a guest of asyncio; start the program with "
            "insignia.daemon.runtime.run(), not trio.run()"
        )
        self.what = what


class BridgeClosed(RuntimeError):
    """``call_trio`` was used after its ``open_trio_bridge()`` block ended."""

    def __init__(self, fn: object) -> None:
        super().__init__(f"cannot run {fn!r}: the trio bridge is closed (daemon shutting down)")
        self.fn = fn


def first_leaf(group: BaseExceptionGroup[E]) -> E:
    """The first exception in a (possibly nested) group. Nurseries nest their groups, and a
    daemon's CLI reports one clear line (a refusal, a config error), not a tree."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf  # type: ignore[return-value]  # a group of E holds only E leaves


def run(trio_main: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
    """Run ``trio_main(*args)`` as a trio guest on a fresh asyncio loop; return its result.

    Its exception, if any, propagates. SIGINT (asyncio's handler) cancels trio_main, waits for
    it to unwind, then raises KeyboardInterrupt, so nurseries always close cleanly.
    """
    return asyncio.run(_host(trio_main, args))


async def _host(trio_main: Callable[[Unpack[Ts]], Awaitable[T]], args: tuple[*Ts]) -> T:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[outcome.Outcome[T | None]] = loop.create_future()
    scope = trio.CancelScope()

    async def guest() -> T | None:
        with scope:
            return await trio_main(*args)
        return None  # only reached when the host cancelled us

    trio.lowlevel.start_guest_run(
        guest,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        done_callback=done.set_result,
        host_uses_signal_set_wakeup_fd=True,
        strict_exception_groups=True,
    )
    try:
        result = await asyncio.shield(done)
    except asyncio.CancelledError:
        scope.cancel()
        # Keep the loop alive until trio has unwound; a second cancel just stops waiting.
        with contextlib.suppress(BaseException):
            await done
        raise
    return result.unwrap()  # type: ignore[return-value]  # None only when cancelled


class TrioBridge:
    """Lets asyncio code (grpc.aio handlers) run trio functions in the daemon's nursery.

    Get one from ``open_trio_bridge()`` inside trio code started by ``run()``; hand it to
    the grpc servicers. All methods are called on the shared thread, never from others.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, nursery: trio.Nursery) -> None:
        self._loop = loop
        self._nursery = nursery
        self._closed = False

    async def call_trio(self, async_fn: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
        """From asyncio: run ``async_fn(*args)`` as a trio task and return its result.

        A trio-side exception propagates to the awaiting coroutine. Cancelling the awaiting
        asyncio task cancels the trio task and waits for it to finish before re-raising
        CancelledError, so no trio work outlives the handler that asked for it.
        """
        if self._closed:
            raise BridgeClosed(async_fn)
        finished: asyncio.Future[T] = self._loop.create_future()
        scope = trio.CancelScope()

        async def task() -> None:
            try:
                with scope:
                    value = await async_fn(*args)
                    if not finished.done():
                        finished.set_result(value)
            except Exception as exc:
                if not finished.done():
                    finished.set_exception(exc)
            finally:
                if not finished.done():  # cancelled (by us or by daemon shutdown)
                    finished.cancel()

        self._nursery.start_soon(task)
        try:
            return await asyncio.shield(finished)
        except asyncio.CancelledError:
            scope.cancel()
            with contextlib.suppress(BaseException):
                await finished
            raise

    def _close(self) -> None:
        self._closed = True


@contextlib.asynccontextmanager
async def open_trio_bridge() -> AsyncIterator[TrioBridge]:
    """Open a nursery that asyncio code can run trio tasks in (trio side, under ``run()``).

    On exit the bridge refuses new calls and cancels outstanding ones; their awaiting
    asyncio coroutines then see CancelledError.
    """
    loop = _running_loop("open_trio_bridge()")
    async with trio.open_nursery() as nursery:
        bridge = TrioBridge(loop, nursery)
        try:
            yield bridge
        finally:
            bridge._close()
            nursery.cancel_scope.cancel()


async def call_asyncio(coro_fn: Callable[[Unpack[Ts]], Coroutine[Any, Any, T]], *args: *Ts) -> T:
    """From trio: run ``coro_fn(*args)`` as an asyncio task and return its result.

    Cancelling the calling trio scope cancels the asyncio task and waits until it has
    finished; then trio's Cancelled propagates (or the task's own error, if its cleanup
    failed). An asyncio-side exception propagates to the trio caller.
    """
    loop = _running_loop("call_asyncio()")
    task = loop.create_task(coro_fn(*args))
    finished = trio.Event()
    task.add_done_callback(lambda _task: finished.set())
    try:
        await finished.wait()
    except trio.Cancelled:
        task.cancel()
        with trio.CancelScope(shield=True):
            await finished.wait()
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure from None
        raise
    return task.result()


def _running_loop(what: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise NotInGuestMode(what) from None
