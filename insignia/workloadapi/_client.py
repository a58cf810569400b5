"""A blocking Workload API client over a Unix socket: fetch, watch and validate.

Blocking on purpose: command-line tools call it directly and trio code wraps calls in
`trio.to_thread.run_sync`. Every call carries the `workload.spiffe.io` security header, and
every answer is decoded into the library's own types (X509Svid, Bundle) with the same checks
the rest of Insignia applies, so a malformed response is an error here, not in the caller.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.json_format import MessageToDict
from insignia_proto import workload_pb2 as pb

from insignia._closing import Closing
from insignia.bundle import Bundle, BundleSet, InvalidBundle
from insignia.keys import InvalidKey
from insignia.spiffeid import SpiffeId, TrustDomain
from insignia.wit import WitCredential
from insignia.workload_wire import SECURITY_HEADER, WorkloadApiSyncStub
from insignia.workloadapi._address import grpc_target
from insignia.x509svid import InvalidX509Svid, X509Svid

T = TypeVar("T")


class WorkloadApiError(Exception):
    """The Workload API answered with an error status, or sent something undecodable."""

    def __init__(self, code: grpc.StatusCode | None, details: str) -> None:
        label = code.name if code is not None else "INVALID_RESPONSE"
        super().__init__(f"{label}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class X509Context:
    """One FetchX509SVID message: the caller's SVIDs (default first) and the bundles."""

    svids: tuple[X509Svid, ...]
    bundles: BundleSet

    @property
    def default_svid(self) -> X509Svid:
        return self.svids[0]


@dataclass(frozen=True, slots=True)
class JwtSvidToken:
    """A JWT-SVID as the Workload API hands it out (validate it with insignia.jwtsvid)."""

    spiffe_id: SpiffeId
    token: str
    hint: str


def _decode(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (InvalidX509Svid, InvalidBundle, InvalidKey, ValueError) as exc:
        raise WorkloadApiError(None, f"{what}: {exc}") from exc


def x509_context_from_response(response: pb.X509SVIDResponse) -> X509Context:
    """Decode one X509SVIDResponse; an empty one is an error (the agent never sends it)."""
    if not response.svids:
        raise WorkloadApiError(None, "X509SVIDResponse without SVIDs")
    svids = []
    bundles: dict[TrustDomain, Bundle] = {}
    for i, msg in enumerate(response.svids):
        svid: X509Svid = _decode(f"svid {i}", X509Svid.parse_der, msg.x509_svid, msg.x509_svid_key)
        if str(svid.spiffe_id) != msg.spiffe_id:
            raise WorkloadApiError(None, f"svid {i}: spiffe_id {msg.spiffe_id!r} != leaf URI SAN")
        svids.append(X509Svid(svid.spiffe_id, svid.chain, svid.private_key, msg.hint))
        td = svid.spiffe_id.trust_domain
        bundles[td] = _decode(f"bundle of svid {i}", Bundle.parse_der, td, msg.bundle)
    for name, der in response.federated_bundles.items():
        td = _decode("federated trust domain", TrustDomain.parse, name)
        bundles[td] = _decode(f"federated bundle {name}", Bundle.parse_der, td, der)
    return X509Context(tuple(svids), BundleSet(bundles))


def _x509_bundles(response: pb.X509BundlesResponse) -> BundleSet:
    out = {}
    for name, der in response.bundles.items():
        td = _decode("trust domain", TrustDomain.parse, name)
        out[td] = _decode(f"bundle {name}", Bundle.parse_der, td, der)
    return BundleSet(out)


def wit_credentials_from_response(response: pb.WITSVIDResponse) -> list[WitCredential]:
    """Decode one WITSVIDResponse: each token with its private key (validate tokens you
    receive with insignia.wit; these are your own)."""
    if not response.svids:
        raise WorkloadApiError(None, "WITSVIDResponse without SVIDs")
    out = []
    for i, msg in enumerate(response.svids):
        spiffe_id = _decode(f"WIT-SVID {i} spiffe_id", SpiffeId.parse, msg.spiffe_id)
        out.append(
            _decode(
                f"WIT-SVID {i} key",
                WitCredential.from_jwk,
                spiffe_id,
                msg.wit_svid,
                msg.wit_svid_key,
                msg.hint,
            )
        )
    return out


def _wit_bundles(response: pb.WITBundlesResponse) -> BundleSet:
    out = {}
    for name, jwks in response.bundles.items():
        td = _decode("trust domain", TrustDomain.parse, name)
        out[td] = _decode(f"WIT bundle {name}", Bundle.parse_wit_jwks, td, jwks)
    return BundleSet(out)


def _jwt_bundles(response: pb.JWTBundlesResponse) -> BundleSet:
    out = {}
    for name, jwks in response.bundles.items():
        td = _decode("trust domain", TrustDomain.parse, name)
        out[td] = _decode(f"JWT bundle {name}", Bundle.parse_jwks, td, jwks)
    return BundleSet(out)


class WorkloadApiClient(Closing):
    """One channel to the Workload API socket. Use as a context manager, or call close()."""

    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel = grpc.insecure_channel(grpc_target(socket_path))
        self._stub = WorkloadApiSyncStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    # --- X.509 ------------------------------------------------------------------------

    def fetch_x509_context(self) -> X509Context:
        """The first FetchX509SVID message (the stream is then cancelled)."""
        return self._first(
            self._stub.FetchX509SVID, pb.X509SVIDRequest(), x509_context_from_response
        )

    def watch_x509_context(self) -> Iterator[X509Context]:
        """Every FetchX509SVID message as it arrives; close the generator to stop."""
        stream = self._stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=SECURITY_HEADER)
        yield from self._iterate(stream, x509_context_from_response)

    def fetch_x509_bundles(self) -> BundleSet:
        return self._first(self._stub.FetchX509Bundles, pb.X509BundlesRequest(), _x509_bundles)

    def watch_x509_bundles(self) -> Iterator[BundleSet]:
        stream = self._stub.FetchX509Bundles(pb.X509BundlesRequest(), metadata=SECURITY_HEADER)
        yield from self._iterate(stream, _x509_bundles)

    # --- JWT --------------------------------------------------------------------------

    def fetch_jwt_svids(
        self, audience: Sequence[str], spiffe_id: str | None = None
    ) -> list[JwtSvidToken]:
        """JWT-SVIDs whose `aud` holds every audience; all identities, or the one named."""
        if not audience:
            raise ValueError("at least one audience is required")
        request = pb.JWTSVIDRequest(audience=list(audience), spiffe_id=spiffe_id or "")
        response = self._unary(self._stub.FetchJWTSVID, request)
        if not response.svids:
            raise WorkloadApiError(None, "JWTSVIDResponse without SVIDs")
        return [
            JwtSvidToken(_decode("spiffe_id", SpiffeId.parse, s.spiffe_id), s.svid, s.hint)
            for s in response.svids
        ]

    def fetch_jwt_bundles(self) -> BundleSet:
        return self._first(self._stub.FetchJWTBundles, pb.JWTBundlesRequest(), _jwt_bundles)

    def watch_jwt_bundles(self) -> Iterator[BundleSet]:
        stream = self._stub.FetchJWTBundles(pb.JWTBundlesRequest(), metadata=SECURITY_HEADER)
        yield from self._iterate(stream, _jwt_bundles)

    def validate_jwt_svid(self, token: str, audience: str) -> tuple[SpiffeId, dict[str, Any]]:
        """Ask the agent to validate `token` for `audience`: its SPIFFE ID and claims."""
        request = pb.ValidateJWTSVIDRequest(audience=audience, svid=token)
        response = self._unary(self._stub.ValidateJWTSVID, request)
        claims = MessageToDict(response.claims) if response.HasField("claims") else {}
        spiffe_id: SpiffeId = _decode("spiffe_id", SpiffeId.parse, response.spiffe_id)
        return spiffe_id, json.loads(json.dumps(claims))

    # --- WIT (the SPIFFE spec's incubating WIT-SVID profile) ---------------------------

    def fetch_wit_svids(self, spiffe_id: str | None = None) -> list[WitCredential]:
        """The first FetchWITSVID message: WIT-SVIDs with their keys (all, or the one named)."""
        request = pb.WITSVIDRequest(spiffe_id=spiffe_id or "")
        return self._first(self._stub.FetchWITSVID, request, wit_credentials_from_response)

    def watch_wit_svids(self, spiffe_id: str | None = None) -> Iterator[list[WitCredential]]:
        """Every FetchWITSVID message: a new token and key pair after each rotation."""
        request = pb.WITSVIDRequest(spiffe_id=spiffe_id or "")
        stream = self._stub.FetchWITSVID(request, metadata=SECURITY_HEADER)
        yield from self._iterate(stream, wit_credentials_from_response)

    def fetch_wit_bundles(self) -> BundleSet:
        """WIT-SVID keys by trust domain (an empty set: no trust domain signs WIT-SVIDs)."""
        return self._first(self._stub.FetchWITBundles, pb.WITBundlesRequest(), _wit_bundles)

    def watch_wit_bundles(self) -> Iterator[BundleSet]:
        stream = self._stub.FetchWITBundles(pb.WITBundlesRequest(), metadata=SECURITY_HEADER)
        yield from self._iterate(stream, _wit_bundles)

    # --- plumbing ---------------------------------------------------------------------

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=SECURITY_HEADER, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None

    def _first(self, method: Any, request: Any, decode: Callable[[Any], T]) -> T:
        stream = method(request, metadata=SECURITY_HEADER, timeout=self.timeout)
        return next(self._iterate(stream, decode))

    @staticmethod
    def _iterate(stream: Any, decode: Callable[[Any], T]) -> Iterator[T]:
        try:
            for message in stream:
                yield decode(message)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise _rpc_error(exc) from None
        finally:
            stream.cancel()
        raise WorkloadApiError(grpc.StatusCode.UNAVAILABLE, "the agent closed the stream")


def _rpc_error(exc: grpc.RpcError) -> WorkloadApiError:
    """grpcio raises RpcError objects that are also Calls; the stubs cannot say so."""
    call: Any = exc
    if not callable(getattr(call, "code", None)):
        return WorkloadApiError(grpc.StatusCode.UNKNOWN, str(exc))
    return WorkloadApiError(call.code(), call.details() or "")
