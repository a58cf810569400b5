"""The log level and format names both daemons accept, without structlog: the CLIs' options
and the config loader need them at import, and a CLI command that does not log (`--version`,
the admin commands) should not pay for importing structlog."""

from __future__ import annotations

from typing import Literal

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console"]
