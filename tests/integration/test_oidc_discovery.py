"""OIDC discovery as a relying party sees it (issue 16, test 5): PyJWT's `PyJWKClient` finds
the keys from the discovery document alone and validates JWT-SVIDs from the Workload API and
`jwt mint`; tokens with an unknown kid, another issuer or from another trust domain are
refused. Also `oidc serve` as a process of its own, Host checks and HTTPS."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from devtools.harness.agent_clients import agent_cli, register
from devtools.harness.agent_process import AgentProcess, merge, to_toml
from devtools.harness.metrics_text import sample
from devtools.harness.ports import free_port
from devtools.harness.server_process import SERVER_BIN, ServerProcess, server_env
from devtools.harness.waiting import wait_for
from devtools.harness.web_pki import write_web_pki
from tests.integration.conftest import ServerFactory

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/openid-configuration"
KEYS_OK = {"code": "200", "route": "keys"}


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, {k.lower(): v for k, v in refused.headers.items()}, refused.read()


def discover(issuer: str, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """The discovery document, as any relying party fetches it from the issuer alone."""
    status, headers, body = get(issuer + WELL_KNOWN, context)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert "max-age=" in headers["cache-control"]
    document: dict[str, Any] = json.loads(body)
    return document


def verify(token: str, issuer: str, audience: str, context: ssl.SSLContext | None = None) -> Any:
    """What a relying party does: discovery, then the JWKS it names, then PyJWT's checks."""
    document = discover(issuer, context)
    client = jwt.PyJWKClient(document["jwks_uri"], ssl_context=context)
    key = client.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=document["id_token_signing_alg_values_supported"],
        audience=audience,
        issuer=document["issuer"],
    )


def mint(server: ServerProcess, spiffe_id: str, audience: str) -> str:
    return server.cli(
        "jwt", "mint", "--spiffe-id", spiffe_id, "--audience", audience
    ).stdout.strip()


def plain_oidc(port: int, host: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
    return {
        "jwt_issuer": f"http://{host}:{port}",
        "oidc_discovery": {"address": f"127.0.0.1:{port}", **extra},
    }


def bundle_kids(server: ServerProcess) -> set[str]:
    document = json.loads(server.cli("bundle", "show", "--format", "spiffe").stdout)
    return {k["kid"] for k in document["keys"] if k["use"] == "jwt-svid"}


def served_kids(issuer: str) -> set[str]:
    status, _, body = get(discover(issuer)["jwks_uri"])
    assert status == 200
    return {k["kid"] for k in json.loads(body)["keys"]}


@pytest.fixture
def oidc_port() -> int:
    return free_port()


@pytest.fixture
def running_server(server_factory: ServerFactory, oidc_port: int) -> ServerProcess:
    """The agent fixtures' server, with OIDC discovery in plain HTTP on the loopback."""
    return server_factory(**plain_oidc(oidc_port))


def test_a_relying_party_discovers_the_keys_and_validates_jwt_svids(
    server_factory: ServerFactory,
    running_server: ServerProcess,
    running_agent: AgentProcess,
    oidc_port: int,
) -> None:
    server, agent, port = running_server, running_agent, oidc_port
    issuer = f"http://127.0.0.1:{port}"
    warning = [r for r in server.log_lines() if r.get("event") == "oidc_discovery.plain_http"]
    assert warning and warning[0]["level"] == "warning", server.log_tail()

    document = discover(issuer)
    assert document == {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/keys",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    }
    status, headers, body = get(document["jwks_uri"])
    assert status == 200 and "max-age=" in headers["cache-control"]
    keys = json.loads(body)["keys"]
    assert {k["kid"] for k in keys} == bundle_kids(server)
    assert all(k["use"] == "sig" and k["alg"] == "ES256" and "x5c" not in k for k in keys)

    # Through the agent's Workload API.
    register(server, agent, "/api", f"unix:uid:{os.getuid()}")
    fetched = agent_cli(
        "api", "fetch", "jwt", "--socket", str(agent.socket_path), "--audience", "orders"
    )
    assert fetched.returncode == 0, fetched.stderr
    token = fetched.stdout.splitlines()[1].strip()
    claims = verify(token, issuer, "orders")
    assert claims["sub"] == "spiffe://example.org/api" and claims["iss"] == issuer

    # Through `jwt mint`.
    minted = mint(server, "spiffe://example.org/batch", "reports")
    assert verify(minted, issuer, "reports")["sub"] == "spiffe://example.org/batch"
    with pytest.raises(jwt.InvalidAudienceError):
        verify(minted, issuer, "someone-else")

    # A token whose kid the JWKS does not hold (a key of our own making, same claims).
    header = jwt.get_unverified_header(minted)
    payload = jwt.decode(minted, options={"verify_signature": False})
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(payload, stranger, "ES256", headers={"kid": "not-" + header["kid"]})
    with pytest.raises(jwt.PyJWKClientError, match="Unable to find a signing key"):
        verify(forged, issuer, "reports")

    # Another trust domain's server signs with keys this JWKS does not hold.
    other = server_factory(name="b", trust_domain="b.test", jwt_issuer=issuer)
    foreign = mint(other, "spiffe://b.test/batch", "reports")
    with pytest.raises(jwt.PyJWKClientError, match="Unable to find a signing key"):
        verify(foreign, issuer, "reports")

    # Another issuer with a key the JWKS does hold: the same server (same keys, on disk)
    # restarted under a different issuer signs tokens the first issuer's clients refuse.
    server.stop()
    renamed = f"http://localhost:{port}"
    server.extra_config = merge(dict(server.extra_config), {"jwt_issuer": renamed})
    server.write_config()
    server.start()
    elsewhere = mint(server, "spiffe://example.org/batch", "reports")
    assert jwt.get_unverified_header(elsewhere)["kid"] == header["kid"]
    assert verify(elsewhere, renamed, "reports")["iss"] == renamed
    with pytest.raises(jwt.InvalidIssuerError):
        verify(minted, renamed, "reports")


def test_only_the_configured_domains_are_answered(server_factory: ServerFactory) -> None:
    port = free_port()
    server_factory(**plain_oidc(port, host="localhost", domains=["localhost"]))

    def request(host: str | None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.putrequest("GET", WELL_KNOWN, skip_host=True)
            if host is not None:
                conn.putheader("Host", host)
            conn.endheaders()
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    status, body = request(f"localhost:{port}")
    assert status == 200 and json.loads(body)["issuer"] == f"http://localhost:{port}"
    status, body = request("evil.example")
    assert status == 421
    assert body == b"misdirected request: 'evil.example' is not one of oidc_discovery.domains\n"
    # The issuer never follows the Host header: an accepted Host changes nothing in it.
    status, body = request("LOCALHOST.")
    assert status == 200 and json.loads(body)["issuer"] == f"http://localhost:{port}"


def test_https_with_the_configured_certificate(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    pki = write_web_pki(tmp_path / "pki", ("localhost",))
    port = free_port()
    issuer = f"https://localhost:{port}"
    server = server_factory(
        jwt_issuer=issuer,
        oidc_discovery={
            "address": f"127.0.0.1:{port}",
            "cert_file": str(pki.cert_file),
            "key_file": str(pki.key_file),
            "domains": ["localhost"],
        },
    )
    assert not [r for r in server.log_lines() if r.get("event") == "oidc_discovery.plain_http"]
    trusted = ssl.create_default_context(cafile=str(pki.ca_file))
    token = mint(server, "spiffe://example.org/web", "gateway")
    assert verify(token, issuer, "gateway", trusted)["sub"] == "spiffe://example.org/web"
    # Only the configured certificate's CA vouches for it, as curl checks too.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        discover(issuer, ssl.create_default_context(cafile=str(server.write_bundle())))
    curl = ["curl", "-sS", "--max-time", "10", "--cacert", str(pki.ca_file), issuer + WELL_KNOWN]
    answer = subprocess.run(curl, capture_output=True, text=True, timeout=20)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["jwks_uri"] == f"{issuer}/keys"

    # New files apply to the next connection, without a restart.
    renewed = write_web_pki(tmp_path / "pki2", ("localhost",))
    pki.key_file.write_bytes(renewed.key_file.read_bytes())
    pki.cert_file.write_bytes(renewed.cert_file.read_bytes())
    assert discover(issuer, ssl.create_default_context(cafile=str(renewed.ca_file)))


class OidcProvider:
    """`insignia-server oidc serve` on a copy of a server's config, with its own listeners
    and a data_dir of its own (no CA keys in it): only the datastore is shared."""

    def __init__(self, server: ServerProcess, workdir: Path, port: int) -> None:
        self.port, self.health_port = port, free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path, self.log_path = workdir / "oidc.toml", workdir / "oidc.log"
        database = server.database_url or f"sqlite:///{server.data_dir / 'datastore.sqlite3'}"
        config = merge(
            server.config(),
            {
                "data_dir": workdir / "data",
                "database": {"url": database},
                "health": {"address": f"127.0.0.1:{self.health_port}"},
                "metrics": {"address": f"127.0.0.1:{self.health_port}"},
                "cluster": {"poll_interval": "200ms"},
                **plain_oidc(self.port),
            },
        )
        self.config_path.write_text(to_toml(config))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(SERVER_BIN), "oidc", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_env(),
            )
        wait_for(self.ready, 30, "oidc serve to become ready")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"oidc serve exited:\n{self.log_path.read_text()}")
        try:
            return get(f"http://127.0.0.1:{self.health_port}/ready")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        assert self.process.wait(20) == 0, self.log_path.read_text()


ProviderFor = Callable[[ServerProcess, int], OidcProvider]


@pytest.fixture
def provider_for(tmp_path: Path) -> Iterator[ProviderFor]:
    """`start(server, port)` -> `oidc serve` for `server`'s datastore on 127.0.0.1:port."""
    started: list[OidcProvider] = []

    def start(server: ServerProcess, port: int) -> OidcProvider:
        started.append(OidcProvider(server, tmp_path / f"oidc{len(started)}", port))
        return started[-1]

    yield start
    for provider in started:
        if provider.process.poll() is None:
            provider.process.kill()
            provider.process.wait()


def test_oidc_serve_follows_a_jwt_key_rotation_from_the_datastore(
    server_factory: ServerFactory, provider_for: ProviderFor, backend: str, tmp_path: Path
) -> None:
    port = free_port()
    server = server_factory(backend=backend, jwt_issuer=f"http://127.0.0.1:{port}")
    provider = provider_for(server, port)
    assert not (tmp_path / "oidc0" / "data").exists()  # no key files, no data_dir at all

    assert served_kids(provider.issuer) == bundle_kids(server)
    token = mint(server, "spiffe://example.org/job", "aud")
    assert verify(token, provider.issuer, "aud")["sub"] == "spiffe://example.org/job"

    before = served_kids(provider.issuer)
    server.cli("authority", "jwt", "prepare")
    wait_for(lambda: len(served_kids(provider.issuer)) > len(before), 15, "the prepared key")
    assert served_kids(provider.issuer) == bundle_kids(server)
    server.cli("authority", "jwt", "activate")
    rotated = mint(server, "spiffe://example.org/job", "aud")
    new_kid = jwt.get_unverified_header(rotated)["kid"]
    assert new_kid not in before
    assert verify(rotated, provider.issuer, "aud")["sub"] == "spiffe://example.org/job"

    # As the bundle does: a tainted key is still served, a revoked one is gone.
    (old_kid,) = before
    server.cli("authority", "jwt", "taint", old_kid)
    assert old_kid in bundle_kids(server) and old_kid in served_kids(provider.issuer)
    server.cli("authority", "jwt", "revoke", old_kid)
    wait_for(lambda: old_kid not in served_kids(provider.issuer), 15, "the revoked key to go")
    assert served_kids(provider.issuer) == bundle_kids(server) == {new_kid}
    with pytest.raises(jwt.PyJWKClientError, match="Unable to find a signing key"):
        verify(token, provider.issuer, "aud")
    metrics = get(f"http://127.0.0.1:{provider.health_port}/metrics")[2].decode()
    assert sample(metrics, "insignia_oidc_discovery_keys") == 1
    assert (sample(metrics, "insignia_oidc_discovery_requests_total", KEYS_OK) or 0) >= 5
    provider.stop()


def test_behind_a_proxy_on_a_unix_socket_the_issuer_comes_from_the_config(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A TLS proxy in front forwards whatever Host it was sent: the documents still name the
    configured issuer, and the Host check still applies."""
    sock = tmp_path / "oidc.sock"
    server = server_factory(
        jwt_issuer="https://oidc.example.org/insignia",
        oidc_discovery={"address": f"unix:{sock}", "domains": ["oidc.example.org"]},
    )
    assert server.addresses["oidc_discovery"] == f"unix:{sock}"

    def curl(path: str, host: str) -> tuple[str, str]:
        answer = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--unix-socket", str(sock), "-H", f"Host: {host}",
             "-w", "\n%{http_code}", f"http://proxied{path}"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert answer.returncode == 0, answer.stderr
        body, _, code = answer.stdout.rpartition("\n")
        return code, body

    code, body = curl("/insignia" + WELL_KNOWN, "oidc.example.org")
    assert code == "200"
    assert json.loads(body)["jwks_uri"] == "https://oidc.example.org/insignia/keys"
    code, body = curl("/insignia/keys", "oidc.example.org")
    assert code == "200" and {k["kid"] for k in json.loads(body)["keys"]} == bundle_kids(server)
    assert curl(WELL_KNOWN, "oidc.example.org")[0] == "404"  # outside the issuer's path
    assert curl("/insignia/keys", "attacker.example")[0] == "421"

    def requests(route: str, code: str) -> float | None:
        return server.metric(
            "insignia_server_oidc_discovery_requests_total", {"code": code, "route": route}
        )

    assert requests("discovery", "200") == 1
    assert requests("keys", "200") == 1
    assert requests("other", "404") == 1
    assert requests("host", "421") == 1
    assert server.metric("insignia_server_oidc_discovery_keys") == len(bundle_kids(server))


def one_line_refusal(*args: str) -> str:
    result = subprocess.run(
        [str(SERVER_BIN), *args], capture_output=True, text=True, timeout=60, env=server_env()
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_bad_settings_stop_run_validate_and_oidc_serve_with_one_line(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory(
        start=False,
        log={"level": "error"},  # stderr then holds only what the operator must read
        jwt_issuer="https://oidc.example.org",
        oidc_discovery={"address": "0.0.0.0:0"},
    )
    config = str(server.config_path)
    for command in ("run", "validate"):
        assert "would serve plain HTTP beyond this host" in one_line_refusal(
            command, "--config", config
        )
    assert "would serve plain HTTP" in one_line_refusal("oidc", "serve", "--config", config)

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    server.extra_config = merge(
        dict(server.extra_config),
        {"oidc_discovery": {"cert_file": str(garbage), "key_file": str(garbage)}},
    )
    server.write_config()
    for command in ("validate", "run"):
        line = one_line_refusal(command, "--config", config)
        assert f"oidc_discovery.cert_file: {garbage} with key_file {garbage}: cannot load" in line

    # oidc serve without an address, and without the server's database.
    server.extra_config = {"log": {"level": "error"}, "jwt_issuer": "https://oidc.example.org"}
    server.write_config()
    line = one_line_refusal("oidc", "serve", "--config", config)
    assert 'oidc_discovery.address: is "": oidc serve needs an address' in line
    absent = tmp_path / "absent.sqlite3"
    server.extra_config = merge(
        dict(server.extra_config),
        {"oidc_discovery": {"address": "127.0.0.1:0"}, "database": {"url": f"sqlite:///{absent}"}},
    )
    server.write_config()
    line = one_line_refusal("oidc", "serve", "--config", config)
    assert f"database.url: no SQLite database at {absent}" in line
    assert not absent.exists()

    # The database the failed `run` above created belongs to example.org.
    server.extra_config = merge(
        dict(server.extra_config),
        {"database": {"url": f"sqlite:///{server.data_dir / 'datastore.sqlite3'}"}},
    )
    server.trust_domain = "other.org"
    server.write_config()
    line = one_line_refusal("oidc", "serve", "--config", config)
    assert "trust_domain: other.org differs from example.org" in line
