from pathlib import Path

import pytest

from insignia.workloadapi._address import (
    ENDPOINT_ENV,
    InvalidEndpoint,
    endpoint_from_env,
    grpc_target,
    parse_endpoint,
)


@pytest.mark.parametrize(
    "value", ["unix:///run/agent.sock", "unix:/run/agent.sock", "/run/agent.sock"]
)
def test_spiffe_endpoint_forms(value):
    assert parse_endpoint(value) == Path("/run/agent.sock")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("tcp://127.0.0.1:8080", "only unix"),
        ("unix://host/run/agent.sock", "no host"),
        ("unix:relative.sock", "absolute"),
        ("relative.sock", "absolute"),
        ("unix:///run/agent.sock?x=1", "query"),
    ],
)
def test_bad_endpoints_are_refused_with_the_reason(value, fragment):
    with pytest.raises(InvalidEndpoint, match=fragment):
        parse_endpoint(value)


def test_environment_wins_over_the_default(monkeypatch):
    monkeypatch.setenv(ENDPOINT_ENV, "unix:///from/env.sock")
    assert endpoint_from_env(Path("/default.sock")) == Path("/from/env.sock")
    monkeypatch.delenv(ENDPOINT_ENV)
    assert endpoint_from_env(Path("/default.sock")) == Path("/default.sock")
    with pytest.raises(InvalidEndpoint, match="not set"):
        endpoint_from_env(None)


def test_grpc_target():
    assert grpc_target(Path("/run/a.sock")) == "unix:/run/a.sock"
