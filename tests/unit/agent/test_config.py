from pathlib import Path

import pytest

from insignia.agent.config import AgentConfig, load_agent_config
from insignia.agent.identity.targets import ServerTarget
from insignia.agent.workloadapi.sds_service import SdsNames
from insignia.daemon.config.loading import ConfigError
from insignia.keys import KeyType

MINIMAL = """
trust_domain = "example.org"
trust_bundle_path = "/etc/insignia/bundle.pem"
[server]
address = "10.0.0.1"
[node_attestor.join_token]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_operator_defaults(tmp_path):
    config = load_agent_config(write(tmp_path, MINIMAL))
    assert config.server.targets == (ServerTarget("10.0.0.1", 8081),)
    assert config.server.attestation_port == 8082
    assert config.node_attestor_name == "join_token"
    assert config.workload_attestors == {"unix": {}}
    assert config.workload.key_type is KeyType.EC_P256
    assert config.sds.names == SdsNames("default", "ROOTCA", "ALL", False)
    assert str(config.socket_path) == "/run/insignia-agent/public/api.sock"


def test_join_token_flag_replaces_the_node_attestor(tmp_path):
    config = load_agent_config(write(tmp_path, MINIMAL.replace("join_token]", "x509pop]")))
    assert config.with_join_token("abc").node_attestor == {"join_token": {"token": "abc"}}


def test_the_sample_config_loads():
    sample = Path(__file__).parents[3] / "agent" / "agent.sample.toml"
    assert isinstance(load_agent_config(sample), AgentConfig)


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        (("", "colour = 1\n"), "colour", "unknown key"),
        (('"example.org"', '"Example.org"'), "trust_domain", "upper"),
        (("[server]", "[server]\nport = 0"), "server.port", "expected integer >= 1 (got 0)"),
        (('trust_bundle_path = "/etc/insignia/bundle.pem"', ""), "", "set trust_bundle_path"),
        (('address = "10.0.0.1"', ""), "server", "set address"),
        (
            ('address = "10.0.0.1"', 'address = "a"\naddresses = ["b:1"]'),
            "server",
            "not both",
        ),
        (
            ('address = "10.0.0.1"', 'addresses = ["b:1"]\nport = 9'),
            "server",
            "give each of addresses its port",
        ),
        (('address = "10.0.0.1"', 'addresses = ["b"]'), "server", "'b': expected host:port"),
        (('address = "10.0.0.1"', 'addresses = ["b:0"]'), "server", "from 1 to 65535"),
        (('address = "10.0.0.1"', 'addresses = ["::1:80"]'), "server", "expected host:port"),
        (('address = "10.0.0.1"', 'addresses = ["b:1", "b:1"]'), "server", "twice"),
        (
            ('trust_bundle_path = "/etc/insignia/bundle.pem"', 'trust_bundle_path = "rel.pem"'),
            "trust_bundle_path",
            "absolute",
        ),
        (("[server]", "insecure_bootstrap = true\n[server]"), "", "exclude each other"),
        (
            ("[server]", '[workload]\nattestation_timeout = "soon"\n[server]'),
            "workload.attestation_timeout",
            "invalid duration",
        ),
        (("[server]", '[health]\naddress = "nowhere"\n[server]'), "health.address", "host:port"),
        (
            ("[server]", "[workload]\njwt_max_audience_bytes = 1000\n[server]"),
            "workload",
            "over the 16384 that validators accept",
        ),
        (
            ("[server]", "[workload]\njwt_mint_rate_per_uid = 0\n[server]"),
            "workload.jwt_mint_rate_per_uid",
            "expected number > 0",
        ),
        (
            ("[server]", '[sync]\nkeepalive_interval = "1s"\n[server]'),
            "sync",
            "keepalive_interval must be at least 5s",
        ),
        (("[server]", '[sds]\ndefault_bundle_name = "ALL"\n[server]'), "sds", "must differ"),
        (("[server]", '[sds]\ndefault_svid_name = ""\n[server]'), "sds.default_svid_name", ""),
        (
            ("[server]", '[sds]\ndefault_svid_name = "spiffe://example.org/x"\n[server]'),
            "sds",
            "must not be a SPIFFE ID",
        ),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, edit, key, fragment):
    old, new = edit
    text = MINIMAL.replace(old, new) if old else new + MINIMAL
    with pytest.raises(ConfigError) as info:
        load_agent_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    assert info.value.key == key
    assert fragment.lower() in message.lower()


def test_addresses_list_every_server_in_order(tmp_path):
    text = MINIMAL.replace(
        'address = "10.0.0.1"', 'addresses = ["s1.example.org:8081", "[::1]:9081", "10.0.0.3:81"]'
    )
    config = load_agent_config(write(tmp_path, text))
    assert config.server.targets == (
        ServerTarget("s1.example.org", 8081),
        ServerTarget("::1", 9081),
        ServerTarget("10.0.0.3", 81),
    )
    assert [str(t) for t in config.server.targets][1] == "[::1]:9081"
