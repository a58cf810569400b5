"""The examples/ services, run as real workloads of three uids against a real server and agent.

A (uid A) allows only B's SPIFFE ID. B (uid B) calls A over mTLS and over HTTP with a
JWT-SVID; the same client program run by the rogue uid has another identity and is refused.
How the examples reach an interpreter under other uids: see devtools/harness/other_uids.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.harness.agent_clients import (
    UID_A,
    UID_B,
    register,
)
from devtools.harness.agent_process import AgentProcess
from devtools.harness.other_uids import read_line, run_workload, workload_argv
from devtools.harness.server_process import REPO, ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.root]

UID_ROGUE = 41003
EXAMPLES = REPO / "examples"
SERVICE_B = EXAMPLES / "service_b.py"


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
