"""Sources: the small interfaces that SVID consumers (mTLS, JWT checks) depend on.

A consumer asks a source for the current SVID or a trust domain's bundle every time it needs
one, and never keeps a copy: whoever implements the source (the Workload API watcher, a file
reloader, a test) rotates the material, and the next handshake or token check sees it.
`insignia.bundle.BundleSource` is the bundle half; `X509Source` joins it to an SVID source,
as go-spiffe's `x509svid.Source` and `x509bundle.Source` do.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from cryptography import x509

from insignia.bundle import Bundle, BundleSet, BundleSource
from insignia.keys import private_key_from_pem
from insignia.spiffeid import TrustDomain
from insignia.x509svid import MalformedChain, X509Svid, leaf_spiffe_id

__all__ = [
    "BundleSource",
    "NoX509Svid",
    "StaticSource",
    "X509Source",
    "X509SvidSource",
]


class NoX509Svid(LookupError):
    """The source holds no X509-SVID (yet): nothing to present in a handshake."""


class X509SvidSource(Protocol):
    """Hands out the workload's current X509-SVID (raises if it has none)."""

    def get_x509_svid(self) -> X509Svid: ...


class X509Source(X509SvidSource, BundleSource, Protocol):
    """An SVID to present and the bundles to verify peers with: what mTLS needs."""


class StaticSource:
    """An X509Source (and JWT bundle source) holding fixed material until told otherwise.

    For tests, and for software that gets its SVID as files (`from_pem_files`). `set_x509_svid`
    and `set_bundle` swap the material atomically, which is all rotation means to a consumer.
    """

    def __init__(
        self, svid: X509Svid | None = None, bundles: Iterable[Bundle] | BundleSet = ()
    ) -> None:
        self._svid = svid
        self._bundles = bundles if isinstance(bundles, BundleSet) else BundleSet.of(bundles)

    def get_x509_svid(self) -> X509Svid:
        if self._svid is None:
            raise NoX509Svid("this source holds no X509-SVID")
        return self._svid

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None:
        return self._bundles.get_bundle_for_trust_domain(trust_domain)

    def set_x509_svid(self, svid: X509Svid) -> None:
        self._svid = svid

    def set_bundle(self, bundle: Bundle) -> None:
        """Add or replace the bundle of `bundle.trust_domain`."""
        self._bundles = self._bundles.with_bundle(bundle)

    @classmethod
    def from_pem_files(
        cls,
        svid_path: str | Path,
        key_path: str | Path,
        bundle_path: str | Path,
        trust_domain: TrustDomain | None = None,
    ) -> StaticSource:
        """Load svid.pem (leaf first), svid_key.pem (PKCS#8) and bundle.pem, as spiffe-helper
        writes them. The bundle belongs to `trust_domain`, by default the SVID's own.

        Blocking file reads: from trio, call it in `trio.to_thread.run_sync`.
        """
        try:
            chain = tuple(x509.load_pem_x509_certificates(Path(svid_path).read_bytes()))
        except ValueError as exc:
            raise MalformedChain(f"{svid_path}: not PEM certificates: {exc}") from exc
        key = private_key_from_pem(Path(key_path).read_bytes())
        svid = X509Svid(leaf_spiffe_id(chain[0]), chain, key)
        td = trust_domain if trust_domain is not None else svid.spiffe_id.trust_domain
        return cls(svid, [Bundle.parse_pem(td, Path(bundle_path).read_bytes())])
