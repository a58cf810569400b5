"""authorized_delegates and broker_api: SPIFFE IDs checked at load, one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from insignia.agent.config import AgentConfig, load_agent_config
from insignia.daemon.config.loading import ConfigError
from insignia.spiffeid import SpiffeId

BASE = """
trust_domain = "example.org"
insecure_bootstrap = true
socket_path = "/run/a/public/api.sock"
admin_socket_path = "/run/a/private/admin.sock"
{top}
[server]
address = "s"
[node_attestor.join_token]
token = "t"
{sections}
"""


def load(tmp_path: Path, top: str = "", sections: str = "") -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(BASE.format(top=top, sections=sections))
    return load_agent_config(path)


def test_delegates_and_brokers_load_as_spiffe_ids(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        'authorized_delegates = ["spiffe://example.org/proxy"]',
        '[broker_api]\nsocket_path = "/run/a/broker/b.sock"\n'
        'authorized_brokers = ["spiffe://example.org/mesh"]',
    )
    assert config.delegates == {SpiffeId.parse("spiffe://example.org/proxy")}
    assert config.broker_api.brokers == {SpiffeId.parse("spiffe://example.org/mesh")}


@pytest.mark.parametrize(
    ("top", "sections", "key", "problem"),
    [
        (
            'authorized_delegates = ["example.org/proxy"]',
            "",
            "authorized_delegates",
            "not a SPIFFE ID",
        ),
        (
            'authorized_delegates = ["spiffe://Example.org/x"]',
            "",
            "authorized_delegates",
            "not a SPIFFE ID",
        ),
        (
            "",
            '[broker_api]\nsocket_path = "/run/a/broker/b.sock"\nauthorized_brokers = ["spiffe://e.org/a?b"]',
            "broker_api.authorized_brokers",
            "not a SPIFFE ID",
        ),
        (
            "",
            '[broker_api]\nsocket_path = "/run/a/broker/b.sock"',
            "broker_api",
            "at least one broker",
        ),
        (
            "",
            '[broker_api]\nsocket_path = "/run/a/private/b.sock"\nauthorized_brokers = ["spiffe://e.org/a"]',
            "",
            "different directories",
        ),
    ],
)
def test_bad_entries_are_refused_naming_the_key(
    tmp_path: Path, top: str, sections: str, key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, top, sections)
    assert problem in str(info.value)
    assert key in str(info.value)
