"""Whether a bundle fetched from a peer's endpoint may replace the one we hold, and when to
fetch again. Pure: the refresher does the I/O and records what this decides.

A peer's endpoint is not trusted to be well behaved: the body is bounded, must be a SPIFFE
bundle with keys, its CA certificates must not name another trust domain, and its sequence
may not go back (a replayed older bundle would resurrect retired keys).
"""

from __future__ import annotations

from datetime import timedelta

from insignia.bundle import Bundle, InvalidBundle
from insignia.server.ca.x509ca import uri_trust_domain
from insignia.spiffeid import TrustDomain

MAX_BUNDLE_BYTES = 1024 * 1024
MIN_REFRESH = timedelta(seconds=30)
MAX_REFRESH = timedelta(days=1)
DEFAULT_REFRESH = timedelta(minutes=5)  # a peer that gives no hint


class BundleRefused(ValueError):
    """A fetched bundle we will not store; the message is one line saying why."""


def accept_bundle(trust_domain: TrustDomain, body: bytes, held: Bundle | None) -> Bundle:
    """The peer's bundle from `body`, or BundleRefused naming the first rule it breaks."""
    if len(body) > MAX_BUNDLE_BYTES:
        raise BundleRefused(f"bundle is over {MAX_BUNDLE_BYTES} bytes")
    try:
        bundle = Bundle.parse_spiffe(trust_domain, body)
    except InvalidBundle as exc:
        raise BundleRefused(f"not a SPIFFE bundle: {exc.reason}") from None
    if not bundle.x509_authorities and not bundle.jwt_authorities:
        raise BundleRefused("bundle has no x509-svid or jwt-svid keys")
    named = foreign_authority(bundle)
    if named is not None:
        raise BundleRefused(f"an X.509 authority is for trust domain {named}")
    if held is not None and bundle.sequence < held.sequence:
        raise BundleRefused(
            f"spiffe_sequence {bundle.sequence} is older than the held {held.sequence}"
        )
    return bundle


def foreign_authority(bundle: Bundle) -> TrustDomain | None:
    """The other trust domain an X.509 authority of `bundle` names in its URI SAN, if any: a
    bundle holding another domain's CA would let that domain issue this one's IDs."""
    for cert in bundle.x509_authorities:
        named = uri_trust_domain(cert)
        if named is not None and named != bundle.trust_domain:
            return named
    return None


def refresh_interval(bundle: Bundle | None) -> timedelta:
    """The peer's refresh hint, kept within [MIN_REFRESH, MAX_REFRESH]."""
    if bundle is None or bundle.refresh_hint is None:
        return DEFAULT_REFRESH
    return min(MAX_REFRESH, max(MIN_REFRESH, timedelta(seconds=bundle.refresh_hint)))
