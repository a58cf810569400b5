"""A real grpc.aio Workload API server for SDK tests, with answers the test controls.

It runs in its own thread on its own asyncio loop, so trio tests (pytest-trio, plain
`trio.run`) can drive the SDK against it: a real Unix socket, real HTTP/2, the handlers
registered through `insignia.workload_wire` exactly as the agent registers them. What it
serves is plain data the test sets; streams push every change, as the agent's do.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import trio
from google.protobuf import struct_pb2
from insignia_proto import workload_pb2 as pb

from insignia.bundle import Bundle
from insignia.jwtsvid import InvalidJwtSvid, parse_and_validate
from insignia.keys import KeyType, PrivateKey, generate_key
from insignia.server.ca.jwt_signing import sign_jwt_svid
from insignia.server.ca.x509_leaf import build_leaf
from insignia.server.ca.x509ca import SigningAuthority, build_root_ca
from insignia.spiffeid import SpiffeId, TrustDomain
from insignia.workload_wire import SECURITY_HEADER_KEY, workload_api_handler
from insignia.x509svid import X509Svid
from tests.unit.common import TD

T = TypeVar("T")


@dataclass
class Authority:
    """A trust domain's X.509 CA and JWT key, minting what an agent would hand out."""

    trust_domain: TrustDomain = TD
    ca: SigningAuthority = field(init=False)
    jwt_key: PrivateKey = field(init=False)
    jwt_kid: str = "k1"

    def __post_init__(self) -> None:
        start = datetime.now(UTC) - timedelta(minutes=5)
        self.ca = build_root_ca(
            self.trust_domain, generate_key(KeyType.EC_P256), timedelta(days=1), start
        )
        self.jwt_key = generate_key(KeyType.EC_P256)

    @property
    def bundle(self) -> Bundle:
        public = self.jwt_key.public_key()
        return Bundle(self.trust_domain, (self.ca.certificate,), {self.jwt_kid: public})

    def svid(self, path: str) -> X509Svid:
        spiffe_id = SpiffeId.parse(f"{self.trust_domain.id_string()}{path}")
        key = generate_key(KeyType.EC_P256)
        leaf = build_leaf(key.public_key(), spiffe_id, timedelta(hours=1), self.ca)
        return X509Svid(spiffe_id, (leaf,), key)

    def x509_response(self, *svids: X509Svid, federated: tuple[Bundle, ...] = ()) -> Any:
        return pb.X509SVIDResponse(
            svids=[
                pb.X509SVID(
                    spiffe_id=str(s.spiffe_id),
                    x509_svid=s.chain_der(),
                    x509_svid_key=s.key_der(),
                    bundle=self.bundle.x509_der(),
                    hint=s.hint,
                )
                for s in svids
            ],
            federated_bundles={str(b.trust_domain): b.x509_der() for b in federated},
        )

    def x509_bundles_response(self, *federated: Bundle) -> Any:
        bundles = (self.bundle, *federated)
        return pb.X509BundlesResponse(bundles={str(b.trust_domain): b.x509_der() for b in bundles})

    def jwt_bundles_response(self) -> Any:
        return pb.JWTBundlesResponse(bundles={str(self.trust_domain): self.bundle.jwks()})


class WorkloadApiServer:
    """Serves whatever `identity` says: None answers PERMISSION_DENIED "no identity issued".

    Control it from trio with the async methods; `close()` is for fixture teardown.
    """

    def __init__(self, socket_path: Path, authority: Authority | None = None) -> None:
        self.socket_path = socket_path
        self.authority = authority or Authority()
        self.calls: Counter[str] = Counter()
        self.x509: Any = None  # a pb.X509SVIDResponse, or None for "no identity issued"
        self.jwt_bundles: Any = None
        self.x509_bundles: Any = None
        self.jwt_identity: SpiffeId | None = None
        self.refusal: tuple[grpc.StatusCode, str] | None = None  # answer every call with this
        self.open_streams = 0
        self._version = 0  # bumped by serve(): streams send the new answer
        self._epoch = 0  # bumped by end_streams(): streams return
        self._changed: asyncio.Condition | None = None
        self._idle: asyncio.Event
        self._server: grpc.aio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    # --- control from trio ------------------------------------------------------------------

    async def start(self) -> None:
        await self._on_loop(self._start())

    async def stop(self) -> None:
        """Stop serving (open streams are cancelled), as an agent that went away."""
        await self._on_loop(self._stop())

    async def serve(
        self,
        x509: Any,
        jwt_bundles: Any = None,
        jwt_identity: str = "",
        x509_bundles: Any = None,
    ) -> None:
        """Change what is served; open streams get the new answer at once."""

        async def change() -> None:
            self.x509, self.jwt_bundles, self.x509_bundles = x509, jwt_bundles, x509_bundles
            self.jwt_identity = SpiffeId.parse(jwt_identity) if jwt_identity else None
            self._version += 1
            await self._notify()

        await self._on_loop(change())

    async def refuse(self, code: grpc.StatusCode, details: str) -> None:
        """Answer every later call with this error."""

        async def change() -> None:
            self.refusal = (code, details)

        await self._on_loop(change())

    async def end_streams(self) -> None:
        """Make every open stream return normally, as an agent shutting a stream."""

        async def end() -> None:
            self._epoch += 1
            await self._notify()

        await self._on_loop(end())

    async def count_open_streams(self) -> int:
        async def count() -> int:
            return self.open_streams

        return await self._on_loop(count())

    async def wait_no_open_streams(self) -> None:
        """Return once every stream handler has finished (cancelled by its client, say)."""
        await self._on_loop(self._idle.wait())

    def close(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    # --- on the server's loop ---------------------------------------------------------------

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await trio.to_thread.run_sync(future.result, 30)

    async def _start(self) -> None:
        self._changed = asyncio.Condition()
        self._idle = asyncio.Event()
        self._idle.set()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([workload_api_handler(_Servicer(self))])
        server.add_insecure_port(f"unix:{self.socket_path}")
        await server.start()
        self._server = server

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(None)

    def _moved_on(self, seen: int | None, epoch: int) -> bool:
        return self._version != seen or self._epoch != epoch

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()


class _Servicer:
    def __init__(self, state: WorkloadApiServer) -> None:
        self.state = state

    async def _admit(self, method: str, context: Any) -> None:
        self.state.calls[method] += 1
        if self.state.refusal is not None:
            await context.abort(*self.state.refusal)
        if dict(context.invocation_metadata() or ()).get(SECURITY_HEADER_KEY) != "true":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request"
            )

    async def _stream(self, method: str, attribute: str, context: Any) -> AsyncIterator[Any]:
        await self._admit(method, context)
        state = self.state
        assert state._changed is not None
        epoch, seen = state._epoch, None
        state.open_streams += 1
        state._idle.clear()
        try:
            while True:
                async with state._changed:
                    await state._changed.wait_for(partial(state._moved_on, seen, epoch))
                if state._epoch != epoch:
                    return
                seen = state._version
                answer = getattr(state, attribute)
                if answer is None:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
                yield answer
        finally:
            state.open_streams -= 1
            if not state.open_streams:
                state._idle.set()

    # grpc.aio recognises a stream handler by its being an async generator function.
    async def FetchX509SVID(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for answer in self._stream("FetchX509SVID", "x509", context):
            yield answer

    async def FetchX509Bundles(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for answer in self._stream("FetchX509Bundles", "x509_bundles", context):
            yield answer

    async def FetchJWTBundles(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for answer in self._stream("FetchJWTBundles", "jwt_bundles", context):
            yield answer

    async def FetchJWTSVID(self, request: Any, context: Any) -> Any:
        await self._admit("FetchJWTSVID", context)
        identity = self.state.jwt_identity
        if identity is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
            raise AssertionError("abort() raises")
        authority = self.state.authority
        token = sign_jwt_svid(
            identity,
            list(request.audience),
            timedelta(minutes=5),
            authority.jwt_key,
            authority.jwt_kid,
        )
        return pb.JWTSVIDResponse(svids=[pb.JWTSVID(spiffe_id=str(identity), svid=token)])

    async def ValidateJWTSVID(self, request: Any, context: Any) -> Any:
        await self._admit("ValidateJWTSVID", context)
        try:
            svid = parse_and_validate(request.svid, self.state.authority.bundle, request.audience)
        except InvalidJwtSvid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("abort() raises") from exc
        claims = struct_pb2.Struct()
        claims.update(dict(svid.claims))
        return pb.ValidateJWTSVIDResponse(spiffe_id=str(svid.spiffe_id), claims=claims)
