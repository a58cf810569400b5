"""Key types, their encodings, and the signature algorithm chosen for each."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from insignia.keys import (
    InvalidKey,
    KeyType,
    PrivateKey,
    generate_key,
    jwt_algorithm,
    key_type_of,
    private_key_from_der,
    private_key_from_pem,
    private_key_to_der,
    private_key_to_pem,
    public_key_fingerprint,
    public_key_from_der,
    public_key_to_der,
    x509_signature_hash,
)


@pytest.fixture(scope="module")
def keys() -> dict[KeyType, PrivateKey]:
    return {kt: generate_key(kt) for kt in KeyType}


def test_key_type_values_are_the_config_names() -> None:
    assert [kt.value for kt in KeyType] == ["ec-p256", "ec-p384", "rsa-2048", "rsa-4096"]
    assert KeyType("ec-p384") is KeyType.EC_P384


@pytest.mark.parametrize("kt", list(KeyType))
def test_generated_key_has_its_type(keys: dict[KeyType, PrivateKey], kt: KeyType) -> None:
    key = keys[kt]
    assert key_type_of(key) is kt
    assert key_type_of(key.public_key()) is kt


@pytest.mark.parametrize("kt", list(KeyType))
def test_private_key_round_trips_pkcs8(keys: dict[KeyType, PrivateKey], kt: KeyType) -> None:
    key = keys[kt]
    der = private_key_to_der(key)
    pem = private_key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, not SEC1/PKCS#1
    for decoded in (private_key_from_der(der), private_key_from_pem(pem)):
        assert decoded.public_key() == key.public_key()
        assert private_key_to_der(decoded) == der


@pytest.mark.parametrize("kt", list(KeyType))
def test_public_key_round_trips_spki(keys: dict[KeyType, PrivateKey], kt: KeyType) -> None:
    pub = keys[kt].public_key()
    assert public_key_from_der(public_key_to_der(pub)) == pub


def test_fingerprint_is_stable_hex_sha256(keys: dict[KeyType, PrivateKey]) -> None:
    a, b = keys[KeyType.EC_P256].public_key(), keys[KeyType.EC_P384].public_key()
    fp = public_key_fingerprint(a)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == public_key_fingerprint(public_key_from_der(public_key_to_der(a)))
    assert fp != public_key_fingerprint(b)


def _pkcs8(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("der", "message"),
    [
        (_pkcs8(ed25519.Ed25519PrivateKey.generate()), "unsupported private key type"),
        (_pkcs8(ec.generate_private_key(ec.SECP521R1())), "unsupported EC curve secp521r1"),
        (_pkcs8(rsa.generate_private_key(65537, 1024)), "unsupported RSA key size 1024"),
        (b"\x30\x03\x02\x01\x00", "not an unencrypted"),
        (b"", "not an unencrypted"),
    ],
    ids=["ed25519", "p521", "rsa1024", "garbage", "empty"],
)
def test_unsupported_or_garbage_private_keys_are_refused(der: bytes, message: str) -> None:
    with pytest.raises(InvalidKey, match=message):
        private_key_from_der(der)


def test_encrypted_pem_is_refused(keys: dict[KeyType, PrivateKey]) -> None:
    pem = keys[KeyType.EC_P256].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(InvalidKey, match="not an unencrypted PEM"):
        private_key_from_pem(pem)


def test_unsupported_public_key_is_refused() -> None:
    der = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(InvalidKey, match="unsupported public key type"):
        public_key_from_der(der)
    with pytest.raises(InvalidKey, match="SubjectPublicKeyInfo"):
        public_key_from_der(b"junk")


@pytest.mark.parametrize(
    ("kt", "asked", "chosen"),
    [
        (KeyType.EC_P256, None, "ES256"),
        (KeyType.EC_P384, None, "ES384"),
        (KeyType.RSA_2048, None, "RS256"),
        (KeyType.RSA_4096, None, "RS256"),
        (KeyType.EC_P256, "ES256", "ES256"),
        (KeyType.RSA_2048, "PS256", "PS256"),
        (KeyType.RSA_2048, "RS512", "RS512"),
        (KeyType.RSA_4096, "PS384", "PS384"),
    ],
)
def test_jwt_algorithm_choice(
    keys: dict[KeyType, PrivateKey], kt: KeyType, asked: str | None, chosen: str
) -> None:
    assert jwt_algorithm(keys[kt], asked) == chosen
    assert jwt_algorithm(keys[kt].public_key(), asked) == chosen


@pytest.mark.parametrize(
    ("kt", "asked"),
    [
        (KeyType.EC_P256, "ES384"),
        (KeyType.EC_P384, "ES256"),
        (KeyType.EC_P256, "RS256"),
        (KeyType.RSA_2048, "ES256"),
        (KeyType.RSA_2048, "HS256"),
        (KeyType.EC_P256, "none"),
        (KeyType.RSA_2048, "EdDSA"),
    ],
)
def test_jwt_algorithm_that_does_not_fit_the_key_is_refused(
    keys: dict[KeyType, PrivateKey], kt: KeyType, asked: str
) -> None:
    with pytest.raises(InvalidKey, match=f"{asked!r} does not fit a {kt.value} key"):
        jwt_algorithm(keys[kt], asked)


@pytest.mark.parametrize(
    ("kt", "hash_type"),
    [
        (KeyType.EC_P256, hashes.SHA256),
        (KeyType.EC_P384, hashes.SHA384),
        (KeyType.RSA_2048, hashes.SHA256),
        (KeyType.RSA_4096, hashes.SHA256),
    ],
)
def test_certificate_hash_matches_key_strength(
    keys: dict[KeyType, PrivateKey], kt: KeyType, hash_type: type
) -> None:
    assert isinstance(x509_signature_hash(keys[kt]), hash_type)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_private_jwks_round_trip_and_another_library_reads_them(key_type: KeyType) -> None:
    from jwcrypto import jwk

    from insignia.keys import private_key_from_jwk, private_key_to_jwk

    key = generate_key(key_type)
    encoded = private_key_to_jwk(key)
    back, alg = private_key_from_jwk(encoded)
    assert back.private_numbers() == key.private_numbers()
    natural = {KeyType.EC_P256: "ES256", KeyType.EC_P384: "ES384"}.get(key_type, "RS256")
    assert alg == encoded["alg"] == natural
    theirs = jwk.JWK(**encoded)
    assert (
        theirs.has_private
        and theirs.thumbprint()
        == jwk.JWK(
            **{k: v for k, v in encoded.items() if k in ("kty", "crv", "x", "y", "n", "e")}
        ).thumbprint()
    )


def test_a_private_jwk_whose_halves_differ_is_refused() -> None:
    from insignia.keys import private_key_from_jwk, private_key_to_jwk

    one, other = generate_key(KeyType.EC_P256), generate_key(KeyType.EC_P256)
    mixed = {**private_key_to_jwk(one), "d": private_key_to_jwk(other)["d"]}
    with pytest.raises(InvalidKey, match="do not match the public key"):
        private_key_from_jwk(mixed)
    with pytest.raises(InvalidKey, match="'alg'"):
        private_key_from_jwk({k: v for k, v in private_key_to_jwk(one).items() if k != "alg"})
