"""The TTL rules, each written once: 0 means the server default, and the CA's ttl bounds what
entries may ask for and what the server warns about, in the same words and units."""

from __future__ import annotations

from datetime import timedelta

import pytest

from insignia.server.ca.rotation import (
    guaranteed_svid_ttl,
    longest_svid_ttl,
    ttl_beyond_guarantee,
)
from insignia.server.entries import (
    Defaults,
    EntryLimits,
    InvalidEntry,
    ttl_or_default,
    validate_entry,
)
from tests.unit.common import TD


def test_zero_means_the_default_and_anything_else_is_itself() -> None:
    defaults = Defaults(timedelta(hours=1), timedelta(minutes=5))
    assert defaults.x509(0) == timedelta(hours=1)
    assert defaults.jwt(0) == timedelta(minutes=5)
    assert defaults.x509(90) == timedelta(seconds=90)
    assert defaults.jwt(30) == timedelta(seconds=30)


def test_a_negative_ttl_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="ttl -1: expected a positive number of seconds"):
        ttl_or_default(-1, timedelta(hours=1))


@pytest.mark.parametrize(
    ("ca_ttl", "guaranteed"),
    [
        (timedelta(hours=24), timedelta(hours=4)),
        (timedelta(days=365), timedelta(days=7)),  # SPIRE's 7 d ceiling
    ],
)
def test_the_guarantee_is_a_sixth_of_the_ca_ttl_up_to_seven_days(
    ca_ttl: timedelta, guaranteed: timedelta
) -> None:
    assert guaranteed_svid_ttl(ca_ttl) == guaranteed
    assert longest_svid_ttl(ca_ttl) == guaranteed * 6
    limits = EntryLimits.for_ca(TD, ca_ttl)
    assert limits.max_x509_svid_ttl == limits.max_jwt_svid_ttl == (guaranteed * 6).total_seconds()


def test_the_warning_and_the_entry_refusal_use_the_same_units() -> None:
    ca_ttl = timedelta(hours=24)
    assert ttl_beyond_guarantee("default_x509_svid_ttl", timedelta(hours=4), ca_ttl) is None
    warning = ttl_beyond_guarantee("default_x509_svid_ttl", timedelta(hours=5), ca_ttl)
    assert warning == (
        "default_x509_svid_ttl 18000 s exceeds 14400 s, the longest TTL a CA with ttl 86400 s "
        "guarantees; SVIDs will be cut short at the CA's expiry"
    )
    with pytest.raises(InvalidEntry, match=r"longer than 86400 s, the longest the CA's ttl"):
        validate_entry(
            spiffe_id="spiffe://example.org/w",
            parent_id="spiffe://example.org/insignia/server",
            selectors=["unix:uid:1"],
            limits=EntryLimits.for_ca(TD, ca_ttl),
            x509_svid_ttl=86401,
        )
