"""Structured logging for both daemons: JSON lines for machines, aligned text for people.

Everything goes to stderr (systemd's journal and container runtimes collect it there). Records
from the standard `logging` module (alembic, grpc) are rendered by the same processors, so one
log stream has one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, get_args

import structlog

from insignia.daemon.log_levels import LogFormat, LogLevel

__all__ = [
    "LogFormat",
    "LogLevel",
    "change_log_level",
    "check_log_level",
    "configure_logging",
    "current_log_level",
    "get_logger",
    "set_log_level",
]

# Third-party loggers whose info records are start-up chatter, not events an operator needs.
_QUIET = ("alembic.runtime.plugins",)


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    level: LogLevel | str = "info", fmt: LogFormat | str = "console", stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to `stream` (stderr) at `level` in format `fmt`.

    Raises ValueError naming the bad level or format. Safe to call more than once (tests do).
    """
    check_log_level(level)
    if fmt not in get_args(LogFormat):
        raise ValueError(f"unknown log format {fmt!r}; expected one of {get_args(LogFormat)}")
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_shared_processors(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    logging.getLogger().handlers[:] = [handler]
    set_log_level(level)


def check_log_level(level: str) -> LogLevel:
    """`level` if it is one of ours, else ValueError listing them (for CLI and API input)."""
    for known in get_args(LogLevel):
        if level == known:
            return known  # type: ignore[no-any-return]
    raise ValueError(
        f"unknown log level {level!r}; expected one of {', '.join(get_args(LogLevel))}"
    )


def set_log_level(level: LogLevel | str) -> None:
    """Change the level of a running process (the admin sockets' log-level call), at once."""
    numeric = logging.getLevelNamesMapping()[check_log_level(level).upper()]
    logging.getLogger().setLevel(numeric)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def change_log_level(level: str) -> LogLevel:
    """`set_log_level` for a running daemon, with one warning line saying so; the line is
    written under whichever of the two levels is more verbose, so an operator sees it."""
    new, old = check_log_level(level), current_log_level()
    more_verbose = get_args(LogLevel).index(new) < get_args(LogLevel).index(old)
    if more_verbose:
        set_log_level(new)
    get_logger(__name__).warning("log level changed", from_level=old, to_level=new)
    if not more_verbose:
        set_log_level(new)
    return new


def current_log_level() -> LogLevel:
    """The level in force (what `set_log_level` or `configure_logging` last set)."""
    return check_log_level(logging.getLevelName(logging.getLogger().level).lower())


def get_logger(name: str) -> Any:
    """A structlog logger bound to `name` (use the module's `__name__`)."""
    return structlog.stdlib.get_logger(name)
