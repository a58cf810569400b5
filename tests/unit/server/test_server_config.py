import re
import types
import typing
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from insignia.daemon.config.loading import ConfigError, validate_config
from insignia.server.config import ServerConfig, load_server_config

SAMPLE = Path(__file__).resolve().parents[3] / "server" / "server.sample.toml"


def server_config(**data: object) -> ServerConfig:
    return validate_config("test.toml", {"trust_domain": "x.org", **data}, ServerConfig)


def test_sample_config_is_valid_and_shows_the_defaults() -> None:
    sample = load_server_config(SAMPLE)
    assert sample == ServerConfig(trust_domain="example.org")


def test_sample_documents_every_key() -> None:
    text = SAMPLE.read_text()
    documented = set(re.findall(r"^#? ?([a-z0-9_]+) = ", text, re.MULTILINE))
    for field in msgspec.structs.fields(ServerConfig):
        name, annotation = field.name, field.type
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # [console]: X | None
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
            assert f"[{name}]" in text, name
            section = {f.name for f in msgspec.structs.fields(annotation)}
            tables = {k for k in section if f"[{name}.{k}]" in text}  # [[...]] included
            documented_keys = section - documented - tables
            assert not documented_keys - {"upstream"}, (name, documented_keys)
        elif name != "node_attestors":
            assert name in documented, name


def test_ttl_warnings_follow_the_ca_guarantee() -> None:
    config = server_config(ca={"ttl": "6h"})  # guarantees 1h
    assert config.ttl_warnings() == []
    long = server_config(ca={"ttl": "1h"}, default_jwt_svid_ttl="5m")
    warnings = long.ttl_warnings()
    assert len(warnings) == 2  # x509 (1h) and agent (1h) exceed 10m; jwt 5m fits
    assert "default_x509_svid_ttl" in warnings[0]
    assert server_config(ca={"ttl": "365d"}).ca.ttl == timedelta(days=365)


def test_ports_must_differ(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('trust_domain = "x.org"\n[agent_api]\nport = 9000\nattestation_port = 9000\n')
    with pytest.raises(ConfigError, match="must differ"):
        load_server_config(path)


def test_database_url_default_and_scheme(tmp_path: Path) -> None:
    config = server_config(data_dir=str(tmp_path))
    assert config.database_url == f"sqlite:///{tmp_path}/datastore.sqlite3"
    path = tmp_path / "s.toml"
    path.write_text('trust_domain = "x.org"\n[database]\nurl = "mysql://x"\n')
    with pytest.raises(ConfigError, match=r"database\.url"):
        load_server_config(path)


def test_jwt_audience_limits_must_keep_tokens_within_the_validator_limit() -> None:
    assert server_config().audience_limits.max_audiences == 16
    assert server_config(jwt_max_audiences=4, jwt_max_audience_bytes=1024).audience_limits
    with pytest.raises(ConfigError, match=r"allow tokens of up to .* over the 16384"):
        server_config(jwt_max_audiences=64)
    with pytest.raises(ConfigError, match="jwt_max_audience_bytes"):
        server_config(jwt_max_audience_bytes=0)
