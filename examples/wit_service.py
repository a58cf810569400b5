"""A service that knows its callers by WIT-SVID with proof of possession, over plain HTTP.

    wit_service.py serve --allow spiffe://example.org/wit-b [--port 0]
    wit_service.py call http://127.0.0.1:8081/hello
    wit_service.py replay --wit-file stolen.txt http://127.0.0.1:8081/hello

`serve` answers only callers that send a WIT-SVID (`Workload-Identity-Token`) with a fresh
Workload Proof Token (`Workload-Proof-Token`) signed by the key the WIT binds, for this method
and URL, and whose SPIFFE ID is one of `--allow`: 200 with a greeting, 400 naming the failed
rule, 403 for an ID it does not allow. It prints one JSON line once it listens, e.g.
{"spiffe_id": "spiffe://example.org/wit-a", "http": "127.0.0.1:8081"}, then serves until
SIGINT or SIGTERM. Two of them call each other with `call`, which signs each request with its
own WIT-SVID (`insignia.wit_httpx.WitAuth`) and exits 0 when answered 200, 1 when refused and
2 without an identity; `--print-wit` also prints the token, as a thief on the wire would see it.

`replay` is that thief: it holds a copied WIT but not the key. It tries the token alone, as a
bearer token, and with a proof signed by a key of its own; each is refused, and it exits 1
when all were (0 would mean a stolen WIT opened the door).

Plain HTTP on loopback keeps the example small; the WIT and WPT drafts require TLS between
hosts. Both WIT-SVIDs and WPTs are incubating: the SPIFFE WIT-SVID profile is experimental
and the WIMSE drafts are not yet RFCs.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import httpx
import trio
from asgi import HttpApp, Scope, Send, respond, serve_asgi

from insignia.authorize import one_of
from insignia.daemon.logs import configure_logging, get_logger
from insignia.keys import KeyType, generate_key, jwt_algorithm
from insignia.wit import WIT_HEADER, WPT_HEADER, create_wpt
from insignia.wit_http import SCOPE_SPIFFE_ID, WitMiddleware, WitVerifier
from insignia.wit_httpx import WitAuth
from insignia.workloadapi import ThreadedWitSource, resolve_socket

log = get_logger("wit_service")
READY_TIMEOUT = 30.0


class Hello(HttpApp):
    """Behind `WitMiddleware`: the caller is proven by the time a request gets here."""

    async def handle(self, scope: Scope, send: Send) -> None:
        caller = scope[SCOPE_SPIFFE_ID]
        log.info("wit call", peer=str(caller), path=scope["path"])
        await respond(send, 200, f"hello {caller}\n".encode())


async def serve(args: argparse.Namespace) -> int:
    with ThreadedWitSource(resolve_socket(args.socket)) as source:
        await trio.to_thread.run_sync(source.wait, READY_TIMEOUT)
        allow = one_of(*args.allow)
        app = WitMiddleware(Hello(), WitVerifier(f"http://{args.host}:{args.port}", source, allow))
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_asgi, app, f"{args.host}:{args.port}")
            # With port 0 the origin the WPTs name is known only now (before anyone can call:
            # the port is announced below).
            app.verifier = WitVerifier(f"http://{bound}", source, allow)
            ready = {"spiffe_id": str(source.credential().spiffe_id), "http": bound}
            print(json.dumps(ready), flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
    return 0


def _outcome(response: httpx.Response) -> int:
    print(f"HTTP {response.status_code}: {response.text.strip()}")
    return 0 if response.status_code == 200 else 1


def call(args: argparse.Namespace) -> int:
    with ThreadedWitSource(resolve_socket(args.socket)) as source:
        try:
            source.wait(READY_TIMEOUT)
        except TimeoutError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.print_wit:
            print(source.credential().token, flush=True)
        with httpx.Client(auth=WitAuth(source.credential), timeout=30) as client:
            return _outcome(client.get(args.url))


def replay(args: argparse.Namespace) -> int:
    """Present a copied WIT without its key, three ways; 1 when every try was refused."""
    stolen = Path(args.wit_file).read_text().strip()
    own_key = generate_key(KeyType.EC_P256)
    forged = create_wpt(stolen, own_key, jwt_algorithm(own_key), args.url, method="GET")
    tries = {
        "WIT alone": {WIT_HEADER: stolen},
        "WIT as a bearer token": {"Authorization": f"Bearer {stolen}"},
        "WIT with a proof from another key": {WIT_HEADER: stolen, WPT_HEADER: forged},
    }
    opened = False
    with httpx.Client(timeout=30) as client:
        for name, headers in tries.items():
            response = client.get(args.url, headers=headers)
            reason = response.headers.get("workload-auth-error", "")
            print(f"{name}: HTTP {response.status_code} {reason}".rstrip())
            opened |= response.status_code == 200
    return 0 if opened else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--socket", help="Workload API endpoint (unix:///path); default: $SPIFFE_ENDPOINT_SOCKET"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="answer callers proven by WIT + WPT")
    serving.add_argument("--host", default="127.0.0.1")
    serving.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serving.add_argument(
        "--allow", action="append", required=True, metavar="SPIFFE_ID", help="repeatable"
    )
    calling = commands.add_parser("call", help="GET a URL, proving this workload's WIT-SVID")
    calling.add_argument("url")
    calling.add_argument("--print-wit", action="store_true", help="print the WIT sent")
    stealing = commands.add_parser("replay", help="try a copied WIT without its key")
    stealing.add_argument("--wit-file", required=True)
    stealing.add_argument("url")
    return parser.parse_args(argv)


def main() -> int:
    configure_logging("info", "console")
    args = parse_args()
    if args.command == "serve":
        return trio.run(serve, args)
    return call(args) if args.command == "call" else replay(args)


if __name__ == "__main__":
    sys.exit(main())
