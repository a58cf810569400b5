"""Click options both daemons' CLIs share (kept out of `insignia.daemon.logs`, which libraries
import without click)."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args

import click

from insignia.daemon.log_levels import LogLevel
from insignia.daemon.times import parse_time

F = TypeVar("F", bound=Callable[..., Any])


class LazyGroup(click.Group):
    """A group whose `lazy` commands ("name": "module:attribute") are imported only when one
    runs (or `--help` lists them): a command then pays only for the modules it needs."""

    lazy: Mapping[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attr = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


def log_level_option(fn: F) -> F:
    """`run --log-level`: overrides `[log] level` of the config file for this run."""
    return click.option(
        "--log-level",
        type=click.Choice(get_args(LogLevel)),
        default=None,
        help="Log level for this run, instead of [log] level from the config.",
    )(fn)


def is_spire_alias(opt: str) -> bool:
    """SPIRE spells flags with one dash and camelCase (`-spiffeID`); ours are `--spiffe-id`."""
    return opt.startswith("-") and not opt.startswith("--") and len(opt) > 2


class SpireAliasOption(click.Option):
    """An option that also answers to SPIRE's spelling of it (`--spiffe-id` and `-spiffeID`),
    so a SPIRE operator's commands and scripts work; --help shows only our spelling."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        shown, self.opts = self.opts, [o for o in self.opts if not is_spire_alias(o)]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


def option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """`click.option` whose single-dash camelCase names are hidden SPIRE aliases."""
    return click.option(*decls, cls=SpireAliasOption, **attrs)


def config_option(
    help: str, default: Path | None = None, required: bool = False
) -> Callable[[F], F]:
    """`--config PATH` (SPIRE: `-config`), passed as `config_path`; each command says what it
    reads from the file and whether it needs one."""
    return option(
        "--config",
        "-config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=default,
        show_default=default is not None,
        required=required,
        help=help,
    )


def id_argument(name: str, spire_flag: str) -> Callable[[F], F]:
    """A positional ID (`entry delete ID`) that SPIRE's habit passes as a flag instead
    (`entry delete -entryID ID`): either is accepted, one is required."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            given, flagged = kwargs[name], kwargs.pop(f"{name}_flag")
            if given and flagged and given != flagged:
                raise click.UsageError(
                    f"{name.upper()} {given!r} and {spire_flag} {flagged!r} differ"
                )
            if not (given or flagged):
                raise click.UsageError(f"missing argument {name.upper()}")
            kwargs[name] = given or flagged
            return fn(*args, **kwargs)

        decorated = click.argument(name, required=False)(command)
        return click.option(spire_flag, f"{name}_flag", hidden=True)(decorated)  # type: ignore[return-value]

    return decorate


class TimeParam(click.ParamType[int]):
    """A moment on the command line (`insignia.daemon.times.parse_time`), as Unix seconds for the
    API."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return int(parse_time(str(value)).timestamp())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
