"""A workload using py-spiffe, the independent client: one command, one JSON line out.

Run as a separate process (py-spiffe's generated messages must not share a process with
ours, and a real workload is its own process anyway), often under another uid. Usage:

    python agent_pyspiffe_client.py SOCKET x509
    python agent_pyspiffe_client.py SOCKET source
    python agent_pyspiffe_client.py SOCKET jwt AUDIENCE [AUDIENCE...]
    python agent_pyspiffe_client.py SOCKET watch COUNT TIMEOUT
    python agent_pyspiffe_client.py SOCKET bundles
    python agent_pyspiffe_client.py SOCKET validate TOKEN AUDIENCE

Errors print {"error": <grpc status name or exception type>, "detail": ...} and exit 3.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient, X509Source
from spiffe.svid.jwt_svid import JwtSvid
from spiffe.workloadapi.x509_context import X509Context

_OUTPUT = threading.Lock()


def emit(document: dict[str, Any]) -> None:
    """One JSON line; py-spiffe's stream thread and the main thread both write."""
    with _OUTPUT:
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def describe_context(context: X509Context) -> dict[str, Any]:
    svid = context.default_svid
    bundle = context.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    assert bundle is not None, "no X.509 bundle for the SVID's trust domain"
    return {
        "ids": [str(s.spiffe_id) for s in context.x509_svids],
        "serial": str(svid.leaf.serial_number),
        "not_after": svid.leaf.not_valid_after_utc.isoformat(),
        "chain_pem": [pem(c) for c in svid.cert_chain],
        "bundle_pem": [pem(c) for c in bundle.x509_authorities],
    }


def main(socket: str, command: str, *args: str) -> dict[str, Any]:
    client = WorkloadApiClient(socket_path=f"unix://{socket}")
    if command == "x509":
        context = client.fetch_x509_context(timeout=10)
        result = describe_context(context)
        bundles = client.fetch_x509_bundles(timeout=10)
        result["has_own_bundle"] = (
            bundles.get_bundle_for_trust_domain(context.default_svid.spiffe_id.trust_domain)
            is not None
        )
        return result
    if command == "source":
        source = X509Source(workload_api_client=client, timeout_in_seconds=10)
        try:
            return describe_context(source.get_x509_context())
        finally:
            source.close()
    if command == "jwt":
        audience = set(args)
        svid = client.fetch_jwt_svid(audience=audience, timeout=10)
        jwt_bundles = client.fetch_jwt_bundles(timeout=10)
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert jwt_bundle is not None, "no JWT bundle for the SVID's trust domain"
        # py-spiffe's own check of the token, independent of the agent's
        validated = JwtSvid.parse_and_validate(svid.token, jwt_bundle, audience)
        agent_says = client.validate_jwt_svid(svid.token, sorted(audience)[0])
        return {
            "token": svid.token,
            "spiffe_id": str(validated.spiffe_id),
            "aud": sorted(validated.audience),
            "agent_validated": str(agent_says.spiffe_id),
        }
    if command == "bundles":  # every trust domain's bundle the workload receives
        context = client.fetch_x509_context(timeout=10)
        x509_bundles = client.fetch_x509_bundles(timeout=10)
        jwt_bundles = client.fetch_jwt_bundles(timeout=10)
        return {
            "svid_bundles": {
                str(b.trust_domain): [pem(c) for c in b.x509_authorities]
                for b in context.x509_bundle_set.bundles
            },
            "x509": {
                str(b.trust_domain): [pem(c) for c in b.x509_authorities]
                for b in x509_bundles.bundles
            },
            "jwt": {str(b.trust_domain): sorted(b.jwt_authorities) for b in jwt_bundles.bundles},
        }
    if command == "validate":  # the agent's ValidateJWTSVID, for this caller
        validated = client.validate_jwt_svid(args[0], args[1])
        return {"spiffe_id": str(validated.spiffe_id), "aud": sorted(validated.audience)}
    if command == "watch":
        want, timeout = int(args[0]), float(args[1])
        serials: list[str] = []
        done = threading.Event()
        errors: list[str] = []

        def on_success(context: X509Context) -> None:
            if done.is_set():  # later rotations may arrive before the answer is printed
                return
            serial = str(context.default_svid.leaf.serial_number)
            if serial not in serials:
                serials.append(serial)
                emit({"update": serial})
            if len(serials) >= want:
                done.set()

        def on_error(exc: Exception) -> None:
            errors.append(repr(exc))

        handle = client.stream_x509_contexts(on_success, on_error)
        done.wait(timeout)
        handle.cancel()
        return {"serials": serials, "errors": errors}
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    try:
        emit(main(*sys.argv[1:]))
    except Exception as exc:  # report, do not crash: the test asserts on the status
        cause = exc.__cause__ or exc.__context__
        code = getattr(cause, "code", None)
        name = code().name if callable(code) else type(exc).__name__
        emit({"error": name, "detail": str(exc)})
        sys.exit(3)
