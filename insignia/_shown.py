"""How an error shows a value someone sent: cut short, so a huge value cannot bury the error.

A 1 MB value echoed whole into an admin error made the client see "metadata size exceeds
hard limit" instead of the validation message. Every error that echoes input goes through
`shown`.
"""

from __future__ import annotations

from typing import Final

SHOWN_CHARS: Final = 64


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)`, cut after `limit` characters with '...' (a string keeps its quotes)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}..."
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."
