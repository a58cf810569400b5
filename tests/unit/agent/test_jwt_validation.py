from datetime import timedelta

import pytest

from insignia.agent.workloadapi.jwt_validation import JwtValidator, cost
from insignia.bundle import Bundle, BundleSet
from insignia.jwtsvid import AudienceMismatch, TokenExpired, UnknownKeyId
from insignia.keys import KeyType, generate_key
from insignia.server.ca.jwt_signing import sign_jwt_svid
from insignia.spiffeid import SpiffeId
from tests.unit.common import NOW, TD

SUB = SpiffeId.parse("spiffe://example.org/api")


def setup():
    key = generate_key(KeyType.EC_P256)
    token = sign_jwt_svid(SUB, ["orders"], timedelta(minutes=5), key, "k1", now=NOW)
    bundles = BundleSet.of([Bundle(TD, jwt_authorities={"k1": key.public_key()})])
    return token, bundles


def test_a_verified_token_is_rechecked_for_time_and_audience():
    token, bundles = setup()
    validator = JwtValidator()
    assert validator.validate(token, bundles, "orders", NOW).spiffe_id == SUB
    assert validator.validate(token, bundles, "orders", NOW + timedelta(minutes=1)).spiffe_id == SUB
    with pytest.raises(AudienceMismatch):
        validator.validate(token, bundles, "billing", NOW)
    with pytest.raises(TokenExpired):
        validator.validate(token, bundles, "orders", NOW + timedelta(minutes=6))


def test_a_new_bundle_without_the_key_forces_a_full_check():
    token, bundles = setup()
    validator = JwtValidator()
    validator.validate(token, bundles, "orders", NOW)
    rotated = BundleSet.of(
        [Bundle(TD, jwt_authorities={"k2": generate_key(KeyType.EC_P256).public_key()})]
    )
    with pytest.raises(UnknownKeyId):
        validator.validate(token, rotated, "orders", NOW)


def test_the_cache_is_bounded_by_bytes():
    key = generate_key(KeyType.EC_P256)
    bundles = BundleSet.of([Bundle(TD, jwt_authorities={"k1": key.public_key()})])
    tokens = [
        sign_jwt_svid(SUB, [f"a{i}".ljust(200, "x")], timedelta(minutes=5), key, "k1", now=NOW)
        for i in range(3)
    ]
    validator = JwtValidator(max_bytes=2 * cost(tokens[0]))
    for i, token in enumerate(tokens):
        validator.validate(token, bundles, f"a{i}".ljust(200, "x"), NOW)
    assert len(validator) == 2
