"""`/proc/<pid>/cgroup` parsed into entries, for both cgroup v1 and the v2 unified hierarchy.

Each line is `hierarchy-id:controller-list:path`. v2 has one line `0::/path`; v1 has one line per
mounted hierarchy (`4:memory:/docker/<id>`, `1:name=systemd:/system.slice/x.service`); hybrid
hosts have both. Paths may contain ':' (a misconfigured containerd writes
`slice:cri-containerd:<id>` literally), so only the first two colons split.
"""

from __future__ import annotations

from dataclasses import dataclass


class MalformedCgroup(ValueError):
    """A cgroup file that does not follow the kernel's format; carries the offending line."""

    def __init__(self, line: str, reason: str) -> None:
        super().__init__(f"malformed cgroup line {line!r}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CgroupEntry:
    hierarchy_id: int
    controllers: tuple[str, ...]
    path: str

    @property
    def unified(self) -> bool:
        """The cgroup v2 line (`0::/...`)."""
        return self.hierarchy_id == 0 and not self.controllers


def parse_cgroup_file(text: str) -> tuple[CgroupEntry, ...]:
    """Every line of a `/proc/<pid>/cgroup` file; MalformedCgroup if any line is not valid."""
    entries: list[CgroupEntry] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise MalformedCgroup(line, "expected 'id:controllers:path'")
        ident, controllers, path = parts
        if not ident.isdigit():
            raise MalformedCgroup(line, "hierarchy id is not a number")
        if not path.startswith("/"):
            raise MalformedCgroup(line, "path does not start with '/'")
        if "\x00" in path:
            raise MalformedCgroup(line, "path contains NUL")
        entries.append(CgroupEntry(int(ident), tuple(c for c in controllers.split(",") if c), path))
    if not entries:
        raise MalformedCgroup(text, "no cgroup lines")
    return tuple(entries)
