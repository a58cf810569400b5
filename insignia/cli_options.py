"""Click options both daemons' CLIs share (kept out of `insignia.logs`, which libraries import
without click)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, get_args

import click

from insignia.logs import LogLevel

F = TypeVar("F", bound=Callable[..., Any])


def log_level_option(fn: F) -> F:
    """`run --log-level`: overrides `[log] level` of the config file for this run."""
    return click.option(
        "--log-level",
        type=click.Choice(get_args(LogLevel)),
        default=None,
        help="Log level for this run, instead of [log] level from the config.",
    )(fn)
