"""A workload calling FetchJWTSVID in a pattern; run as its own process, often as another uid.

    python jwt_workload.py SOCKET once AUDIENCE [AUDIENCE...]
        one call: {"code": ..., "detail": ..., "tokens": [len, ...]}
    python jwt_workload.py SOCKET sized COUNT BYTES
        the same, with COUNT fresh audiences of BYTES each (too long for argv, say)
    python jwt_workload.py SOCKET flood SECONDS CONCURRENCY COUNT BYTES
        unique audiences (COUNT of BYTES each) as fast as CONCURRENCY callers go, for
        SECONDS or until stdin closes; prints {"started": true} after the first answer,
        then {"codes": {...}, "calls": n, "details": {code: first detail}}
    python jwt_workload.py SOCKET paced CALLS INTERVAL [COUNT BYTES]
        one call with fresh audiences (1 of 32 bytes by default) every INTERVAL seconds:
        {"codes": {...}, "latencies_ms": [...], "details": [first few non-OK details]}

Shared by the integration tests and benchmarks/attack_jwt.py, so both measure the same
client. Every call is a new audience, so each one asks the agent to mint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
import uuid
from collections import Counter

import grpc
import grpc.aio
from insignia_proto import workload_pb2 as pb

from insignia.workload_wire import SECURITY_HEADER, WorkloadApiStub


def emit(document: object) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def audiences(count: int, size: int) -> list[str]:
    """`count` audiences of exactly `size` bytes, unique to this call."""
    tag = uuid.uuid4().hex
    return [f"{tag}-{i:02}-".ljust(size, "x")[:size] for i in range(count)]


async def call(stub: WorkloadApiStub, audience: list[str]) -> tuple[str, str, list[int]]:
    try:
        response = await stub.FetchJWTSVID(
            pb.JWTSVIDRequest(audience=audience), metadata=SECURITY_HEADER, timeout=30
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or "", []
    return "OK", "", [len(s.svid) for s in response.svids]


async def once(stub: WorkloadApiStub, audience: list[str]) -> None:
    code, detail, tokens = await call(stub, audience)
    emit({"code": code, "detail": detail, "tokens": tokens})


async def flood(
    stub: WorkloadApiStub, seconds: float, concurrency: int, count: int, size: int
) -> None:
    codes: Counter[str] = Counter()
    details: dict[str, str] = {}
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            code, detail, _ = await call(stub, audiences(count, size))
            if not codes:
                emit({"started": True})
            codes[code] += 1
            details.setdefault(code, detail)

    def until_stdin_closes(loop: asyncio.AbstractEventLoop) -> None:
        sys.stdin.readline()
        loop.call_soon_threadsafe(stop.set)

    loop = asyncio.get_running_loop()
    threading.Thread(target=until_stdin_closes, args=(loop,), daemon=True).start()
    callers = [asyncio.ensure_future(caller()) for _ in range(concurrency)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    stop.set()
    await asyncio.gather(*callers)
    emit({"codes": dict(codes), "calls": sum(codes.values()), "details": details})


async def paced(
    stub: WorkloadApiStub, calls: int, interval: float, count: int = 1, size: int = 32
) -> None:
    codes: Counter[str] = Counter()
    latencies, details = [], []
    next_at = time.monotonic()
    for _ in range(calls):
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # the pace, not a wait
        next_at += interval
        began = time.perf_counter()
        code, detail, _ = await call(stub, audiences(count, size))
        latencies.append((time.perf_counter() - began) * 1000)
        codes[code] += 1
        if code != "OK" and len(details) < 5:
            details.append(f"{code}: {detail}")
    emit({"codes": dict(codes), "latencies_ms": latencies, "details": details})


async def main(socket: str, command: str, *args: str) -> None:
    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
        stub = WorkloadApiStub(channel)
        if command == "once":
            await once(stub, list(args))
        elif command == "sized":
            await once(stub, audiences(int(args[0]), int(args[1])))
        elif command == "flood":
            await flood(stub, float(args[0]), int(args[1]), int(args[2]), int(args[3]))
        elif command == "paced":
            await paced(stub, int(args[0]), float(args[1]), *map(int, args[2:4]))
        else:
            raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
