"""The examples/ services, run as real workloads of three uids against a real server and agent.

A (uid A) allows only B's SPIFFE ID. B (uid B) calls A over mTLS and over HTTP with a
JWT-SVID; the same client program run by the rogue uid has another identity and is refused.
How the examples reach an interpreter under other uids: see devtools/harness/other_uids.py.

The Envoy sidecar bootstrap (examples/envoy/sidecar.yaml) passes `envoy --mode validate` as
written, and two copies of it (A's and B's, addresses and IDs filled in) carry a request
over mTLS whose certificates and validation contexts all come from the agent over SDS.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.harness.agent_clients import (
    UID_A,
    UID_B,
    register,
)
from devtools.harness.agent_process import AgentProcess
from devtools.harness.envoy_process import EnvoyProcess, envoy_binary
from devtools.harness.other_uids import read_line, run_workload, workload_argv
from devtools.harness.ports import free_port
from devtools.harness.server_process import REPO, ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.root]

UID_ROGUE = 41003
EXAMPLES = REPO / "examples"
SERVICE_B = EXAMPLES / "service_b.py"
SIDECAR = EXAMPLES / "envoy" / "sidecar.yaml"


@pytest.fixture
def service_a(
    running_server: ServerProcess, running_agent: AgentProcess, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """Service A running as uid A, allowing only B; yields its ready line plus `log`."""
    td = running_server.trust_domain
    for path, uid in (("/service-a", UID_A), ("/service-b", UID_B), ("/rogue", UID_ROGUE)):
        register(running_server, running_agent, path, f"unix:uid:{uid}")
    argv, env = workload_argv(
        UID_A,
        EXAMPLES / "service_a.py",
        "--socket",
        running_agent.endpoint,
        "--allow",
        f"spiffe://{td}/service-b",
    )
    log_path = tmp_path / "service_a.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env, cwd="/")
    assert proc.stdout is not None
    try:
        try:
            ready = json.loads(read_line(proc.stdout, 60, "service A"))
        except (TimeoutError, EOFError) as exc:
            raise AssertionError(f"{exc}\nservice A log:\n{log_path.read_text()}") from None
        yield {**ready, "log": str(log_path)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        proc.stdout.close()
    assert code == 0, f"service A exited {code}:\n{log_path.read_text()}"


def test_b_calls_a_over_mtls_and_a_refuses_the_rogue(
    running_server: ServerProcess, running_agent: AgentProcess, service_a: dict[str, str]
) -> None:
    td = running_server.trust_domain
    a_id, b_id = f"spiffe://{td}/service-a", f"spiffe://{td}/service-b"
    assert service_a["spiffe_id"] == a_id
    socket = ["--socket", running_agent.endpoint]
    call = [*socket, "mtls", "--server-id", a_id, service_a["mtls"]]

    b = run_workload(UID_B, SERVICE_B, *call)
    assert b.returncode == 0, b.stderr
    assert b.stdout.strip() == f"{a_id} answered: hello {b_id}, you said 'ping'"

    rogue = run_workload(UID_ROGUE, SERVICE_B, *call)
    assert rogue.returncode == 1, rogue.stdout + rogue.stderr
    assert "refused" in rogue.stderr
    assert f"peer spiffe://{td}/rogue is not authorized" in Path(service_a["log"]).read_text()

    # B refuses a server that is not the one it meant to call.
    wrong = [*socket, "mtls", "--server-id", f"spiffe://{td}/someone-else", service_a["mtls"]]
    picky = run_workload(UID_B, SERVICE_B, *wrong)
    assert picky.returncode == 1 and "not authorized" in picky.stderr, picky.stderr


def test_b_calls_a_with_a_jwt_svid_checked_for_audience(
    running_server: ServerProcess, running_agent: AgentProcess, service_a: dict[str, str]
) -> None:
    td = running_server.trust_domain
    url = f"http://{service_a['http']}/"
    socket = ["--socket", running_agent.endpoint]

    b = run_workload(UID_B, SERVICE_B, *socket, "jwt", "--audience", "service-a", url)
    assert b.returncode == 0, b.stderr
    assert b.stdout.strip() == f"HTTP 200: hello spiffe://{td}/service-b"

    wrong_audience = run_workload(UID_B, SERVICE_B, *socket, "jwt", "--audience", "service-c", url)
    assert wrong_audience.returncode == 1
    assert wrong_audience.stdout.startswith("HTTP 401: unauthorized: aud"), wrong_audience.stdout

    rogue = run_workload(UID_ROGUE, SERVICE_B, *socket, "jwt", "--audience", "service-a", url)
    assert rogue.returncode == 1
    assert rogue.stdout.startswith("HTTP 403: forbidden"), rogue.stdout


def test_the_envoy_sidecar_bootstrap_validates() -> None:
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(SIDECAR)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"configuration '{SIDECAR}' OK" in output


def sidecar_copy(directory: Path, values: dict[str, str]) -> Path:
    """The example with its socket, addresses and IDs replaced, readable by any uid."""
    text = SIDECAR.read_text()
    for old, new in values.items():
        assert old in text, old
        text = text.replace(old, new)
    path = directory / f"sidecar-{len(list(directory.iterdir()))}.yaml"
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture
def readable_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="insignia-envoy-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_two_envoy_sidecars_from_the_example_carry_a_request_over_sds_mtls(
    running_server: ServerProcess,
    running_agent: AgentProcess,
    http_backend: int,
    tmp_path: Path,
    readable_dir: Path,
) -> None:
    """A's app -> A's outbound -> mTLS (A checks B against ROOTCA) -> B's inbound (B checks
    A with the SPIFFE validator, ALL) -> B's app."""
    td = running_server.trust_domain
    register(running_server, running_agent, "/service-a", f"unix:uid:{UID_A}")
    register(running_server, running_agent, "/service-b", f"unix:uid:{UID_B}")
    b_inbound, a_outbound = free_port(), free_port()

    def sidecar(
        uid: int, admin: int, inbound: int, app: int, outbound: int, peer: str
    ) -> EnvoyProcess:
        config = sidecar_copy(
            readable_dir,
            {
                "/run/insignia-agent/public/api.sock": str(running_agent.socket_path),
                "address: 0.0.0.0": "address: 127.0.0.1",
                "port_value: 9901": f"port_value: {admin}",
                "port_value: 8443": f"port_value: {inbound}",
                "port_value: 8080": f"port_value: {app}",
                "port_value: 9001": f"port_value: {outbound}",
                "port_value: 9443": f"port_value: {b_inbound}",
                "spiffe://example.org/service-b": f"spiffe://{td}/{peer}",
            },
        )
        return EnvoyProcess(tmp_path / f"envoy-{uid}", config, uid=uid, admin_port=admin)

    b = sidecar(UID_B, free_port(), b_inbound, http_backend, free_port(), "service-a")
    a = sidecar(UID_A, free_port(), free_port(), free_port(), a_outbound, "service-b")
    try:
        b.start()
        a.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{a_outbound}/", timeout=30) as answer:
            assert (answer.status, answer.read()) == (200, b"backend\n")
    finally:
        a.stop()
        b.stop()
