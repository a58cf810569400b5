"""DNS names as certificates carry them: RFC 1123 labels, an optional leading `*.` wildcard.

One rule for the SDK's leaf builder and the server's entry validation.
"""

from __future__ import annotations

import re
from typing import Final

MAX_DNS_NAME_LENGTH: Final = 253
_LABEL: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)


def is_dns_label(label: str) -> bool:
    """1 to 63 of [a-z0-9-] (any case), neither starting nor ending with '-'."""
    return _LABEL.fullmatch(label) is not None


def is_dns_name(name: str) -> bool:
    """Labels joined by dots, at most 253 characters, the first label possibly `*`."""
    rest = name[2:] if name.startswith("*.") else name
    return len(name) <= MAX_DNS_NAME_LENGTH and all(map(is_dns_label, rest.split(".")))
