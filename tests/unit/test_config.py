from datetime import timedelta
from pathlib import Path

import pytest

from insignia.config import ConfigError, PositiveDuration, StrictModel, load_toml


class Section(StrictModel):
    ttl: PositiveDuration = timedelta(hours=24)
    key_type: str = "ec-p256"


class Sample(StrictModel):
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
        ('trust_domain = "td"\nport = "x"\n', "port", "valid integer"),
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


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file: No such file"):
        load_toml(tmp_path / "absent.toml", Sample)
