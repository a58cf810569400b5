"""Trust bundles: every codec round-trips, and malformed documents are refused by name."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import KeySet
from jwt import PyJWKSet

from insignia.bundle import (
    Bundle,
    BundleSet,
    InvalidBundle,
    JwtPublicKey,
    b64url_decode,
    public_key_from_jwk,
    public_key_to_jwk,
)
from insignia.keys import KeyType, generate_key
from insignia.spiffeid import TrustDomain
from tests.unit.common import TD, WALL_NOW, make_ca

OTHER = TrustDomain("other.test")


def _root(kt: KeyType = KeyType.EC_P256) -> Any:
    return make_ca(now=WALL_NOW, ttl=timedelta(hours=1), key_type=kt).certificate


ROOT_EC = _root()
ROOT_RSA = _root(KeyType.RSA_2048)
JWT_KEYS: dict[str, JwtPublicKey] = {
    "ec256": generate_key(KeyType.EC_P256).public_key(),
    "ec384": generate_key(KeyType.EC_P384).public_key(),
    "rsa": generate_key(KeyType.RSA_2048).public_key(),
}
RSA_1024 = rsa.generate_private_key(65537, 1024).public_key()
FULL = Bundle(TD, (ROOT_EC, ROOT_RSA), JWT_KEYS, sequence=7, refresh_hint=300)


def _leading_zero_x_key() -> ec.EllipticCurvePublicKey:
    """A P-256 key whose x coordinate has a leading zero byte (about 1 in 256)."""
    for _ in range(20000):
        pub = ec.generate_private_key(ec.SECP256R1()).public_key()
        if pub.public_numbers().x < 1 << 248:
            return pub
    raise AssertionError("no short-coordinate key found")


# ----------------------------------------------------------------------------- SPIFFE format


def test_spiffe_format_round_trip_and_shape() -> None:
    doc = json.loads(FULL.to_spiffe())
    assert doc["spiffe_sequence"] == 7 and doc["spiffe_refresh_hint"] == 300
    uses = [k["use"] for k in doc["keys"]]
    assert uses == ["x509-svid", "x509-svid", "jwt-svid", "jwt-svid", "jwt-svid"]
    x5c = doc["keys"][0]["x5c"]
    assert len(x5c) == 1 and base64.b64decode(x5c[0], validate=True)  # standard base64
    assert [k["kid"] for k in doc["keys"][2:]] == ["ec256", "ec384", "rsa"]
    assert Bundle.parse_spiffe(TD, FULL.to_spiffe()) == FULL


def test_spiffe_format_without_hint_omits_it() -> None:
    b = Bundle(TD, (ROOT_EC,))
    doc = json.loads(b.to_spiffe())
    assert "spiffe_refresh_hint" not in doc and doc["spiffe_sequence"] == 0
    assert Bundle.parse_spiffe(TD, b.to_spiffe()) == b


def test_spiffe_format_ignores_unknown_use_and_kty() -> None:
    doc = json.loads(FULL.to_spiffe())
    doc["keys"].append({"use": "x-future-svid", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"})
    doc["keys"].append({"use": "jwt-svid", "kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "e"})
    assert Bundle.parse_spiffe(TD, json.dumps(doc)) == FULL


WIT_KEYS: dict[str, JwtPublicKey] = {"wit1": generate_key(KeyType.EC_P256).public_key()}
WITH_WIT = Bundle(TD, (ROOT_EC,), JWT_KEYS, 3, wit_authorities=WIT_KEYS)


def test_wit_keys_travel_with_their_own_use_and_stay_apart_from_jwt_keys() -> None:
    doc = json.loads(WITH_WIT.to_spiffe())
    assert [(k["use"], k.get("kid")) for k in doc["keys"] if k["use"] == "wit-svid"] == [
        ("wit-svid", "wit1")
    ]
    assert Bundle.parse_spiffe(TD, WITH_WIT.to_spiffe()) == WITH_WIT
    assert "wit1" not in Bundle.parse_jwks(TD, WITH_WIT.jwks()).jwt_authorities
    wit_only = Bundle.parse_wit_jwks(TD, WITH_WIT.wit_jwks())
    assert wit_only.wit_authorities == WIT_KEYS and not wit_only.jwt_authorities
    # a JWT bundle's keys (no use, or jwt-svid) are never WIT keys
    assert not Bundle.parse_wit_jwks(TD, WITH_WIT.jwks()).wit_authorities
    assert json.loads(Bundle(TD).wit_jwks()) == {"keys": []}


def test_a_kid_names_one_key_in_the_whole_bundle() -> None:
    with pytest.raises(InvalidBundle, match="kid 'rsa' names both a JWT and a WIT authority"):
        Bundle(TD, (), JWT_KEYS, wit_authorities={"rsa": WIT_KEYS["wit1"]})
    doc = json.loads(WITH_WIT.to_spiffe())
    for key in doc["keys"]:
        if key.get("kid") == "wit1":
            key["kid"] = "ec256"
    with pytest.raises(InvalidBundle, match="duplicate kid 'ec256'"):
        Bundle.parse_spiffe(TD, json.dumps(doc))


def _doc(**changes: Any) -> dict[str, Any]:
    return {**json.loads(FULL.to_spiffe()), **changes}


def _key(i: int, **changes: Any) -> dict[str, Any]:
    doc = json.loads(FULL.to_spiffe())
    key = {**doc["keys"][i], **changes}
    return {**doc, "keys": [key]}


def _without(i: int, member: str) -> dict[str, Any]:
    doc = json.loads(FULL.to_spiffe())
    del doc["keys"][i][member]
    return {**doc, "keys": [doc["keys"][i]]}


BAD_SPIFFE: list[tuple[str, bytes | str | dict[str, Any] | list[Any], str]] = [
    ("not json", b"{nope", "not JSON"),
    ("not utf-8", b"\xff\xfe", "not JSON"),
    ("array", [], "not a JSON object"),
    ("deeply nested", b"[" * 100_000, "not JSON"),
    ("crv not a string", _key(2, crv=["P-256"]), "unsupported EC crv"),
    ("no keys", {"spiffe_sequence": 1}, "'keys' must be present"),
    ("keys not list", _doc(keys={}), "'keys' must be present"),
    ("key not object", _doc(keys=["x"]), "key 0 is not a JSON object"),
    ("no use", _without(0, "use"), "has no 'use'"),
    ("no x5c", _without(0, "x5c"), "'x5c' must hold exactly one"),
    ("two x5c", _key(0, x5c=["AA==", "AA=="]), "'x5c' must hold exactly one"),
    ("x5c garbage", _key(0, x5c=["!!!"]), "not a base64 DER certificate"),
    ("x5c not a cert", _key(0, x5c=["MAMCAQA="]), "not a base64 DER certificate"),
    (
        "x5c key mismatch",
        _key(0, x=_key(2)["keys"][0]["x"], y=_key(2)["keys"][0]["y"]),
        "do not match the x5c",
    ),
    ("jwt no kid", _without(2, "kid"), "member 'kid' must be a non-empty string"),
    ("jwt empty kid", _key(2, kid=""), "member 'kid' must be a non-empty string"),
    ("duplicate kid", _doc(keys=[_key(2)["keys"][0]] * 2), "duplicate kid 'ec256'"),
    ("short EC coordinate", _key(2, x="AAAA"), "must be 32 bytes for P-256"),
    ("padded base64url", _key(2, x=_key(2)["keys"][0]["x"] + "="), "not unpadded base64url"),
    ("bad crv", _key(2, crv="P-192"), "unsupported EC crv 'P-192'"),
    ("point not on curve", _key(2, y=_key(3)["keys"][0]["x"][:43]), "key 0"),
    (
        "small RSA",
        _key(4, n=public_key_to_jwk(RSA_1024)["n"]),
        "RSA key of 1024 bits; expected >= 2048",
    ),
    ("missing n", _without(4, "n"), "member 'n'"),
    ("sequence string", _doc(spiffe_sequence="1"), "'spiffe_sequence' must be an integer"),
    ("sequence negative", _doc(spiffe_sequence=-1), "sequence -1 must be in"),
    ("sequence bool", _doc(spiffe_sequence=True), "'spiffe_sequence' must be an integer"),
    ("hint zero", _doc(spiffe_refresh_hint=0), "refresh hint 0 must be a positive"),
    ("hint float", _doc(spiffe_refresh_hint=1.5), "'spiffe_refresh_hint' must be an integer"),
]


@pytest.mark.parametrize(
    ("doc", "message"), [c[1:] for c in BAD_SPIFFE], ids=[c[0] for c in BAD_SPIFFE]
)
def test_spiffe_format_rejects(doc: bytes | dict[str, Any] | list[Any], message: str) -> None:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(InvalidBundle, match=message) as info:
        Bundle.parse_spiffe(TD, data)
    assert info.value.trust_domain == TD
    assert str(info.value).startswith("invalid bundle for example.org: ")


@given(
    sequence=st.integers(min_value=0, max_value=2**64 - 1),
    hint=st.none() | st.integers(min_value=1, max_value=2**31),
    kids=st.lists(st.text(min_size=1, max_size=20), max_size=3, unique=True),
)
@settings(max_examples=50, deadline=None)
def test_spiffe_format_round_trips_any_metadata(
    sequence: int, hint: int | None, kids: list[str]
) -> None:
    key = JWT_KEYS["ec256"]
    b = Bundle(TD, (ROOT_EC,), dict.fromkeys(kids, key), sequence, hint)
    assert Bundle.parse_spiffe(TD, b.to_spiffe()) == b


# ----------------------------------------------------------------------------- PEM / DER


def test_pem_and_der_round_trip() -> None:
    b = Bundle(TD, (ROOT_EC, ROOT_RSA))
    assert b.x509_pem().count(b"-----BEGIN CERTIFICATE-----") == 2
    assert Bundle.parse_pem(TD, b.x509_pem()) == b
    assert Bundle.parse_der(TD, b.x509_der()) == b


@pytest.mark.parametrize(
    "data", [b"", b"junk", ROOT_EC.public_bytes(serialization.Encoding.DER)[:-1]]
)
def test_der_rejects_garbage(data: bytes) -> None:
    with pytest.raises(InvalidBundle, match="not concatenated DER certificates"):
        Bundle.parse_der(TD, data)


def test_pem_rejects_garbage() -> None:
    with pytest.raises(InvalidBundle, match="not PEM certificates"):
        Bundle.parse_pem(TD, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


# ----------------------------------------------------------------------------- plain JWKS


def test_jwks_has_kid_and_fixed_length_unpadded_coordinates() -> None:
    short = _leading_zero_x_key()
    b = Bundle(TD, jwt_authorities={**JWT_KEYS, "short": short})
    keys = {k["kid"]: k for k in json.loads(b.jwks())["keys"]}
    assert set(keys) == {"ec256", "ec384", "rsa", "short"}
    for kid, size in (("ec256", 32), ("ec384", 48), ("short", 32)):
        for coord in ("x", "y"):
            text = keys[kid][coord]
            assert "=" not in text and len(b64url_decode(text)) == size
    assert keys["ec384"]["crv"] == "P-384"
    assert keys["rsa"]["kty"] == "RSA" and keys["rsa"]["e"] == "AQAB"
    assert Bundle.parse_jwks(TD, b.jwks()) == b


def test_jwks_is_read_by_pyjwt_and_joserfc() -> None:
    data = FULL.jwks()
    pyjwt = {k.key_id: k.key for k in PyJWKSet.from_json(data.decode()).keys}
    assert pyjwt == dict(FULL.jwt_authorities)
    joserfc = KeySet.import_key_set(json.loads(data))
    assert sorted(k.kid for k in joserfc.keys if k.kid) == sorted(JWT_KEYS)


def test_jwks_skips_encryption_and_unknown_keys_but_requires_kid() -> None:
    keys = json.loads(FULL.jwks())["keys"]
    enc = {**keys[0], "kid": "enc", "use": "enc"}
    okp = {"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "ed"}
    parsed = Bundle.parse_jwks(TD, json.dumps({"keys": [*keys, enc, okp]}))
    assert set(parsed.jwt_authorities) == set(JWT_KEYS)
    no_kid = {k: v for k, v in keys[0].items() if k != "kid"}
    with pytest.raises(InvalidBundle, match="key 0: member 'kid'"):
        Bundle.parse_jwks(TD, json.dumps({"keys": [no_kid]}))
    with pytest.raises(InvalidBundle, match="duplicate kid"):
        Bundle.parse_jwks(TD, json.dumps({"keys": [keys[0], keys[0]]}))
    with pytest.raises(InvalidBundle, match="'keys' must be present"):
        Bundle.parse_jwks(TD, b"{}")


@pytest.mark.parametrize("kid", ["ec256", "ec384", "rsa"])
def test_jwk_codec_round_trips(kid: str) -> None:
    key = JWT_KEYS[kid]
    assert public_key_from_jwk(public_key_to_jwk(key)) == key


# ----------------------------------------------------------------------------- values and sets


def test_bundle_validates_its_fields() -> None:
    with pytest.raises(InvalidBundle, match="key ID '' must be a non-empty string"):
        Bundle(TD, jwt_authorities={"": JWT_KEYS["rsa"]})
    with pytest.raises(InvalidBundle, match="not an EC or RSA public key"):
        Bundle(TD, jwt_authorities={"k": "pem text"})  # type: ignore[dict-item]
    with pytest.raises(InvalidBundle, match="is not a certificate"):
        Bundle(TD, (b"der",))  # type: ignore[arg-type]
    with pytest.raises(InvalidBundle, match="sequence"):
        Bundle(TD, sequence=2**64)


def test_bundle_is_immutable() -> None:
    with pytest.raises(TypeError):
        FULL.jwt_authorities["new"] = JWT_KEYS["rsa"]  # type: ignore[index]
    source = {"k": JWT_KEYS["rsa"]}
    b = Bundle(TD, jwt_authorities=source)
    source["other"] = JWT_KEYS["ec256"]
    assert set(b.jwt_authorities) == {"k"}


def test_bundle_is_a_source_for_its_own_trust_domain_only() -> None:
    assert FULL.get_bundle_for_trust_domain(TD) is FULL
    assert FULL.get_bundle_for_trust_domain(OTHER) is None


def test_bundle_set() -> None:
    other = Bundle(OTHER, (ROOT_EC,))
    s = BundleSet.of([FULL, other])
    assert s.get_bundle_for_trust_domain(TD) is FULL
    assert s.get_bundle_for_trust_domain(TrustDomain("nobody.test")) is None
    assert len(s) == 2 and list(s) == [FULL, other]
    newer = Bundle(TD, (ROOT_RSA,), sequence=8)
    s2 = s.with_bundle(newer)
    assert s2.get_bundle_for_trust_domain(TD) is newer
    assert s.get_bundle_for_trust_domain(TD) is FULL  # the original is unchanged
    with pytest.raises(InvalidBundle, match="two bundles for the same trust domain"):
        BundleSet.of([FULL, newer])
    with pytest.raises(InvalidBundle, match=r"filed under other\.test"):
        BundleSet({OTHER: FULL})
