"""Adopting the identity files of agents released before the sealed files (upgrade path).

Those agents kept their SVID and key in ``agent_svid.pem``, its state in ``agent_state.json``
and the bundle in ``bundle.spiffe.json``. A join-token agent cannot attest again on its own,
so dropping those files at upgrade would strand it until an operator made a new token. They
are read once, re-written as the sealed files, and removed; anything unreadable is removed
with one warning line, as a damaged sealed file would be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509

from insignia.bundle import Bundle, InvalidBundle
from insignia.daemon.logs import get_logger
from insignia.daemon.sealed import discard
from insignia.spiffeid import TrustDomain
from insignia.x509svid import InvalidX509Svid, leaf_spiffe_id

log = get_logger(__name__)

LEGACY_SVID_FILE: Final = "agent_svid.pem"
LEGACY_STATE_FILE: Final = "agent_state.json"
LEGACY_BUNDLE_FILE: Final = "bundle.spiffe.json"
LEGACY_FILES: Final = (LEGACY_SVID_FILE, LEGACY_STATE_FILE, LEGACY_BUNDLE_FILE)


@dataclass(frozen=True)
class LegacyIdentity:
    spiffe_id: str
    svid_pem: bytes  # the chain, then the key
    reattestable: bool
    bundle: Bundle


def read_legacy_identity(data_dir: Path, trust_domain: TrustDomain) -> LegacyIdentity | None:
    """The identity in the old files, or None when there are none (or they were unusable: then
    they are removed with a warning). Blocking."""
    paths = [data_dir / name for name in LEGACY_FILES]
    if not any(p.exists() for p in paths):
        return None
    try:
        pem = paths[0].read_bytes()
        state = json.loads(paths[1].read_text())
        bundle = Bundle.parse_spiffe(trust_domain, paths[2].read_bytes())
        reattestable = bool(state.get("reattestable", False)) if isinstance(state, dict) else False
        spiffe_id = str(leaf_spiffe_id(x509.load_pem_x509_certificates(pem)[0]))
    except (OSError, ValueError, InvalidBundle, InvalidX509Svid) as exc:
        for path in paths:
            if path.exists():
                discard(path, f"unusable pre-upgrade identity file: {exc}")
        return None
    return LegacyIdentity(spiffe_id, pem, reattestable, bundle)


def remove_legacy_files(data_dir: Path) -> None:
    """After the sealed files hold the adopted identity."""
    for name in LEGACY_FILES:
        (data_dir / name).unlink(missing_ok=True)
    log.info("agent.identity_files_upgraded", data_dir=str(data_dir))
