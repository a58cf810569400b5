"""TOML config files decoded into strict msgspec structs, with one-line errors naming the key.

Both daemons load their config through `load_toml`. Any problem (missing file, TOML syntax,
unknown key, bad value) becomes a `ConfigError` whose message is one line of the form
`<file>: <dotted.key>: <problem>`, which the CLIs print to stderr before exiting with
`CONFIG_EXIT_CODE` (2, like a usage error).

msgspec rather than pydantic: the agent has an 80 MB RSS budget (issue 4) and importing
pydantic with its core cost about 8.6 MB of it, msgspec about 1.2 MB (measured on this
machine; see benchmarks/agent_streams.py). Value types that need a check of their own
(`Duration`, `Host`, ...) carry a `from_config` class method, which `_decode_hook` calls.
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path, PosixPath
from typing import Any, Self, TypeVar

import msgspec
from msgspec import inspect as schema

from insignia.daemon.config.addresses import HOST_PORT_EXPECTED, parse_host, parse_host_port
from insignia.daemon.files import UnsafeDirectory
from insignia.daemon.log_levels import LogFormat, LogLevel
from insignia.durations import parse_duration
from insignia.spiffeid import InvalidSpiffeId, SpiffeId, TrustDomain

CONFIG_EXIT_CODE = 2

Model = TypeVar("Model", bound=msgspec.Struct)


class ConfigError(Exception):
    """A config file that cannot be used; `key` is the dotted path ("" for the whole file)."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + " ".join(problem.split()))
        self.path = Path(path)
        self.key = key
        self.problem = problem


class StartupRefused(Exception):
    """A valid config this host cannot run (a port or socket in use, an unusable directory):
    one line naming the key, the value and the cause, and exit `CONFIG_EXIT_CODE` like a
    config error, since the operator fixes it the same way. `key` is "" when none applies."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key


@contextlib.contextmanager
def refused_for_key(key: str) -> Iterator[None]:
    """Turn a failure to use the file or directory that `key` names (missing, not a
    directory, not writable) into a `StartupRefused` naming `key`."""
    try:
        yield
    except UnsafeDirectory as exc:
        raise StartupRefused(key, str(exc)) from exc
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise StartupRefused(key, f"{where}{exc.strerror or exc}") from exc


class StrictModel(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base for config sections: unknown keys are errors, values are immutable once loaded.

    Checks across fields go in `__post_init__`, raising ValueError. A value type's
    `from_config` raises ValueError saying what is wrong; `validate_config` adds the key and
    the offending value.
    """


class LogSection(StrictModel, frozen=True, kw_only=True):
    """The `[log]` table both daemons share; applied by `insignia.daemon.logs.configure_logging`."""

    level: LogLevel = "info"
    format: LogFormat = "json"


class Duration(timedelta):
    """A config duration: seconds as a number or a string like "1h30m" (see insignia.durations)."""

    @classmethod
    def from_config(cls, value: object) -> Self:
        parsed = parse_duration(value)  # type: ignore[arg-type]  # it refuses other types itself
        return cls(days=parsed.days, seconds=parsed.seconds, microseconds=parsed.microseconds)


class PositiveDuration(Duration):
    """A `Duration` greater than zero (a TTL, a timeout)."""

    @classmethod
    def from_config(cls, value: object) -> Self:
        duration = super().from_config(value)
        if duration <= timedelta(0):
            raise ValueError("must be greater than zero")
        return duration


def expect_text(value: object) -> str:
    """`value` if it is a string; the ValueError otherwise names the type found."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


class TrustDomainName(str):
    """A trust domain name ("example.org"), checked by `TrustDomain.parse`; kept as text."""

    __slots__ = ()

    @classmethod
    def from_config(cls, value: object) -> Self:
        try:
            TrustDomain.parse(expect_text(value))
        except InvalidSpiffeId as exc:
            raise ValueError(exc.reason) from exc
        return cls(value)


class SpiffeIdText(str):
    """A SPIFFE ID ("spiffe://example.org/path"), checked by `SpiffeId.parse`; kept as text."""

    __slots__ = ()

    @classmethod
    def from_config(cls, value: object) -> Self:
        try:
            SpiffeId.parse(expect_text(value))
        except InvalidSpiffeId as exc:
            raise ValueError(f"{value!r} is not a SPIFFE ID: {exc.reason}") from exc
        return cls(value)


class Host(str):
    """An address to bind: an IP address (v4 or v6) or "localhost"; no names that need DNS."""

    __slots__ = ()

    @classmethod
    def from_config(cls, value: object) -> Self:
        parse_host(expect_text(value))
        return cls(value)


class ListenAddress(str):
    """A listener's "host:port" ("[::1]:80" for IPv6; port 0 picks a free one), or "" for none."""

    __slots__ = ()

    @classmethod
    def from_config(cls, value: object) -> Self:
        text = expect_text(value)
        if text:
            try:
                parse_host_port(text)
            except ValueError as exc:
                hint = ", or an empty string to disable" if str(exc) == HOST_PORT_EXPECTED else ""
                raise ValueError(f"{exc}{hint}") from None
        return cls(text)


class AbsolutePath(PosixPath):
    """A path that must be absolute: a daemon's working directory is not a meaningful base."""

    @classmethod
    def from_config(cls, value: object) -> Self:
        path = cls(expect_text(value))
        if not path.is_absolute():
            raise ValueError("must be an absolute path")
        return path


def _decode_hook(kind: type, value: Any) -> Any:
    """Build the value types msgspec does not know: ours (`from_config`) and plain paths."""
    build: Callable[[object], object] | None = getattr(kind, "from_config", None)
    if build is not None:
        return build(value)
    if kind is Path:
        return Path(expect_text(value))
    raise NotImplementedError(f"no config decoder for {kind!r}")


_WHERE = re.compile(r"(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_FIELD = re.compile(r"Object (?P<what>missing required|contains unknown) field `(?P<name>[^`]+)`")
_TYPE_NAME = re.compile(r"`(\w+)`")
# msgspec names JSON types; config authors write TOML.
_TOML_NAMES = {"object": "table", "str": "string", "int": "integer", "float": "number"}


def describe(error: msgspec.ValidationError) -> tuple[str, str]:
    """(dotted key, problem) of a msgspec validation error: "a.b[0]" becomes "a.b.0"."""
    match = _WHERE.fullmatch(str(error))
    assert match is not None  # the pattern matches any text
    message = match["message"]
    # "[...]" stands for a dict key msgspec does not report: the dotted key stops above it.
    parts = [p for p in re.findall(r"[^.\[\]]+", match["path"] or "") if p != "..."]
    field = _FIELD.fullmatch(message)
    if field is not None:
        parts.append(field["name"])
        message = (
            "required key is missing" if field["what"] == "missing required" else "unknown key"
        )
    else:
        message = _TYPE_NAME.sub(lambda m: _TOML_NAMES.get(m[1], m[1]), message)
        message = message[:1].lower() + message[1:]
    return ".".join(parts), message


def _offending_value(data: object, key: str) -> object:
    """The scalar at dotted `key` in `data`, or `data` itself when the key leads nowhere."""
    for part in key.split(".") if key else ():
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return data
    return data


def _choices(model: type, key: str) -> tuple[object, ...]:
    """The values allowed at dotted `key` of `model` if that field is an enum or a literal."""

    def unwrap(info: schema.Type) -> schema.Type:  # `Section | None` -> Section
        if isinstance(info, schema.UnionType):
            real = [t for t in info.types if not isinstance(t, schema.NoneType)]
            return real[0] if len(real) == 1 else info
        return info

    info: schema.Type | None = schema.type_info(model)
    for part in key.split("."):
        info = unwrap(info) if info is not None else None
        if not isinstance(info, schema.StructType):
            return ()
        info = next((f.type for f in info.fields if f.name == part), None)
    info = unwrap(info) if info is not None else None
    if isinstance(info, schema.EnumType):
        return tuple(member.value for member in info.cls)
    if isinstance(info, schema.LiteralType):
        return tuple(info.values)
    return ()


def validate_config(path: Path | str, data: dict[str, Any], model: type[Model]) -> Model:
    """Validate already-parsed data, reporting the first problem as a `ConfigError`."""
    try:
        return msgspec.convert(data, model, dec_hook=_decode_hook)
    except msgspec.ValidationError as exc:
        key, problem = describe(exc)
        if problem.startswith("invalid enum value") and (choices := _choices(model, key)):
            problem = "expected one of " + ", ".join(repr(c) for c in choices)
        value = _offending_value(data, key)
        if (
            problem not in ("unknown key", "required key is missing")
            and "(got " not in problem
            and not isinstance(value, dict | list)
        ):
            problem = f"{problem} (got {value!r})"
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
