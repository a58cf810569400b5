from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from insignia.attestors.interface import ServerEnvironment
from insignia.attestors.node.join_token import JoinTokenAgent
from insignia.attestors.registry import (
    NODE_GROUP,
    WORKLOAD_GROUP,
    installed_plugins,
    load_node_attestor_agent,
    load_node_attestor_servers,
    load_workload_attestors,
)
from insignia.attestors.workload.unix import UnixAttestor
from insignia.daemon.config.loading import ConfigError
from tests.unit.common import TD


def test_built_ins_are_registered_as_entry_points() -> None:
    assert installed_plugins(WORKLOAD_GROUP) == ("container", "docker", "systemd", "unix")
    assert {"join_token", "x509pop"} <= set(installed_plugins(NODE_GROUP))


def test_configured_workload_attestors_start_with_their_flags() -> None:
    started = load_workload_attestors(
        {"unix": {"discover_workload_path": True}, "container": {}, "docker": {"optional": True}}
    )
    assert [(a.name, a.optional, sorted(a.selector_types)) for a in started] == [
        ("unix", False, ["unix"]),
        ("container", False, ["container", "k8s"]),
        ("docker", True, ["docker"]),
    ]
    assert isinstance(started[0].attestor, UnixAttestor)


def one_line_error(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        (
            {"unixx": {}},
            "agent.toml: workload_attestors.unixx: unknown workload attestor 'unixx'; "
            "installed: container, docker, systemd, unix",
        ),
        ({"unix": {"bogus": 1}}, "agent.toml: workload_attestors.unix.bogus: unknown key"),
        (
            {"unix": {"workload_size_limit": -1}},
            "agent.toml: workload_attestors.unix.workload_size_limit: expected integer >= 0 "
            "(got -1)",
        ),
        (
            {"docker": {"optional": "yes"}},
            "agent.toml: workload_attestors.docker.optional: expected true or false (got 'yes')",
        ),
        (
            {"docker": {"api_version": "latest"}},
            "agent.toml: workload_attestors.docker.api_version: expected string matching regex",
        ),
        (
            {"docker": {"timeout": "soon"}},
            "agent.toml: workload_attestors.docker.timeout: invalid duration 'soon'",
        ),
    ],
)
def test_bad_workload_config_is_one_line_naming_the_key(
    sections: dict[str, dict[str, Any]], expected: str
) -> None:
    assert one_line_error(load_workload_attestors, sections, "agent.toml").startswith(expected)


def test_node_attestor_agent_config_is_validated() -> None:
    agent = load_node_attestor_agent("join_token", {"token": "abc"}, TD)
    assert isinstance(agent, JoinTokenAgent)
    message = one_line_error(load_node_attestor_agent, "join_token", {}, TD, "agent.toml")
    assert (
        message == "agent.toml: node_attestor.join_token: set exactly one of token and token_file"
    )


def test_node_attestor_server_failing_to_start_is_a_config_error(tmp_path: Path) -> None:
    env = ServerEnvironment(TD)
    message = one_line_error(load_node_attestor_servers, {"join_token": {}}, env, "server.toml")
    assert message == (
        "server.toml: node_attestors.join_token: plugin failed to start: "
        "join_token needs the server's token store"
    )
    missing = tmp_path / "nope.pem"
    message = one_line_error(
        load_node_attestor_servers, {"x509pop": {"ca_bundle_paths": [str(missing)]}}, env
    )
    assert f"node_attestors.x509pop: plugin failed to start: cannot load CA bundle {missing}" in (
        message
    )


def test_unknown_node_attestor_lists_what_is_installed() -> None:
    message = one_line_error(load_node_attestor_agent, "tpm", {}, TD)
    assert "unknown node attestor 'tpm'; installed: " in message
    assert "join_token" in message
