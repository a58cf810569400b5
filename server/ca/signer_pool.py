"""X509-SVID signing spread over worker processes, so a batch can use every core.

`cryptography` holds the GIL while it signs, so threads do not help and one event loop tops out
at one core (~3k SVIDs/s here). Large batches are cut into chunks and signed in a process pool
(started with "spawn": never fork a process that runs grpc). Each chunk carries the active CA
as DER and PEM; a worker parses it once and keeps it until the CA changes. The private key
only travels over the pipe to our own child processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from insignia.keys import private_key_from_pem, private_key_to_pem
from insignia.server.ca.signing import SignedX509, SigningRefused, sign_x509_svid
from insignia.server.ca.x509ca import SigningAuthority
from insignia.spiffeid import SpiffeId

MIN_CHUNK = 25


@dataclass(frozen=True, slots=True)
class SignRequest:
    csr: bytes
    spiffe_id: str
    ttl_seconds: float
    dns_names: tuple[str, ...]


SignOutcome = SignedX509 | str  # a signed SVID, or why it was refused


@dataclass(frozen=True, slots=True)
class _AuthorityBlob:
    certificates: tuple[bytes, ...]  # the CA certificate, then its chain (DER)
    key_pem: bytes


def _blob(authority: SigningAuthority) -> _AuthorityBlob:
    certs = authority.chain or (authority.certificate,)
    return _AuthorityBlob(
        tuple(c.public_bytes(serialization.Encoding.DER) for c in certs),
        private_key_to_pem(authority.private_key),
    )


@lru_cache(maxsize=4)
def _authority(blob: _AuthorityBlob) -> SigningAuthority:
    certs = tuple(x509.load_der_x509_certificate(d) for d in blob.certificates)
    chain = () if certs[0].issuer == certs[0].subject else certs
    return SigningAuthority(certs[0], private_key_from_pem(blob.key_pem), chain)


def sign_chunk(
    authority: SigningAuthority | None, requests: Sequence[SignRequest], now: datetime
) -> list[SignOutcome]:
    """Sign every request, refusing each bad one on its own (pure CPU: no I/O)."""
    out: list[SignOutcome] = []
    for request in requests:
        try:
            out.append(
                sign_x509_svid(
                    authority,
                    request.csr,
                    SpiffeId.parse(request.spiffe_id),
                    timedelta(seconds=request.ttl_seconds),
                    request.dns_names,
                    now,
                )
            )
        except SigningRefused as exc:
            out.append(exc.reason)
    return out


def _worker_chunk(
    blob: _AuthorityBlob, requests: list[SignRequest], now: datetime
) -> list[SignOutcome]:
    return sign_chunk(_authority(blob), requests, now)


def _exit_with_parent(parent_pid: int) -> None:
    """Worker start-up: exit when the server dies, even by SIGKILL (nobody else would stop us;
    PR_SET_PDEATHSIG is tied to the thread that spawned us, which may end first)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class SignerPool:
    """Signs in-process for small batches and without workers; else in `processes` children."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._executor: ProcessPoolExecutor | None = None
        if processes > 1:
            self._executor = ProcessPoolExecutor(
                processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )

    async def sign(
        self,
        authority: SigningAuthority | None,
        requests: Sequence[SignRequest],
        now: datetime | None = None,
    ) -> list[SignOutcome]:
        now = now or datetime.now(UTC)
        if self._executor is None or authority is None or len(requests) < 2 * MIN_CHUNK:
            return sign_chunk(authority, requests, now)
        blob = _blob(authority)
        size = max(MIN_CHUNK, -(-len(requests) // self.processes))
        loop = asyncio.get_running_loop()
        chunks = [list(requests[i : i + size]) for i in range(0, len(requests), size)]
        futures = [
            loop.run_in_executor(self._executor, _worker_chunk, blob, c, now) for c in chunks
        ]
        results: list[SignOutcome] = []
        for part in await asyncio.gather(*futures):
            results.extend(part)
        return results

    def warm_up(self) -> None:
        """Start every worker now (blocking), not on the first big batch: spawning one
        process and importing `cryptography` there takes a good part of a second."""
        if self._executor is not None:
            futures = [self._executor.submit(os.getpid) for _ in range(self.processes * 2)]
            for future in futures:
                future.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def default_processes() -> int:
    """One worker per CPU we may run on; none (sign in-process) on a single CPU."""
    cpus = len(os.sched_getaffinity(0))
    return cpus if cpus > 1 else 0
