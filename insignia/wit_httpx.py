"""An httpx `Auth` that proves a WIT-SVID on every request (`pip install insignia[httpx]`).

Each request gets the WIT in `Workload-Identity-Token` and a fresh WPT in
`Workload-Proof-Token` for its method and target URI; an `Authorization: Bearer` token the
request already carries (an OAuth access token) is bound by `ath`. The WIT itself never goes
in `Authorization`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from datetime import timedelta

import httpx

from insignia.wit import DEFAULT_WPT_TTL, WitCredential

__all__ = ["WitAuth"]


class WitAuth(httpx.Auth):
    """Signs each request with `credential` (or the current one a callable returns, such as
    a live source's, so a rotated key is used from the next request on)."""

    def __init__(
        self,
        credential: WitCredential | Callable[[], WitCredential],
        ttl: timedelta = DEFAULT_WPT_TTL,
    ) -> None:
        self._credential = credential if callable(credential) else (lambda: credential)
        self._ttl = ttl

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        bearer = request.headers.get("authorization", "")
        scheme, _, token = bearer.partition(" ")
        access_token = token.strip() if scheme.lower() == "bearer" and token.strip() else None
        headers = self._credential().headers(
            str(request.url), request.method, ttl=self._ttl, access_token=access_token
        )
        request.headers.update(headers)
        yield request
