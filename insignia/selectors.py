"""Selectors: `type:value` facts about a workload or node, and the subset rule that matches them.

An entry's selectors describe what a caller must prove; a caller matches when the attestors
found every one of them. An entry with no selectors would match everyone, so it never matches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from insignia._shown import shown

MAX_VALUE_LENGTH: Final = 1024
_TYPE_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


class InvalidSelector(ValueError):
    def __init__(self, value: str, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"invalid selector {shown(value)}: {reason}")


@dataclass(frozen=True, slots=True, order=True)
class Selector:
    """`type` names the attestor (`unix`, `k8s`, ...); `value` may itself contain colons."""

    type: str
    value: str

    def __post_init__(self) -> None:
        text = f"{self.type}:{self.value}"
        if not self.type:
            raise InvalidSelector(text, "type is empty")
        bad = set(self.type) - _TYPE_CHARS
        if bad:
            raise InvalidSelector(text, f"type has characters {sorted(bad)}; expected [a-z0-9_-]")
        if not self.value:
            raise InvalidSelector(text, "value is empty")
        if len(self.value) > MAX_VALUE_LENGTH:
            raise InvalidSelector(text, f"value longer than {MAX_VALUE_LENGTH}")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in self.value):
            raise InvalidSelector(text, "value contains control characters")

    @classmethod
    def parse(cls, text: str) -> Selector:
        type_, sep, value = text.partition(":")
        if not sep:
            raise InvalidSelector(text, "expected 'type:value'")
        return cls(type_, value)

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


def canonical(selectors: Iterable[Selector]) -> tuple[Selector, ...]:
    """Sorted and de-duplicated, so equal sets compare and store identically."""
    return tuple(sorted(set(selectors)))


def matches(entry_selectors: Iterable[Selector], workload_selectors: Iterable[Selector]) -> bool:
    """The one selector rule: an entry (or alias) applies when every one of its selectors is
    among the caller's (workload or node), and an entry without selectors never applies."""
    required = frozenset(entry_selectors)
    return bool(required) and required <= frozenset(workload_selectors)
