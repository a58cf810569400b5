"""`web_ca_file`: an https_web relationship trusts its endpoint by the roots it names."""

from pathlib import Path

import pytest

from devtools.harness.web_pki import write_web_pki
from insignia.daemon.config.loading import ConfigError, StartupRefused, validate_config
from insignia.server.config import ServerConfig
from insignia.server.federation.fetch import FetchFailed, client_context
from insignia.server.federation.relationship import configured_relationships
from insignia.server.validate import check_server_config

URL = "https://bundles.b.test:8443/"


def config(tmp_path: Path, **relationship: object) -> ServerConfig:
    table = {"trust_domain": "b.test", "bundle_endpoint_url": URL, **relationship}
    data = {"trust_domain": "a.test", "federation": {"federates_with": [table]}}
    return validate_config(tmp_path / "server.toml", data, ServerConfig)


def test_the_relationship_trusts_only_the_named_roots(tmp_path: Path) -> None:
    pki = write_web_pki(tmp_path, ("bundles.b.test",))
    loaded = config(tmp_path, profile="https_web", web_ca_file=str(pki.ca_file))
    [relationship] = configured_relationships(loaded.federation.federates_with)
    assert relationship.web_ca_file == pki.ca_file
    roots = client_context(relationship, None).get_ca_certs()
    assert [dict(r["subject"][0])["commonName"] for r in roots] == ["insignia test web root"]


def test_web_ca_file_is_for_https_web_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="web_ca_file is for https_web only"):
        config(
            tmp_path,
            endpoint_spiffe_id="spiffe://b.test/insignia/server",
            web_ca_file=str(tmp_path / "ca.pem"),
        )


@pytest.mark.parametrize(("content", "cause"), [(None, "No such file"), (b"junk", "no PEM")])
def test_an_unusable_web_ca_file_stops_the_start_naming_the_key(
    tmp_path: Path, content: bytes | None, cause: str
) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_bytes(content)
    loaded = config(tmp_path, profile="https_web", web_ca_file=str(ca_file))
    with pytest.raises(StartupRefused, match=cause) as refused:
        configured_relationships(loaded.federation.federates_with)
    assert refused.value.key == "federation.federates_with.0.web_ca_file"


def test_validate_reads_the_web_ca_file_as_run_does(tmp_path: Path) -> None:
    config_path = tmp_path / "server.toml"
    config_path.write_text(
        'trust_domain = "a.test"\n[[federation.federates_with]]\n'
        f'trust_domain = "b.test"\nbundle_endpoint_url = "{URL}"\nprofile = "https_web"\n'
        f'web_ca_file = "{tmp_path / "missing.pem"}"\n'
    )
    with pytest.raises(ConfigError) as refused:
        check_server_config(config_path)
    assert str(refused.value) == (
        f"{config_path}: federation.federates_with.0.web_ca_file: "
        f"{tmp_path / 'missing.pem'}: No such file or directory"
    )


def test_a_web_ca_file_gone_after_the_start_fails_the_fetch_in_one_line(tmp_path: Path) -> None:
    pki = write_web_pki(tmp_path, ("bundles.b.test",))
    loaded = config(tmp_path, profile="https_web", web_ca_file=str(pki.ca_file))
    [relationship] = configured_relationships(loaded.federation.federates_with)
    pki.ca_file.unlink()
    with pytest.raises(FetchFailed, match=r"^web_ca_file .*ca\.pem: .*No such file"):
        client_context(relationship, None)
