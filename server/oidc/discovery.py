"""The two OIDC discovery documents, from the published local bundle, and the HTTP routes
that serve them.

`/.well-known/openid-configuration` names the issuer and `jwks_uri` (`<issuer>/keys`);
`/keys` is a JWKS of the bundle's JWT authorities only, each with `kid`, `alg` and
`use = "sig"`. The keys are exactly the bundle's, so they follow it: a prepared key is
served before it signs, a tainted one stays until it is revoked (it may still have signed
tokens that are valid), a revoked one is gone. Both paths hang below the issuer's own path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from insignia.bundle import Bundle, public_key_to_jwk
from insignia.daemon.http.endpoint import Response
from insignia.keys import InvalidKey, jwt_algorithm
from insignia.server.oidc.policy import issuer_path, normalized_host
from insignia.spiffeid import TrustDomain

WELL_KNOWN_PATH = "/.well-known/openid-configuration"
KEYS_PATH = "/keys"
# Short: a relying party sees a revoked key go within a minute. New keys are published in
# the bundle long before they sign (rotation prepares them first), so caching costs nothing.
CACHE_CONTROL = "public, max-age=60"
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


def jwks_uri(issuer: str) -> str:
    return issuer.rstrip("/") + KEYS_PATH


def signing_keys(bundle: Bundle) -> list[dict[str, Any]]:
    """The JWT authorities as JWKs for verifiers; a key no JWS algorithm fits is left out."""
    keys = []
    for kid, key in bundle.jwt_authorities.items():
        try:
            alg = jwt_algorithm(key)
        except InvalidKey:
            continue
        keys.append({**public_key_to_jwk(key), "kid": kid, "alg": alg, "use": "sig"})
    return keys


def discovery_document(issuer: str, algorithms: Sequence[str]) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "jwks_uri": jwks_uri(issuer),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": sorted(set(algorithms)),
    }


@dataclass(frozen=True)
class Documents:
    discovery: bytes
    keys: bytes
    key_count: int


def documents(issuer: str, bundle: Bundle) -> Documents:
    keys = signing_keys(bundle)
    discovery = discovery_document(issuer, [k["alg"] for k in keys])
    return Documents(
        json.dumps(discovery, indent=2).encode(),
        json.dumps({"keys": keys}, indent=2).encode(),
        len(keys),
    )


class OidcDiscovery:
    """The routes, over `published()` (the stored local bundle document, b"" before the
    first), with the documents rebuilt only when that document changes.

    With `domains`, a request whose Host is not one of them is refused 421 (Misdirected
    Request) before any route is looked at."""

    def __init__(
        self,
        issuer: str,
        trust_domain: TrustDomain,
        published: Callable[[], bytes],
        domains: Sequence[str] = (),
    ) -> None:
        self.issuer = issuer
        self.trust_domain = trust_domain
        self.published = published
        self.domains = frozenset(normalized_host(d) for d in domains)
        prefix = issuer_path(issuer)
        self.routes = {prefix + WELL_KNOWN_PATH: "discovery", prefix + KEYS_PATH: "keys"}
        self._cached: tuple[bytes, Documents | None] = (b"", None)

    def current(self) -> Documents | None:
        stored = self.published()
        if not stored:
            return None
        if self._cached[0] != stored:
            bundle = Bundle.parse_spiffe(self.trust_domain, stored)
            self._cached = (stored, documents(self.issuer, bundle))
        return self._cached[1]

    def route(self, path: str) -> str:
        """ "discovery", "keys", or "other" (for metrics labels too)."""
        return self.routes.get(path, "other")

    def check_host(self, host: str | None) -> Response | None:
        if not self.domains:
            return None
        name = normalized_host(_without_port(host)) if host else ""
        if name in self.domains:
            return None
        shown = repr(host) if host else "no Host header"
        body = f"misdirected request: {shown} is not one of oidc_discovery.domains\n"
        return Response(421, body.encode(), [("content-type", _TEXT)])

    def handle(self, method: str, path: str) -> Response:
        route = self.route(path)
        if route == "other":
            return Response(404, b"not found\n", [("content-type", _TEXT)])
        if method not in ("GET", "HEAD"):
            return Response(
                405, b"method not allowed\n", [("content-type", _TEXT), ("allow", "GET, HEAD")]
            )
        current = self.current()
        if current is None:
            return Response(503, b"no bundle published yet\n", [("content-type", _TEXT)])
        body = current.discovery if route == "discovery" else current.keys
        return Response(200, body, [("content-type", _JSON), ("cache-control", CACHE_CONTROL)])


def _without_port(host: str) -> str:
    """ "name:443" -> "name", "[::1]:80" -> "[::1]", "::1" stays (a bare IPv6 address)."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    name, sep, port = host.rpartition(":")
    return name if sep and ":" not in name and port.isdigit() else host
