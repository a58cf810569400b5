"""TOML config files loaded into strict pydantic models, with one-line errors naming the key.

Both daemons load their config through `load_toml`. Any problem (missing file, TOML syntax,
unknown key, bad value) becomes a `ConfigError` whose message is one line of the form
`<file>: <dotted.key>: <problem>`, which the CLIs print to stderr before exiting with
`CONFIG_EXIT_CODE` (2, like a usage error).
"""

from __future__ import annotations

import ipaddress
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from insignia.durations import parse_duration
from insignia.logs import LogFormat, LogLevel
from insignia.spiffeid import InvalidSpiffeId, TrustDomain

CONFIG_EXIT_CODE = 2

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(Exception):
    """A config file that cannot be used; `key` is the dotted path ("" for the whole file)."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + " ".join(problem.split()))
        self.path = Path(path)
        self.key = key
        self.problem = problem


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be greater than zero")
    return value


class LogSection(StrictModel):
    """The `[log]` table both daemons share; applied with `insignia.logs.configure_logging`."""

    level: LogLevel = "info"
    format: LogFormat = "json"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
"""A config duration: seconds as a number or a string like "1h30m" (see insignia.durations)."""

PositiveDuration = Annotated[Duration, AfterValidator(_positive)]


def _trust_domain(value: str) -> str:
    try:
        TrustDomain.parse(value)
    except InvalidSpiffeId as exc:
        raise ValueError(exc.reason) from exc
    return value


TrustDomainName = Annotated[str, AfterValidator(_trust_domain)]
"""A trust domain name ("example.org"), checked by `TrustDomain.parse`; kept as text."""


def _host(value: str) -> str:
    if value == "localhost":
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError("expected an IP address or localhost") from exc
    return value


def _listen_address(value: str) -> str:
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected host:port, e.g. 127.0.0.1:8080, or an empty string to disable")
    _host(host.strip("[]"))
    return value


Host = Annotated[str, AfterValidator(_host)]
"""An address to bind: an IP address (v4 or v6) or "localhost"; no names that need DNS."""

ListenAddress = Annotated[str, AfterValidator(_listen_address)]
"""A listener's "host:port" ("[::1]:80" for IPv6; port 0 picks a free one), or "" for none."""


def _describe(error: Any) -> tuple[str, str]:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return key, "unknown key"
    if kind == "missing":
        return key, "required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if kind not in ("model_type", "dict_type") and not isinstance(value, dict | list):
        message = f"{message} (got {value!r})"
    return key, message


def validate_config(path: Path | str, data: dict[str, Any], model: type[Model]) -> Model:
    """Validate already-parsed data, reporting the first problem as a `ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        key, problem = _describe(exc.errors()[0])
        raise ConfigError(path, key, problem) from exc


def load_toml(path: Path | str, model: type[Model]) -> Model:
    """Read and validate the TOML file at `path` into `model`, or raise a `ConfigError`."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read config file: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"invalid TOML: {exc}") from exc
    return validate_config(file, data, model)
