"""The one keepalive policy between agent and server, so neither side's gRPC defaults decide.

The agent pings its server connection so a dead peer (a NAT or firewall dropping the idle
Sync stream) is noticed in seconds. gRPC's server defaults accept one ping per 5 minutes
with 2 strikes: with the agent pinging every 20 s, the server ended the idle Sync stream with
GOAWAY "too_many_pings" at 60 s, and again at 180 s (the client doubles its interval after
such a GOAWAY). The server therefore accepts pings a little more often than the agent's
shortest allowed interval, and both sides take their numbers from here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

AGENT_PING_INTERVAL: Final = timedelta(seconds=20)  # the agent's default
AGENT_MIN_PING_INTERVAL: Final = timedelta(seconds=5)  # the shortest an agent may configure
# Below the agent's minimum with room for timer jitter: a ping that arrives a little early
# must not count as a strike.
SERVER_MIN_PING_INTERVAL: Final = timedelta(seconds=4)
PING_TIMEOUT: Final = timedelta(seconds=10)


def _ms(value: timedelta) -> int:
    return int(value.total_seconds() * 1000)


def agent_channel_options(interval: timedelta) -> tuple[tuple[str, Any], ...]:
    """The agent's channel: ping every `interval` even with no call open, without limit."""
    return (
        ("grpc.keepalive_time_ms", _ms(interval)),
        ("grpc.keepalive_timeout_ms", _ms(PING_TIMEOUT)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    )


SERVER_OPTIONS: Final[tuple[tuple[str, Any], ...]] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", _ms(SERVER_MIN_PING_INTERVAL)),
)
