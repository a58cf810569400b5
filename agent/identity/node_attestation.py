"""The agent's own identity: node attestation, its SVID on disk, and renewal.

The agent SVID, its key and the latest trust bundle are kept in data_dir (0600, written
atomically, versioned and checksummed: insignia.daemon.sealed), so a restart while the SVID
is valid resumes without a new join token: the agent does not attest again, and a used token
left in `token_file` is never read. A join token is single use: once the server evicts such
an agent, only an operator can let it back, and the agent says so instead of retrying
forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import grpc.aio
import trio
from cryptography import x509
from insignia_proto import agent_pb2

from insignia.agent.identity.csr import build_csr
from insignia.agent.identity.legacy_files import read_legacy_identity, remove_legacy_files
from insignia.agent.identity.server_answers import Answer, classify
from insignia.agent.identity.server_client import ServerClient, next_message
from insignia.attestors.interface import AttestationError, NodeAttestorAgent
from insignia.bundle import Bundle, InvalidBundle
from insignia.daemon.files import ensure_private_dir
from insignia.daemon.logs import get_logger
from insignia.daemon.runtime import call_asyncio
from insignia.daemon.sealed import discard, read_sealed, write_sealed
from insignia.keys import (
    InvalidKey,
    KeyType,
    PrivateKey,
    generate_key,
    private_key_from_pem,
    private_key_to_pem,
)
from insignia.spiffeid import SpiffeId, TrustDomain
from insignia.x509svid import (
    InvalidX509Svid,
    X509Svid,
    leaf_spiffe_id,
    parse_chain_der,
    verify_chain,
)

log = get_logger(__name__)

# The agent SVID chain, its key and its state in ONE sealed file (0600, checksummed) replaced
# atomically: written as two files, a crash between the writes would leave a key that does
# not match the certificate, and a join_token agent would then need a new token.
IDENTITY_FILE: Final = "agent_identity.sealed"
BUNDLE_FILE: Final = "bundle.sealed"
_IDENTITY_KIND: Final = "agent_identity"
_BUNDLE_KIND: Final = "bundle"
_VERSION: Final = 1


class AttestationRefused(Exception):
    """The server (or the plugin) refused node attestation; the message says what to do."""


class NeedsNewJoinToken(AttestationRefused):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"{detail}; this agent cannot re-attest on its own: create a new join token on the "
            "server (insignia-server token generate) and restart with --join-token <token>"
        )
        self.detail = detail


@dataclass(frozen=True)
class AgentIdentity:
    svid: X509Svid
    bundle: Bundle
    reattestable: bool

    @property
    def spiffe_id(self) -> SpiffeId:
        return self.svid.spiffe_id

    @property
    def not_before(self) -> datetime:
        return self.svid.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.svid.expires_at

    def credentials_pem(self) -> tuple[bytes, bytes]:
        return self.svid.chain_pem(), private_key_to_pem(self.svid.private_key)


def save_identity(data_dir: Path, identity: AgentIdentity) -> None:
    """Persist SVID, key, bundle and state (blocking: call from a thread in trio)."""
    chain_pem, key_pem = identity.credentials_pem()
    _write_identity(
        data_dir,
        str(identity.spiffe_id),
        identity.reattestable,
        chain_pem + key_pem,
        identity.bundle,
    )


def _write_identity(
    data_dir: Path, spiffe_id: str, reattestable: bool, svid_pem: bytes, bundle: Bundle
) -> None:
    ensure_private_dir(data_dir)
    td = str(SpiffeId.parse(spiffe_id).trust_domain)
    # The bundle first: it trusts both the old and the new issuer during a rotation, so a crash
    # before the SVID write leaves the previous, still verifiable SVID in place.
    payload = {"spiffe_bundle": bundle.to_spiffe().decode()}
    write_sealed(data_dir / BUNDLE_FILE, _BUNDLE_KIND, _VERSION, td, payload)
    state = {"spiffe_id": spiffe_id, "reattestable": reattestable, "svid_pem": svid_pem.decode()}
    write_sealed(data_dir / IDENTITY_FILE, _IDENTITY_KIND, _VERSION, td, state)


def forget_identity(data_dir: Path) -> None:
    """Drop the persisted SVID (after eviction); the bundle stays as the trust anchor."""
    (data_dir / IDENTITY_FILE).unlink(missing_ok=True)


def load_bundle(data_dir: Path, trust_domain: TrustDomain) -> Bundle | None:
    """The bundle from the last attestation or sync, if any (newer than the bootstrap file)."""
    path = data_dir / BUNDLE_FILE
    payload = read_sealed(path, _BUNDLE_KIND, _VERSION, str(trust_domain))
    if payload is None:
        return None
    try:
        return Bundle.parse_spiffe(trust_domain, str(payload["spiffe_bundle"]).encode())
    except (KeyError, InvalidBundle) as exc:
        discard(path, f"unusable bundle: {exc}")
        return None


def load_identity(data_dir: Path, trust_domain: TrustDomain, now: datetime) -> AgentIdentity | None:
    """The persisted identity if it is complete, consistent and still valid; else None."""
    path = data_dir / IDENTITY_FILE
    if not path.exists():
        _adopt_legacy_identity(data_dir, trust_domain)
    state = read_sealed(path, _IDENTITY_KIND, _VERSION, str(trust_domain))
    if state is None:
        return None
    bundle = load_bundle(data_dir, trust_domain)
    if bundle is None:
        return None
    try:
        pem = str(state["svid_pem"]).encode()
        chain = tuple(x509.load_pem_x509_certificates(pem))  # skips the key's PEM block
        key = private_key_from_pem(pem)  # and this skips the certificates
        svid = X509Svid(leaf_spiffe_id(chain[0]), chain, key)
    except (KeyError, ValueError, InvalidKey, InvalidX509Svid) as exc:
        discard(path, f"unusable agent SVID: {exc}")
        return None
    try:
        verify_chain(chain, bundle, now)
    except InvalidX509Svid as exc:  # expired, or its CA left the bundle: attest anew
        log.info("agent.persisted_svid_invalid", error=str(exc))
        return None
    return AgentIdentity(svid, bundle, bool(state.get("reattestable", False)))


def _adopt_legacy_identity(data_dir: Path, trust_domain: TrustDomain) -> None:
    """Re-write a pre-upgrade agent's identity files as the sealed ones (legacy_files)."""
    legacy = read_legacy_identity(data_dir, trust_domain)
    if legacy is None:
        return
    _write_identity(data_dir, legacy.spiffe_id, legacy.reattestable, legacy.svid_pem, legacy.bundle)
    remove_legacy_files(data_dir)


async def attest(
    server: ServerClient,
    plugin_name: str,
    attestor: NodeAttestorAgent,
    key_type: KeyType,
    trust_domain: TrustDomain,
    now: datetime,
) -> AgentIdentity:
    """Run the Attest stream: params, then answer challenges until the result arrives."""
    key = await trio.to_thread.run_sync(generate_key, key_type)
    csr = build_csr(key, None)
    try:
        payload = await attestor.payload()
    except AttestationError as exc:
        raise AttestationRefused(str(exc)) from exc
    call = server.attest()
    responses = aiter(call)
    try:
        params = agent_pb2.AttestParams(attestor=plugin_name, payload=payload, csr=csr)
        await call_asyncio(call.write, agent_pb2.AttestRequest(params=params))
        while True:
            response = await call_asyncio(next_message, responses)
            if response is None:
                raise AttestationRefused("the server ended attestation without a result")
            if response.HasField("result"):
                break
            answer = await attestor.answer(response.challenge)
            await call_asyncio(call.write, agent_pb2.AttestRequest(challenge_response=answer))
    except grpc.aio.AioRpcError as exc:
        if classify(exc.code()) is not Answer.REFUSED:
            raise  # transient: the caller retries with backoff
        detail = f"the server refused node attestation: {exc.details()}"
        if plugin_name == "join_token" and exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            raise NeedsNewJoinToken(detail) from exc
        raise AttestationRefused(detail) from exc
    except AttestationError as exc:
        raise AttestationRefused(str(exc)) from exc
    finally:
        call.cancel()
    return _identity_from_result(response.result, key, trust_domain, now)


def _identity_from_result(
    result: agent_pb2.AttestResult, key: PrivateKey, trust_domain: TrustDomain, now: datetime
) -> AgentIdentity:
    try:
        bundle = Bundle.parse_spiffe(trust_domain, result.bundle)
        chain = parse_chain_der(result.svid_chain)
        svid = X509Svid(SpiffeId.parse(result.agent_id), chain, key)
        verify_chain(chain, bundle, now)
    except (InvalidBundle, InvalidX509Svid, InvalidKey, ValueError) as exc:
        raise AttestationRefused(f"the server's attestation result is unusable: {exc}") from exc
    return AgentIdentity(svid, bundle, result.reattestable)


async def renew(
    server: ServerClient, identity: AgentIdentity, key_type: KeyType, now: datetime
) -> AgentIdentity:
    """A fresh agent SVID for a fresh key, over mTLS with the current one."""
    key = await trio.to_thread.run_sync(generate_key, key_type)
    chain_der = await call_asyncio(server.renew_agent, build_csr(key, identity.spiffe_id))
    try:
        chain = parse_chain_der(chain_der)
        svid = X509Svid(identity.spiffe_id, chain, key)
        verify_chain(chain, identity.bundle, now)
    except (InvalidX509Svid, InvalidKey) as exc:
        raise AttestationRefused(f"the server's renewed agent SVID is unusable: {exc}") from exc
    return AgentIdentity(svid, identity.bundle, identity.reattestable)
