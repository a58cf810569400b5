"""How both daemons' `run` ends on a failure: one line on stderr, never a traceback.

An operator's first contact with a wrong setting is the daemon refusing to start; a 90-line
traceback hides the one line that matters. Config errors and refusals (`StartupRefused`) exit
`CONFIG_EXIT_CODE` like usage errors; anything unexpected exits 1 with one line that says how
to see the traceback (debug logging prints it).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from insignia.daemon.config.loading import CONFIG_EXIT_CODE, ConfigError, StartupRefused
from insignia.daemon.files import UnsafeDirectory
from insignia.daemon.logs import get_logger
from insignia.daemon.runtime import first_leaf

DEBUG_HINT = "run with --log-level debug to see the traceback"


def run_reporting_failures(
    prefix: str,
    config_path: Path,
    daemon: Callable[[], object],
    runtime_failures: tuple[type[Exception], ...] = (),
) -> None:
    """Run `daemon()`; end a failure with one line starting with `prefix`.

    `runtime_failures` are clear failures that are not the config's fault (the server refused
    to attest us): their own message, exit 1.
    """
    try:
        daemon()
    except BaseException as raised:
        failure = first_leaf(raised) if isinstance(raised, BaseExceptionGroup) else raised
        if isinstance(failure, KeyboardInterrupt):
            return
        if isinstance(failure, SystemExit):
            raise
        _report(prefix, config_path, failure, runtime_failures)


def _report(
    prefix: str,
    config_path: Path,
    failure: BaseException,
    runtime_failures: tuple[type[Exception], ...] = (),
) -> NoReturn:
    """Print `failure` as one line on stderr and exit (2 for the config's fault, else 1)."""
    if isinstance(failure, ConfigError):
        line, code = str(failure), CONFIG_EXIT_CODE
    elif isinstance(failure, StartupRefused | UnsafeDirectory):
        line, code = f"{config_path}: {failure}", CONFIG_EXIT_CODE
    elif isinstance(failure, runtime_failures):
        line, code = str(failure), 1
    else:
        hint = DEBUG_HINT
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            get_logger(__name__).debug("daemon.failed", exc_info=failure)
            hint = "the traceback is in the daemon.failed log record"
        detail = " ".join(str(failure).split()) or "no detail"
        line, code = f"{type(failure).__name__}: {detail} ({hint})", 1
    print(prefix + line, file=sys.stderr)
    sys.exit(code)
