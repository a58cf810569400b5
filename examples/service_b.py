"""Service B: calls service A over mTLS, or over plain HTTP with a JWT-SVID.

    service_b.py mtls --server-id spiffe://example.org/service-a 127.0.0.1:4433
    service_b.py jwt --audience service-a http://127.0.0.1:8080/

Both take `--socket unix:///path` (default: $SPIFFE_ENDPOINT_SOCKET). B's identity is
whatever the Workload API issues to the process running it, so the same program run by a
workload that A does not allow is refused: authorization follows identity, not code.

mtls: presents B's X509-SVID, accepts the server only if its SVID carries `--server-id`,
      sends one line and prints A's answer.
jwt:  fetches a JWT-SVID for `--audience`, sends it as `Authorization: Bearer`, and prints
      the HTTP status and body.
Exit status 0 when A accepted the call, 1 when it was refused, 2 when B got no identity.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import urllib.parse

import trio

from insignia.authorize import one_of
from insignia.jwt_http import attach
from insignia.spiffetls import client_context
from insignia.workloadapi import (
    SourceNotReady,
    TrioWorkloadApiClient,
    WorkloadApiError,
    open_x509_source,
)

MAX_LINE = 4096


async def call_mtls(args: argparse.Namespace) -> int:
    host, _, port = args.address.rpartition(":")
    async with open_x509_source(args.socket, jwt_bundles=False) as source:
        tls = client_context(source, authorize=one_of(args.server_id))
        try:
            async with await tls.connect_tcp(host, int(port)) as stream:
                await stream.send_all(args.message.encode() + b"\n")
                reply = b""
                while not reply.endswith(b"\n") and len(reply) < MAX_LINE:
                    chunk = await stream.receive_some(MAX_LINE)
                    if not chunk:
                        break
                    reply += chunk
        except trio.BrokenResourceError as exc:  # handshake refused, or A's alert after it
            print(f"refused: {exc}", file=sys.stderr)
            return 1
    if not reply:
        print("refused: A closed the connection without answering", file=sys.stderr)
        return 1
    print(f"{stream.peer_id} answered: {reply.decode().strip()}")
    return 0


def http_get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise SystemExit(f"expected an http://host:port/path URL, got {url!r}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/", headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


async def call_jwt(args: argparse.Namespace) -> int:
    svid = await TrioWorkloadApiClient(args.socket).fetch_jwt_svid([args.audience])
    headers: dict[str, str] = {}
    attach(headers, svid.token)
    status, body = await trio.to_thread.run_sync(http_get, args.url, headers, 10.0)
    print(f"HTTP {status}: {body.strip()}")
    return 0 if status == 200 else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--socket",
        help="Workload API endpoint (unix:///path); default: $SPIFFE_ENDPOINT_SOCKET",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    mtls = commands.add_parser("mtls", help="call A over mutual TLS")
    mtls.add_argument("--server-id", required=True, help="the SPIFFE ID A must present")
    mtls.add_argument("--message", default="ping")
    mtls.add_argument("address", help="HOST:PORT of A's mTLS listener")
    jwt = commands.add_parser("jwt", help="call A over HTTP with a JWT-SVID")
    jwt.add_argument("--audience", required=True)
    jwt.add_argument("url", help="A's HTTP URL, e.g. http://127.0.0.1:8080/")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> int:
    try:
        return await (call_mtls(args) if args.command == "mtls" else call_jwt(args))
    except (WorkloadApiError, SourceNotReady) as exc:  # no identity (yet), or no agent
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(trio.run(main, parse_args()))
