"""Two complete deployments, a.test and b.test (a real server and a real agent each), whose
servers federate with each other both ways over one bundle endpoint profile.

https_web: each endpoint serves a certificate for `localhost` from its own throwaway web
CA, and the peer trusts that CA through the relationship's `web_ca_file`.
https_spiffe: each endpoint serves its server's SVID; the peer is bootstrapped with the
endpoint's bundle. That bundle exists only once a server has started, so a.test starts
without its relationship, b.test starts with one, and a.test is restarted with its own, or
(`a_through_cli`) is given it with `federation create`, which `federation delete` may undo.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from devtools.harness.agent_process import AgentProcess
from devtools.harness.ports import free_port
from devtools.harness.server_process import ServerProcess
from devtools.harness.waiting import wait_for
from devtools.harness.web_pki import write_web_pki

Profile = Literal["https_spiffe", "https_web"]


@dataclass
class Deployment:
    server: ServerProcess
    agent: AgentProcess
    endpoint_port: int

    @property
    def trust_domain(self) -> str:
        return self.server.trust_domain

    def spiffe_id(self, path: str) -> str:
        return f"spiffe://{self.trust_domain}{path}"


def endpoint_port(server: ServerProcess) -> int:
    """The port a started server's bundle endpoint listens on."""
    return int(server.addresses["bundle_endpoint"].rsplit(":", 1)[1])


def endpoint_url(profile: Profile, port: int) -> str:
    host = "localhost" if profile == "https_web" else "127.0.0.1"
    return f"https://{host}:{port}/"


def relationship(
    profile: Profile, peer_td: str, port: int, trust: Path, **extra: str
) -> dict[str, Any]:
    """The `[[federation.federates_with]]` table for a peer's endpoint; `trust` is its web CA
    (https_web) or its bootstrap bundle (https_spiffe)."""
    table: dict[str, Any] = {
        "trust_domain": peer_td,
        "bundle_endpoint_url": endpoint_url(profile, port),
        "profile": profile,
        **extra,
    }
    if profile == "https_web":
        table["web_ca_file"] = str(trust)
    else:
        table["endpoint_spiffe_id"] = f"spiffe://{peer_td}/insignia/server"
        table["trust_domain_bundle"] = str(trust)
        table["trust_domain_bundle_format"] = "pem"
    return table


def create_command(table: Mapping[str, Any]) -> list[str]:
    """`federation create` for a `[[federation.federates_with]]` table: each key is a flag."""
    flags = [(f"--{key.replace('_', '-')}", str(value)) for key, value in table.items()]
    return ["federation", "create", *(word for flag in flags for word in flag)]


def knows_bundles(server: ServerProcess, count: int) -> bool:
    return server.cli("bundle", "count").stdout.startswith(f"{count} ")


@contextlib.contextmanager
def federated_pair(
    root: Path, profile: Profile, refresh_hint: str = "5m", a_through_cli: bool = False
) -> Iterator[tuple[Deployment, Deployment]]:
    """a.test and b.test, each server holding the other's bundle, each agent attested.

    `a_through_cli`: a.test's relationship is created with the admin CLI, not declared in its
    config file (https_spiffe only: the CLI takes no web CA)."""
    if a_through_cli and profile != "https_spiffe":
        raise ValueError("a relationship created through the CLI is https_spiffe here")
    ports = {"a.test": free_port(), "b.test": free_port()}
    endpoints: dict[str, dict[str, Any]] = {}
    web_ca: dict[str, Path] = {}
    for td, port in ports.items():
        endpoint = {"address": f"127.0.0.1:{port}", "profile": profile}
        if profile == "https_web":
            pki = write_web_pki(root / f"{td}-web", ("localhost",))
            endpoint |= {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file)}
            web_ca[td] = pki.ca_file
        endpoints[td] = {**endpoint, "refresh_hint": refresh_hint}

    def config(td: str, peer: str, trust: Path | None) -> dict[str, Any]:
        federation: dict[str, Any] = {"bundle_endpoint": endpoints[td]}
        if trust is not None:
            federation["federates_with"] = [relationship(profile, peer, ports[peer], trust)]
        return {"federation": federation}

    with contextlib.ExitStack() as stack:
        a = ServerProcess(
            root / "a.test", "a.test", "", config("a.test", "b.test", web_ca.get("b.test"))
        )
        stack.callback(a.cleanup)
        a.start()
        b_config = config("b.test", "a.test", web_ca.get("a.test", a.bundle_path))
        b = ServerProcess(root / "b.test", "b.test", "", b_config)
        stack.callback(b.cleanup)
        b.start()
        if a_through_cli:
            a.cli(*create_command(relationship(profile, "b.test", ports["b.test"], b.bundle_path)))
        elif profile == "https_spiffe":
            a.restart_with(config("a.test", "b.test", b.bundle_path))
        for each in (a, b):
            wait_for(partial(knows_bundles, each, 2), 60, f"{each.trust_domain}'s peer bundle")
        deployments = []
        for each in (a, b):
            agent = AgentProcess(
                root / f"{each.trust_domain}-agent",
                each.trust_domain,
                each.host,
                each.agent_api_port,
                each.attestation_port,
                each.bundle_path,
            )
            stack.callback(agent.close)
            agent.start(each.join_token())
            deployments.append(Deployment(each, agent, ports[each.trust_domain]))
        yield deployments[0], deployments[1]
