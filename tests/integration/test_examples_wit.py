"""examples/wit_service.py as real workloads of three uids: two services that know each other
by WIT-SVID + proof of possession over plain HTTP on loopback, and a third workload holding a
copied WIT but not its key, refused every way it tries."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devtools.harness.agent_clients import UID_A, UID_B, register
from devtools.harness.agent_process import AgentProcess
from devtools.harness.other_uids import read_line, run_workload, workload_argv
from devtools.harness.server_process import REPO, ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.root]

UID_ROGUE = 41003
WIT_SERVICE = REPO / "examples" / "wit_service.py"


@contextmanager
def serving(agent: AgentProcess, uid: int, allow: str, log_path: Path) -> Iterator[dict[str, str]]:
    """`wit_service.py serve` as `uid`; yields its ready line, then stops it cleanly."""
    argv, env = workload_argv(
        uid, WIT_SERVICE, "--socket", agent.endpoint, "serve", "--allow", allow
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env, cwd="/")
    assert proc.stdout is not None
    try:
        try:
            yield json.loads(read_line(proc.stdout, 60, f"wit service of uid {uid}"))
        except (TimeoutError, EOFError) as exc:
            raise AssertionError(f"{exc}\nlog:\n{log_path.read_text()}") from None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        proc.stdout.close()
    assert code == 0, f"wit service exited {code}:\n{log_path.read_text()}"


def test_two_services_prove_their_wits_and_a_copied_wit_is_refused(
    running_server: ServerProcess, running_agent: AgentProcess, tmp_path: Path
) -> None:
    td = running_server.trust_domain
    a_id, b_id, rogue_id = (f"spiffe://{td}/{n}" for n in ("wit-a", "wit-b", "wit-rogue"))
    for path, uid in (("/wit-a", UID_A), ("/wit-b", UID_B), ("/wit-rogue", UID_ROGUE)):
        register(running_server, running_agent, path, f"unix:uid:{uid}")

    def run(uid: int, *args: str) -> subprocess.CompletedProcess[str]:
        return run_workload(uid, WIT_SERVICE, "--socket", running_agent.endpoint, *args)

    with (
        serving(running_agent, UID_A, b_id, tmp_path / "a.log") as a,
        serving(running_agent, UID_B, a_id, tmp_path / "b.log") as b,
    ):
        assert (a["spiffe_id"], b["spiffe_id"]) == (a_id, b_id)
        a_url, b_url = f"http://{a['http']}/hello", f"http://{b['http']}/hello"

        # each calls the other, proving its own WIT-SVID with a fresh WPT per request
        b_to_a = run(UID_B, "call", "--print-wit", a_url)
        assert b_to_a.returncode == 0, b_to_a.stdout + b_to_a.stderr
        stolen, answer = b_to_a.stdout.strip().splitlines()
        assert answer == f"HTTP 200: hello {b_id}"
        a_to_b = run(UID_A, "call", b_url)
        assert a_to_b.returncode == 0 and a_to_b.stdout.strip() == f"HTTP 200: hello {a_id}"

        # a workload A does not allow is told so (its own WIT is valid: 403, not 400)
        rogue = run(UID_ROGUE, "call", a_url)
        assert rogue.returncode == 1 and rogue.stdout.startswith("HTTP 403:"), rogue.stdout
        assert rogue_id in rogue.stdout

        # the rogue with B's copied WIT but not B's key: refused three ways, each named
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        shared.chmod(0o755)
        (shared / "stolen-wit").write_text(stolen)
        (shared / "stolen-wit").chmod(0o644)
        tmp_path.chmod(0o755)
        thief = run(UID_ROGUE, "replay", "--wit-file", str(shared / "stolen-wit"), a_url)
        assert thief.returncode == 1, thief.stdout + thief.stderr
        assert thief.stdout.splitlines() == [
            "WIT alone: HTTP 400 missing_wpt",
            "WIT as a bearer token: HTTP 400 bearer",
            "WIT with a proof from another key: HTTP 400 proof_signature",
        ]
        # B's own proof does not carry over to another URL either
        b_to_b = run(UID_B, "call", b_url)
        assert b_to_b.returncode == 1 and "HTTP 403" in b_to_b.stdout  # B allows only A
    assert b_id in (tmp_path / "a.log").read_text()  # A logged who called
