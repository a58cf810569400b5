import enum
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pytest

from insignia.daemon.config.loading import (
    ConfigError,
    ListenAddress,
    PositiveDuration,
    StrictModel,
    TrustDomainName,
    load_toml,
    validate_config,
)


class Section(StrictModel, frozen=True, kw_only=True):
    ttl: PositiveDuration = timedelta(hours=24)
    key_type: str = "ec-p256"


class Sample(StrictModel, frozen=True, kw_only=True):
    trust_domain: str
    port: int = 8081
    ca: Section = Section()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_loads_and_parses_durations(tmp_path: Path) -> None:
    cfg = load_toml(write(tmp_path, 'trust_domain = "td"\n[ca]\nttl = "1h30m"\n'), Sample)
    assert cfg.trust_domain == "td"
    assert cfg.ca.ttl == timedelta(minutes=90)
    assert cfg.port == 8081


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('trust_domain = "td"\n[ca]\nttll = "1h"\n', "ca.ttll", "unknown key"),
        ('trust_domain = "td"\n[ca]\nttl = "soon"\n', "ca.ttl", "invalid duration 'soon'"),
        ('trust_domain = "td"\n[ca]\nttl = 0\n', "ca.ttl", "greater than zero"),
        ("port = 1\n", "trust_domain", "required key is missing"),
        ('trust_domain = "td"\nport = "x"\n', "port", "expected integer, got string"),
        ('trust_domain = "td"\nca = 3\n', "ca", "expected table, got integer"),
        ('trust_domain = "td"\nport = 1.5\n', "port", "expected integer, got number"),
        ("trust_domain = \n", "", "invalid TOML"),
    ],
)
def test_one_line_errors_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_toml(path, Sample)
    message = str(info.value)
    assert info.value.key == key
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: " if key else f"{path}: ")
    assert problem in message


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Choices(StrictModel, frozen=True, kw_only=True):
    color: Color = Color.RED
    format: Literal["pem", "spiffe"] = "pem"
    section: Section | None = None


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        ({"color": "green"}, "color", "expected one of 'red', 'blue' (got 'green')"),
        ({"format": "der"}, "format", "expected one of 'pem', 'spiffe' (got 'der')"),
        ({"section": {"ttl": "x"}}, "section.ttl", "invalid duration 'x'"),
    ],
)
def test_a_value_outside_its_choices_names_them(
    data: dict[str, object], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config("c.toml", data, Choices)
    assert info.value.key == key
    assert problem in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file: No such file"):
        load_toml(tmp_path / "absent.toml", Sample)


class Listener(StrictModel, frozen=True, kw_only=True):
    trust_domain: TrustDomainName = "example.org"
    address: ListenAddress = "127.0.0.1:8080"


@pytest.mark.parametrize("address", ["", "127.0.0.1:0", "0.0.0.0:65535", "[::1]:80", "localhost:9"])
def test_listen_addresses_that_bind(address: str) -> None:
    assert validate_config("c.toml", {"address": address}, Listener).address == address


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("nowhere", "expected host:port"),
        (":8080", "IP address or localhost"),
        ("example.com:80", "IP address or localhost"),
        ("127.0.0.1:65536", "expected host:port"),
        ("127.0.0.1:http", "expected host:port"),
    ],
)
def test_listen_addresses_that_cannot_bind_name_the_key(address: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config("c.toml", {"address": address}, Listener)
    assert info.value.key == "address"
    assert problem in str(info.value) and repr(address) in str(info.value)


def test_a_bad_trust_domain_names_the_key_and_the_reason() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config("c.toml", {"trust_domain": "Example.org"}, Listener)
    assert info.value.key == "trust_domain"
    assert "upper" in str(info.value).lower()
