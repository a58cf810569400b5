"""Service A: an mTLS echo server and an HTTP endpoint that accept only the callers it names.

    service_a.py --allow spiffe://example.org/service-b [--socket unix:///run/insignia/api.sock]

Its identity (the X509-SVID it presents, the bundles it trusts, the JWT keys it checks tokens
with) comes from the Workload API and rotates while it runs. On the mTLS port a caller must
hold an SVID of a trusted trust domain whose ID is one of the `--allow` IDs; on the HTTP port
a caller must send a JWT-SVID for audience `--audience` whose subject is one of them.

Prints one JSON line once both ports listen, e.g.
{"spiffe_id": "spiffe://example.org/service-a", "mtls": "127.0.0.1:4433", "http": "127.0.0.1:8080"}
then serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
from functools import partial

import trio
from asgi import HttpApp, Scope, Send, respond, serve_asgi

from insignia.authorize import Authorizer, NotAuthorized, one_of
from insignia.daemon.logs import configure_logging, get_logger
from insignia.jwt_http import InvalidAuthorizationHeader, validate_authorization
from insignia.jwtsvid import InvalidJwtSvid
from insignia.spiffetls import TlsStream, server_context
from insignia.workloadapi import WorkloadX509Source, open_x509_source

log = get_logger("service_a")

MAX_LINE = 4096


async def greet(stream: TlsStream) -> None:
    """One mTLS connection: read a line, answer with the caller's verified SPIFFE ID."""
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_LINE:
        chunk = await stream.receive_some(MAX_LINE)
        if not chunk:
            break
        data += chunk
    log.info("mtls call", peer=str(stream.peer_id))
    text = data.decode(errors="replace").strip()
    await stream.send_all(f"hello {stream.peer_id}, you said {text!r}\n".encode())


class JwtApp(HttpApp):
    """ASGI app: 200 for a valid JWT-SVID from an allowed caller, 401 or 403 otherwise."""

    def __init__(self, source: WorkloadX509Source, audience: str, authorize: Authorizer) -> None:
        self.source = source
        self.audience = audience
        self.authorize = authorize

    async def handle(self, scope: Scope, send: Send) -> None:
        header = dict(scope["headers"]).get(b"authorization")
        try:
            svid = validate_authorization(
                header, self.source, self.audience, authorize=self.authorize
            )
        except (InvalidAuthorizationHeader, InvalidJwtSvid) as exc:
            log.info("jwt call refused", status=401, error=str(exc))
            await respond(
                send,
                401,
                f"unauthorized: {exc}\n".encode(),
                headers=[(b"www-authenticate", b"Bearer")],
            )
            return
        except NotAuthorized as exc:
            log.info("jwt call refused", status=403, error=str(exc))
            await respond(send, 403, f"forbidden: {exc}\n".encode())
            return
        log.info("jwt call", peer=str(svid.spiffe_id))
        await respond(send, 200, f"hello {svid.spiffe_id}\n".encode())


async def main(args: argparse.Namespace) -> None:
    authorize = one_of(*args.allow)
    async with open_x509_source(args.socket) as source, trio.open_nursery() as nursery:
        tls = server_context(source, authorize=authorize)
        serve_mtls = partial(trio.serve_tcp, tls.serve(greet), args.mtls_port, host=args.host)
        listeners = await nursery.start(serve_mtls)
        mtls_port = listeners[0].socket.getsockname()[1]
        jwt_app = JwtApp(source, args.audience, authorize)
        http = await nursery.start(serve_asgi, jwt_app, f"{args.host}:{args.http_port}")
        ready = {
            "spiffe_id": str(source.get_x509_svid().spiffe_id),
            "mtls": f"{args.host}:{mtls_port}",
            "http": http,
        }
        print(json.dumps(ready), flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--socket",
        help="Workload API endpoint (unix:///path); default: $SPIFFE_ENDPOINT_SOCKET",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mtls-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--http-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--allow", action="append", required=True, metavar="SPIFFE_ID", help="repeatable"
    )
    parser.add_argument("--audience", default="service-a", help="expected JWT-SVID audience")
    return parser.parse_args(argv)


if __name__ == "__main__":
    configure_logging("info", "console")
    trio.run(main, parse_args())
