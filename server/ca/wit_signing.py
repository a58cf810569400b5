"""Signing WIT-SVIDs: compact JWS tokens that bind a workload's public key (`cnf.jwk`).

The header is {alg, kid, typ: "wit+jwt"} from the shared per-key signer; the claims are sub,
cnf, exp, iat, nbf and a random jti, and never aud: a WIT names no audience, its proof of
possession (the WPT) does. No `iss` either: the subject's trust domain names the issuer, and
an OIDC-discoverable issuer would invite verifiers to take the WIT for an ID token.
Validation is the SDK's (`insignia.wit.parse_and_validate`); the tests check tokens with
jwcrypto.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta

from insignia.keys import PrivateKey
from insignia.server.ca.jwt_signing import jws_signer
from insignia.spiffeid import SpiffeId
from insignia.wit import WIT_TYP


def sign_wit_svid(
    spiffe_id: SpiffeId,
    cnf_jwk: Mapping[str, str],
    ttl: timedelta,
    private_key: PrivateKey,
    kid: str,
    now: datetime,
) -> str:
    """A WIT-SVID for `spiffe_id` binding `cnf_jwk` (public members and `alg`) for `ttl`."""
    signer = jws_signer(private_key, kid, None, WIT_TYP)
    iat = int(now.timestamp())
    claims = {
        "sub": str(spiffe_id),
        "cnf": {"jwk": dict(cnf_jwk)},
        "exp": iat + int(ttl.total_seconds()),
        "iat": iat,
        "nbf": iat,
        "jti": secrets.token_urlsafe(16),
    }
    return signer.token(json.dumps(claims, separators=(",", ":")))
