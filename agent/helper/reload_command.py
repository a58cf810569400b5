"""The command the SVID-files helper runs after a rotation (e.g. `nginx -s reload`).

No shell: the command line is split with shlex and executed directly, so a value taken from a
config file or a unit file cannot smuggle in shell syntax. A command that fails, hangs or does
not exist is a logged event, never the end of the helper: the files on disk are already
current, and the next rotation tries again.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

import trio

OUTPUT_LIMIT = 4096  # bytes of stdout/stderr kept for the log; a chatty command cannot flood it


class InvalidReloadCommand(ValueError):
    """A reload command line that cannot be run: empty, or unbalanced quotes."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(
            f"invalid reload command {command!r}: {reason}; expected a program and its "
            "arguments, shell-quoted, e.g. 'nginx -s reload'"
        )
        self.command = command
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ReloadCommand:
    argv: tuple[str, ...]
    timeout: float = 30.0

    @classmethod
    def parse(cls, command: str, timeout: float = 30.0) -> ReloadCommand:
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise InvalidReloadCommand(command, str(exc)) from None
        if not argv:
            raise InvalidReloadCommand(command, "it is empty")
        if not (math.isfinite(timeout) and timeout > 0):
            raise InvalidReloadCommand(command, f"timeout must be > 0 seconds, got {timeout}")
        return cls(argv, timeout)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What happened: `returncode` is None when the command could not start or timed out."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _tail(data: bytes | None) -> str:
    text = (data or b"")[-OUTPUT_LIMIT:].decode(errors="replace")
    return text.strip()


async def run_reload(command: ReloadCommand) -> ReloadResult:
    """Run `command` to completion or its timeout (then it is killed); never raises for it."""
    try:
        with trio.move_on_after(command.timeout) as scope:
            done = await trio.run_process(
                list(command.argv),
                check=False,
                capture_stdout=True,
                capture_stderr=True,
                stdin=b"",
            )
    except OSError as exc:  # not found, not executable
        return ReloadResult(command.argv, None, error=f"cannot run: {exc}")
    if scope.cancelled_caught:
        return ReloadResult(
            command.argv, None, error=f"timed out after {command.timeout}s and was killed"
        )
    return ReloadResult(command.argv, done.returncode, _tail(done.stdout), _tail(done.stderr))
