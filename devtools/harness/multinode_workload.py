"""A workload built on Insignia's SDK, run as its own process (any uid, any namespace).

Every output line is one JSON object, flushed at once, so a test can follow it as it runs:

    python multinode_workload.py SOCKET watch
        one line per FetchX509SVID message: {"t", "ids", "serials", "authorities" (the key ID
        of each leaf's issuer), "bundle" (key IDs of the X.509 authorities of its own domain)}
    python multinode_workload.py SOCKET serve HOST ALLOWED_ID
        mTLS echo server on HOST (port 0): {"port", "id"}, then serves until killed; each reply
        is "<client SPIFFE ID> <bytes received>"
    python multinode_workload.py SOCKET call HOST PORT SERVER_ID
        one mTLS exchange: {"reply", "peer"} or {"error"}

`t` is time.monotonic(): one clock for every process on a Linux host, so a benchmark can
subtract it from its own readings. Errors from the Workload API print {"error": code} and exit 3.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import trio
from cryptography import x509

from insignia.authorize import one_of
from insignia.sources import StaticSource
from insignia.spiffetls import TlsStream, client_context, server_context
from insignia.workloadapi import WorkloadApiClient, WorkloadApiError, X509Context


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def authority_key_id(cert: x509.Certificate) -> str:
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    return (aki.key_identifier or b"").hex()


def subject_key_id(cert: x509.Certificate) -> str:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def describe(context: X509Context) -> dict[str, Any]:
    own = context.bundles.get_bundle_for_trust_domain(context.default_svid.spiffe_id.trust_domain)
    return {
        "t": time.monotonic(),
        "ids": [str(s.spiffe_id) for s in context.svids],
        "serials": [str(s.leaf.serial_number) for s in context.svids],
        "authorities": [authority_key_id(s.leaf) for s in context.svids],
        "bundle": [subject_key_id(c) for c in own.x509_authorities] if own is not None else [],
    }


def source_from(context: X509Context) -> StaticSource:
    return StaticSource(context.default_svid, context.bundles)


def watch(client: WorkloadApiClient) -> None:
    for context in client.watch_x509_context():
        emit(describe(context))


async def serve(source: StaticSource, host: str, allowed_id: str) -> None:
    tls = server_context(source, authorize=one_of(allowed_id))

    async def echo(stream: TlsStream) -> None:
        data = await stream.receive_some(1024)
        await stream.send_all(str(stream.peer_id).encode() + b" " + data)

    listeners = await trio.open_tcp_listeners(0, host=host)
    port = listeners[0].socket.getsockname()[1]
    emit({"port": port, "id": str(source.get_x509_svid().spiffe_id)})
    await trio.serve_listeners(tls.serve(echo), listeners)


async def call(source: StaticSource, host: str, port: int, server_id: str) -> dict[str, Any]:
    tls = client_context(source, authorize=one_of(server_id))
    try:
        with trio.fail_after(20):
            stream = await tls.connect_tcp(host, port)
            async with stream:
                await stream.send_all(b"hello")
                reply = await stream.receive_some(1024)
                peer = str(stream.peer_id)
    except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if not reply:
        return {"error": "connection closed without a reply"}
    return {"reply": reply.decode(), "peer": peer}


def main(socket_path: str, command: str, *args: str) -> None:
    with WorkloadApiClient(Path(socket_path), timeout=20) as client:
        if command == "watch":
            watch(client)
            return
        source = source_from(client.fetch_x509_context())
    if command == "serve":
        # The SDK logs through stdlib logging; the test reads the refused handshake from stdout.
        logging.basicConfig(level=logging.INFO, stream=sys.stdout)
        trio.run(serve, source, args[0], args[1])
    elif command == "call":
        emit(trio.run(call, source, args[0], int(args[1]), args[2]))
    else:
        raise SystemExit(f"unknown command {command!r}; expected watch, serve or call")


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except WorkloadApiError as exc:
        emit({"error": exc.code.name if exc.code else "INVALID_RESPONSE", "detail": exc.details})
        sys.exit(3)
