"""WIT-SVIDs and Workload Proof Tokens: a valid request passes, and every attack of the
issue's list is refused with its own reason. Tokens are signed by the server's own code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from insignia.authorize import NotAuthorized, one_of
from insignia.bundle import Bundle, BundleSet, b64url_decode, public_key_to_jwk
from insignia.keys import KeyType, PrivateKey, generate_key, private_key_to_jwk
from insignia.server.ca.jwt_signing import jws_signer
from insignia.server.ca.wit_signing import sign_wit_svid
from insignia.spiffeid import SpiffeId, TrustDomain
from insignia.wit import (
    WIT_HEADER,
    WPT_HEADER,
    InvalidWit,
    Reason,
    ReplayCache,
    WitCredential,
    create_wpt,
    parse_and_validate,
    token_hash,
    verify_request,
)
from insignia.wit_http import WitMiddleware, WitVerifier
from tests.unit.common import TD, WALL_NOW

OTHER = TrustDomain("other.test")
CALLER = SpiffeId(TD, "/caller")
URI = "https://service.example.org:8443/api/items"
WIT_KEY = generate_key(KeyType.EC_P256)
JWT_KEY = generate_key(KeyType.EC_P256)
WORKLOAD_KEY = generate_key(KeyType.EC_P256)
STRANGER_KEY = generate_key(KeyType.EC_P256)
BUNDLES = BundleSet.of(
    [
        Bundle(
            TD,
            jwt_authorities={"jwt-kid": JWT_KEY.public_key()},
            wit_authorities={"wit-kid": WIT_KEY.public_key()},
        )
    ]
)
CNF = {**public_key_to_jwk(WORKLOAD_KEY.public_key()), "alg": "ES256"}
NOW = WALL_NOW


def wit(
    spiffe_id: SpiffeId = CALLER, ttl: timedelta = timedelta(minutes=5), now: datetime = NOW
) -> str:
    return sign_wit_svid(spiffe_id, CNF, ttl, WIT_KEY, "wit-kid", now)


def credential(token: str | None = None) -> WitCredential:
    return WitCredential(CALLER, token or wit(), WORKLOAD_KEY, "ES256")


def signed(claims: dict[str, object], key: PrivateKey = WIT_KEY, kid: str = "wit-kid") -> str:
    return jws_signer(key, kid, None, "wit+jwt").token(json.dumps(claims))


def claims(**changes: object) -> dict[str, object]:
    iat = int(NOW.timestamp())
    base: dict[str, object] = {
        "sub": str(CALLER),
        "cnf": {"jwk": CNF},
        "exp": iat + 300,
        "iat": iat,
        "jti": "x",
    }
    return {**base, **changes}


def verify(headers: dict[str, str], method: str = "GET", uri: str = URI, cache=None):
    return verify_request(
        method, uri, headers, BUNDLES, cache if cache is not None else ReplayCache(), now=NOW
    )


def refusal(headers: dict[str, str], **kwargs: object) -> Reason:
    with pytest.raises(InvalidWit) as refused:
        verify(headers, **kwargs)  # type: ignore[arg-type]
    return refused.value.reason


def test_a_valid_request_passes_and_names_the_caller() -> None:
    svid = verify(credential().headers(URI + "?q=1#top", "GET", now=NOW))
    assert svid.spiffe_id == CALLER and svid.alg == "ES256" and svid.kid == "wit-kid"
    assert parse_and_validate(wit(), BUNDLES, NOW).key.public_numbers() == (
        WORKLOAD_KEY.public_key().public_numbers()
    )


def attacks() -> dict[str, tuple[Reason, dict[str, str], dict[str, object]]]:
    good = credential()
    headers = good.headers(URI, "GET", now=NOW)
    forged_wpt = create_wpt(good.token, STRANGER_KEY, "ES256", URI, method="GET", now=NOW)
    other_wit = wit(ttl=timedelta(minutes=4))
    wrong_wth = create_wpt(other_wit, WORKLOAD_KEY, "ES256", URI, method="GET", now=NOW)
    expired = wit(ttl=timedelta(seconds=2), now=NOW - timedelta(minutes=1))
    stranger = SpiffeId(OTHER, "/caller")
    none_alg = (
        "eyJhbGciOiJub25lIiwia2lkIjoid2l0LWtpZCIsInR5cCI6IndpdCtqd3QifQ."
        + signed(claims()).split(".")[1]
        + "."
    )

    def with_wit(token: str) -> dict[str, str]:
        return credential(token).headers(URI, "GET", now=NOW)

    return {
        "WIT without WPT": (Reason.MISSING_WPT, {WIT_HEADER: good.token}, {}),
        "WIT as a bearer token": (Reason.BEARER, {"Authorization": f"Bearer {good.token}"}, {}),
        "WPT signed by another key": (
            Reason.PROOF_SIGNATURE,
            {WIT_HEADER: good.token, WPT_HEADER: forged_wpt},
            {},
        ),
        "WPT for another URI": (Reason.AUDIENCE, headers, {"uri": URI + "/admin"}),
        "WPT for another method": (Reason.METHOD, headers, {"method": "DELETE"}),
        "expired WIT": (Reason.WIT_EXPIRED, with_wit(expired), {}),
        "expired WPT": (
            Reason.PROOF_EXPIRED,
            good.headers(URI, "GET", now=NOW - timedelta(minutes=2)),
            {},
        ),
        "WIT of an untrusted domain": (Reason.UNTRUSTED_DOMAIN, with_wit(wit(stranger)), {}),
        "alg none": (Reason.ALGORITHM, with_wit(none_alg), {}),
        "WIT carrying aud": (Reason.AUDIENCE_IN_WIT, with_wit(signed(claims(aud=["x"]))), {}),
        "WIT signed by a JWT-SVID key": (
            Reason.UNKNOWN_KEY,
            with_wit(signed(claims(), JWT_KEY, "jwt-kid")),
            {},
        ),
        "wth not matching": (
            Reason.WIT_HASH,
            {WIT_HEADER: good.token, WPT_HEADER: wrong_wth},
            {},
        ),
    }


@pytest.mark.parametrize("name", list(attacks()))
def test_each_attack_is_refused_for_its_own_reason(name: str) -> None:
    expected, headers, kwargs = attacks()[name]
    assert refusal(headers, **kwargs) is expected


def test_the_attack_reasons_are_all_distinct() -> None:
    reasons = [expected for expected, _, _ in attacks().values()]
    assert len(set(reasons)) == len(reasons)


def test_a_replayed_proof_is_refused_within_its_lifetime() -> None:
    cache = ReplayCache()
    headers = credential().headers(URI, "GET", now=NOW)
    assert verify(headers, cache=cache).spiffe_id == CALLER
    assert refusal(headers, cache=cache) is Reason.REPLAYED
    # another sender's proof with the same jti is its own
    assert len(cache) == 1


def test_the_replay_cache_is_bounded_and_forgets_expired_proofs() -> None:
    cache = ReplayCache(max_entries=2, max_per_sender=2)
    t = NOW.timestamp()
    assert cache.admit("a", "1", t + 10, t) is None
    assert cache.admit("a", "2", t + 20, t) is None
    assert cache.admit("a", "3", t + 30, t) is Reason.REPLAY_CACHE_FULL  # fail closed
    assert cache.admit("a", "1", t + 10, t + 11) is None  # 1 expired: seen again is fine
    assert cache.admit("a", "2", t + 20, t + 11) is Reason.REPLAYED
    shared = ReplayCache(max_entries=10, max_per_sender=2)
    assert [shared.admit("greedy", str(i), t + 10, t) for i in range(3)] == [
        None,
        None,
        Reason.REPLAY_CACHE_FULL,
    ]
    assert shared.admit("other", "1", t + 10, t) is None  # one sender cannot fill it for all
    assert shared.admit("greedy", "3", t + 20, t + 10) is None  # its own expired: room again


def test_bound_tokens_must_travel_with_their_hashes() -> None:
    good = credential()
    access = "an-oauth-access-token"
    headers = good.headers(URI, "GET", access_token=access, now=NOW)
    assert verify({**headers, "Authorization": f"Bearer {access}"}).spiffe_id == CALLER
    swapped = {**good.headers(URI, "GET", access_token=access, now=NOW)}
    assert refusal({**swapped, "Authorization": "Bearer another"}) is Reason.TOKEN_HASH
    unbound = good.headers(URI, "GET", now=NOW)
    assert refusal({**unbound, "Authorization": f"Bearer {access}"}) is Reason.TOKEN_HASH
    oth = create_wpt(good.token, WORKLOAD_KEY, "ES256", URI, other_tokens={"X-Ctx": " v "}, now=NOW)
    assert json.loads(b64url_decode(oth.split(".")[1]))["oth"] == {"x-ctx": token_hash("v")}
    assert verify({WIT_HEADER: good.token, WPT_HEADER: oth, "X-Ctx": "v"}).spiffe_id == CALLER
    assert refusal({WIT_HEADER: good.token, WPT_HEADER: oth}) is Reason.TOKEN_HASH


def test_malformed_and_overlong_proofs() -> None:
    good = credential()
    assert refusal({WIT_HEADER: good.token, WPT_HEADER: "a.b"}) is Reason.MALFORMED
    far = create_wpt(good.token, WORKLOAD_KEY, "ES256", URI, ttl=timedelta(minutes=5), now=NOW)
    with pytest.raises(InvalidWit) as too_long:
        verify_request(
            "GET",
            URI,
            {WIT_HEADER: good.token, WPT_HEADER: far},
            BUNDLES,
            ReplayCache(),
            now=NOW,
            max_proof_ttl=timedelta(seconds=30),
        )
    assert too_long.value.reason is Reason.PROOF_LIFETIME
    two = [(WIT_HEADER, good.token), (WIT_HEADER, good.token)]
    assert refusal(dict(two)) is Reason.MISSING_WPT
    with pytest.raises(InvalidWit) as doubled:
        verify_request("GET", URI, two, BUNDLES, ReplayCache(), now=NOW)
    assert doubled.value.reason is Reason.MALFORMED


def test_the_private_jwk_round_trips_and_a_private_cnf_is_refused() -> None:
    text = json.dumps(private_key_to_jwk(WORKLOAD_KEY))
    back = WitCredential.from_jwk(CALLER, wit(), text)
    assert back.alg == "ES256"
    assert back.private_key.private_numbers() == WORKLOAD_KEY.private_numbers()
    leaky = signed(claims(cnf={"jwk": private_key_to_jwk(WORKLOAD_KEY)}))
    with pytest.raises(InvalidWit) as refused:
        parse_and_validate(leaky, BUNDLES, NOW)
    assert refused.value.reason is Reason.CONFIRMATION
    wrong_alg = signed(claims(cnf={"jwk": {**CNF, "alg": "RS256"}}))
    with pytest.raises(InvalidWit) as unfit:
        parse_and_validate(wrong_alg, BUNDLES, NOW)
    assert unfit.value.reason is Reason.CONFIRMATION


def test_a_remembered_wit_is_judged_again_when_its_key_changes() -> None:
    token = wit()
    assert parse_and_validate(token, BUNDLES, NOW).kid == "wit-kid"  # now remembered
    replaced = Bundle(TD, wit_authorities={"wit-kid": STRANGER_KEY.public_key()})
    with pytest.raises(InvalidWit) as refused:
        parse_and_validate(token, replaced, NOW)
    assert refused.value.reason is Reason.SIGNATURE
    with pytest.raises(InvalidWit) as revoked:
        parse_and_validate(token, Bundle(TD, wit_authorities={"k2": WIT_KEY.public_key()}), NOW)
    assert revoked.value.reason is Reason.UNKNOWN_KEY
    with pytest.raises(InvalidWit) as later:
        parse_and_validate(token, BUNDLES, NOW + timedelta(hours=1))
    assert later.value.reason is Reason.WIT_EXPIRED  # time is checked on every use


def test_a_wit_is_no_jwt_svid() -> None:
    from insignia.jwtsvid import InvalidJwtSvid
    from insignia.jwtsvid import parse_and_validate as validate_jwt

    with pytest.raises(InvalidJwtSvid, match="typ 'wit\\+jwt'"):
        validate_jwt(wit(), BUNDLES, "anything", now=NOW)


# --- the ASGI middleware, called directly --------------------------------------------------


async def call(
    app: WitMiddleware, headers: dict[str, str], path: str = "/api/items"
) -> tuple[int, dict[bytes, bytes], dict]:
    sent: list[dict] = []
    seen: dict = {}

    async def inner(scope, receive, send):
        seen.update(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message) -> None:
        sent.append(message)

    app.app = inner
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), seen


async def test_the_middleware_puts_the_caller_on_the_request_and_refuses_others() -> None:
    verifier = WitVerifier(
        "https://service.example.org:8443", BUNDLES, one_of(str(CALLER)), leeway=timedelta(0)
    )
    app = WitMiddleware(lambda *a: None, verifier)  # type: ignore[arg-type, return-value]
    good = credential(wit(now=_now()))
    status, _, scope = await call(app, good.headers(URI, "GET"))
    assert status == 200 and scope["insignia.spiffe_id"] == CALLER
    status, headers, _ = await call(app, {"Authorization": f"Bearer {good.token}"})
    assert status == 400 and headers[b"workload-auth-error"] == b"bearer"
    outsider = WitVerifier(
        "https://service.example.org:8443", BUNDLES, one_of("spiffe://example.org/x")
    )
    with pytest.raises(NotAuthorized):
        outsider.verify("GET", "/api/items", good.headers(URI, "GET"))


def _now() -> datetime:
    return datetime.now(UTC)


def test_httpx_auth_signs_each_request_and_a_trio_h11_server_verifies_it() -> None:
    import h11
    import httpx

    from insignia.wit_http import verify_h11
    from insignia.wit_httpx import WitAuth

    seen: list[h11.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        # what an h11 server on trio would parse from the wire
        seen.append(
            h11.Request(
                method=request.method,
                target=request.url.raw_path,
                headers=[(k, v) for k, v in request.headers.raw],
            )
        )
        return httpx.Response(200)

    good = credential(wit(now=_now()))
    verifier = WitVerifier("https://service.example.org:8443", BUNDLES, one_of(str(CALLER)))
    transport = httpx.MockTransport(server)  # httpx's own in-process transport
    with httpx.Client(transport=transport, auth=WitAuth(good)) as client:
        client.get(URI + "?page=2")
        client.post(URI, headers={"Authorization": "Bearer access-1"})
    first, second = seen
    assert verify_h11(verifier, first).spiffe_id == CALLER
    assert verify_h11(verifier, second).spiffe_id == CALLER  # its ath binds the access token
    assert b"authorization" not in {k.lower() for k, _ in first.headers}  # never the WIT
    with pytest.raises(InvalidWit) as replayed:
        verify_h11(verifier, first)
    assert replayed.value.reason is Reason.REPLAYED


def test_proofs_interoperate_with_jwcrypto_both_ways() -> None:
    """Our WPT verifies under jwcrypto with the WIT's cnf key; a WPT jwcrypto makes (no htm,
    as the draft's own example) passes our verifier."""
    from jwcrypto import jwk, jws

    good = credential(wit(now=_now()))
    ours = good.headers(URI, "GET")[WPT_HEADER]
    check = jws.JWS()
    check.deserialize(ours)
    check.verify(jwk.JWK(**CNF))
    assert check.jose_header == {"alg": "ES256", "typ": "wpt+jwt"}
    payload = json.loads(check.payload)
    assert payload["aud"] == URI and payload["wth"] == token_hash(good.token)

    theirs = jws.JWS(
        json.dumps(
            {
                "aud": URI,
                "exp": int(_now().timestamp()) + 30,
                "jti": "from-jwcrypto",
                "wth": token_hash(good.token),
            }
        )
    )
    theirs.add_signature(
        jwk.JWK(**private_key_to_jwk(WORKLOAD_KEY)),
        protected=json.dumps({"alg": "ES256", "typ": "wpt+jwt"}),
    )
    headers = {WIT_HEADER: good.token, WPT_HEADER: theirs.serialize(compact=True)}
    assert verify_request("POST", URI, headers, BUNDLES, ReplayCache()).spiffe_id == CALLER
