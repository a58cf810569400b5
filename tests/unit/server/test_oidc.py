"""OIDC discovery's pure parts: the issuer and listener rules, the documents, the routes."""

from __future__ import annotations

import json

import pytest

from insignia.bundle import Bundle
from insignia.daemon.config.loading import ConfigError, validate_config
from insignia.keys import KeyType, generate_key
from insignia.server.config import ServerConfig
from insignia.server.oidc.discovery import OidcDiscovery, documents
from insignia.server.oidc.policy import check_issuer, check_listener
from tests.unit.common import TD, make_ca


@pytest.mark.parametrize(
    "issuer",
    [
        "https://oidc.example.org",
        "https://oidc.example.org:8443/td/a",
        "https://oidc.example.org/",
        "http://127.0.0.1:8090",
        "http://localhost",
        "http://[::1]:80",
    ],
)
def test_issuers_that_relying_parties_accept(issuer: str) -> None:
    check_issuer(issuer, ())


@pytest.mark.parametrize(
    ("issuer", "problem"),
    [
        ("oidc.example.org", "must be an https:// URL with a host"),
        ("spiffe://example.org", "must be an https:// URL with a host"),
        ("https://", "must be an https:// URL with a host"),
        ("http://oidc.example.org", "http is allowed for a loopback host only"),
        ("http://10.0.0.1", "http is allowed for a loopback host only"),
        ("https://oidc.example.org/?a=b", "must have no user, query or fragment"),
        ("https://oidc.example.org/#top", "must have no user, query or fragment"),
        ("https://user@oidc.example.org", "must have no user, query or fragment"),
        ("https://oidc.example.org:99999", "is not a URL"),
    ],
)
def test_issuers_refused_say_why(issuer: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_issuer(issuer, ())


def test_the_issuer_host_must_be_a_served_domain() -> None:
    check_issuer("https://OIDC.example.org.:443", ["oidc.example.org"])
    with pytest.raises(ValueError, match=r"its host a\.example is not among"):
        check_issuer("https://a.example", ["oidc.example.org", "b.example"])


@pytest.mark.parametrize(
    ("address", "certificate", "allowed"),
    [
        ("127.0.0.1:8090", False, True),
        ("127.0.0.2:8090", False, True),
        ("[::1]:8090", False, True),
        ("localhost:8090", False, True),
        ("unix:/run/insignia/oidc.sock", False, True),
        ("0.0.0.0:8090", False, False),
        ("[::]:8090", False, False),
        ("192.0.2.1:443", False, False),
        ("0.0.0.0:443", True, True),
        ("", False, True),
    ],
)
def test_plain_http_only_on_the_loopback_or_a_unix_socket(
    address: str, certificate: bool, allowed: bool
) -> None:
    if allowed:
        check_listener(address, certificate)
    else:
        with pytest.raises(ValueError, match="would serve plain HTTP beyond this host"):
            check_listener(address, certificate)


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        ({"oidc_discovery": {"address": "0.0.0.0:8090"}, "jwt_issuer": "https://a.org"},
         "oidc_discovery", "would serve plain HTTP beyond this host"),
        ({"oidc_discovery": {"address": "127.0.0.1:8090"}}, "",
         "jwt_issuer: required when oidc_discovery.address is set"),
        ({"oidc_discovery": {"address": "unix:relative"}}, "oidc_discovery.address",
         "expected unix:/absolute/path"),
        ({"oidc_discovery": {"address": "oidc.example.org:443"}}, "oidc_discovery.address",
         "expected an IP address or localhost"),
        ({"oidc_discovery": {"domains": ["*.example.org"]}}, "oidc_discovery.domains.0",
         "expected a DNS name or an IP address"),
        ({"oidc_discovery": {"address": "127.0.0.1:1", "cert_file": "/c.pem"}},
         "oidc_discovery", "cert_file and key_file go together"),
        ({"jwt_issuer": "http://oidc.example.org"}, "", "http is allowed for a loopback host"),
        ({"jwt_issuer": "https://a.org", "oidc_discovery": {"domains": ["b.org"]}}, "",
         "its host a.org is not among oidc_discovery.domains"),
    ],
)  # fmt: skip
def test_bad_oidc_settings_are_one_line_naming_the_key(
    data: dict[str, object], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config("s.toml", {"trust_domain": "x.org", **data}, ServerConfig)
    assert info.value.key == key
    assert problem in str(info.value)
    assert "\n" not in str(info.value)


def bundle_with_keys() -> Bundle:
    keys = {
        "ec256": generate_key(KeyType.EC_P256).public_key(),
        "ec384": generate_key(KeyType.EC_P384).public_key(),
        "rsa": generate_key(KeyType.RSA_2048).public_key(),
    }
    return Bundle(TD, (make_ca().certificate,), keys, sequence=4)


def test_the_documents_carry_the_jwt_keys_only_with_their_algorithms() -> None:
    bundle = bundle_with_keys()
    docs = documents("https://oidc.example.org/td", bundle)
    discovery = json.loads(docs.discovery)
    assert discovery == {
        "issuer": "https://oidc.example.org/td",
        "jwks_uri": "https://oidc.example.org/td/keys",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "ES384", "RS256"],
    }
    keys = {k["kid"]: k for k in json.loads(docs.keys)["keys"]}
    assert {kid: (k["alg"], k["use"]) for kid, k in keys.items()} == {
        "ec256": ("ES256", "sig"),
        "ec384": ("ES384", "sig"),
        "rsa": ("RS256", "sig"),
    }
    assert not any("x5c" in k for k in keys.values())  # the X.509 authority is not a JWT key
    assert Bundle.parse_jwks(TD, docs.keys).jwt_authorities == bundle.jwt_authorities


def test_routes_hang_below_the_issuer_path_and_follow_the_published_bundle() -> None:
    published = [b""]
    app = OidcDiscovery("https://oidc.example.org/td/", TD, lambda: published[0])
    assert app.handle("GET", "/td/keys").status == 503  # nothing published yet
    published[0] = bundle_with_keys().to_spiffe()
    answer = app.handle("GET", "/td/.well-known/openid-configuration")
    assert answer.status == 200
    assert json.loads(answer.body)["jwks_uri"] == "https://oidc.example.org/td/keys"
    assert ("cache-control", "public, max-age=60") in answer.headers
    assert app.handle("GET", "/.well-known/openid-configuration").status == 404
    assert app.handle("POST", "/td/keys").status == 405
    published[0] = Bundle(
        TD, jwt_authorities={"only": generate_key(KeyType.EC_P256).public_key()}
    ).to_spiffe()
    assert [k["kid"] for k in json.loads(app.handle("GET", "/td/keys").body)["keys"]] == ["only"]


@pytest.mark.parametrize(
    ("host", "answered"),
    [
        ("oidc.example.org", True),
        ("OIDC.example.org:8443", True),
        ("oidc.example.org.", True),
        ("[::1]:8090", True),
        ("::1", True),
        ("other.example.org", False),
        ("oidc.example.org.evil", False),
        ("oidc.example.org:", False),
        (None, False),
    ],
)
def test_only_the_configured_domains_are_answered(host: str | None, answered: bool) -> None:
    app = OidcDiscovery("https://oidc.example.org", TD, lambda: b"", ["oidc.example.org", "::1"])
    refusal = app.check_host(host)
    if answered:
        assert refusal is None
    else:
        assert refusal is not None and refusal.status == 421
        assert b"is not one of oidc_discovery.domains" in refusal.body


def test_without_domains_any_host_is_answered() -> None:
    assert OidcDiscovery("https://oidc.example.org", TD, lambda: b"").check_host("x") is None
