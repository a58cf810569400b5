"""The authority timeline: every X.509 CA, JWT and WIT key on one time axis, as layout for the
overview's server-rendered SVG (pure: records and a clock in, boxes and ticks out).

Operators plan rotations from it: each key is a bar from not_before to not_after, coloured by
its state (prepared, active, old) and marked tainted or revoked; a line shows now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from insignia.server.datastore.records import CaKeyRecord

WIDTH = 960.0  # SVG user units; the page scales the drawing to its width
LABEL_WIDTH = 150.0
ROW_HEIGHT = 26.0
AXIS_HEIGHT = 34.0
KIND_TITLES = {"x509": "X.509 CA", "jwt": "JWT keys", "wit": "WIT keys"}


@dataclass(frozen=True)
class Bar:
    kind: str
    key_id: str
    server_id: str
    state: str  # prepared, active, old, tainted, revoked: the CSS class
    not_before: datetime
    not_after: datetime
    x: float
    y: float
    width: float

    @property
    def label(self) -> str:
        return f"{self.key_id[:16]} {self.state}"


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Timeline:
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    rows: tuple[tuple[str, float], ...]  # kind titles and their y
    now_x: float
    height: float
    width: float = WIDTH
    label_width: float = LABEL_WIDTH


def state_of(record: CaKeyRecord) -> str:
    """The one word the timeline shows: revoked and tainted outrank the rotation state."""
    if record.revoked:
        return "revoked"
    if record.tainted:
        return "tainted"
    return record.status


def _tick_step(span: timedelta) -> timedelta:
    for step in (
        timedelta(minutes=10),
        timedelta(hours=1),
        timedelta(hours=3),
        timedelta(hours=6),
        timedelta(days=1),
        timedelta(days=7),
        timedelta(days=30),
    ):
        if span / step <= 10:
            return step
    return timedelta(days=365)


def layout(records: Sequence[CaKeyRecord], now: datetime) -> Timeline:
    """Bars per kind (X.509 first), newest key last, on an axis from the earliest start (or
    now) to the latest expiry."""
    start = min([now, *(r.not_before for r in records)])
    end = max([now + timedelta(hours=1), *(r.not_after for r in records)])
    span = end - start
    scale = (WIDTH - LABEL_WIDTH - 10) / span.total_seconds()

    def x_of(moment: datetime) -> float:
        return round(LABEL_WIDTH + (moment - start).total_seconds() * scale, 1)

    bars: list[Bar] = []
    rows: list[tuple[str, float]] = []
    y = AXIS_HEIGHT
    for kind, title in KIND_TITLES.items():
        rows.append((title, y))
        y += ROW_HEIGHT
        for r in sorted((r for r in records if r.kind == kind), key=lambda r: r.not_before):
            left = x_of(r.not_before)
            bars.append(
                Bar(
                    kind,
                    r.key_id,
                    r.server_id,
                    state_of(r),
                    r.not_before,
                    r.not_after,
                    left,
                    y,
                    max(2.0, x_of(r.not_after) - left),
                )
            )
            y += ROW_HEIGHT
    step = _tick_step(span)
    first = start.replace(minute=0, second=0, microsecond=0)
    ticks = []
    moment = first
    while moment <= end:
        if moment >= start and x_of(moment) <= WIDTH - 40:  # a label must fit beside it
            ticks.append(Tick(x_of(moment), moment.strftime("%m-%d %H:%M")))
        moment += step
    return Timeline(tuple(bars), tuple(ticks), tuple(rows), x_of(now), y + 6)
