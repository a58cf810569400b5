"""Who may act on behalf of others: one of the caller's own identities must be allow-listed."""

from insignia.agent.workloadapi.on_behalf import allowed_identity
from insignia.spiffeid import SpiffeId
from tests.unit.agent.helpers import filled_cache, make_entry, sels
from tests.unit.common import NOW, make_ca

PROXY = SpiffeId.parse("spiffe://example.org/proxy")


def test_an_allow_listed_identity_of_the_caller_lets_it_in():
    cache = filled_cache(
        make_ca(),
        make_entry("w", "/web", "unix:uid:0"),
        make_entry("p", "/proxy", "unix:uid:0", "unix:gid:5101"),
    )
    assert (
        allowed_identity(cache, sels("unix:uid:0", "unix:gid:5101"), NOW, frozenset({PROXY}))
        == PROXY
    )


def test_no_listed_identity_no_identity_or_an_empty_list_keeps_it_out():
    cache = filled_cache(
        make_ca(),
        make_entry("w", "/web", "unix:uid:0"),
        make_entry("p", "/proxy", "unix:uid:0", "unix:gid:5101"),
    )
    # Only an entry its own selectors match counts, not one merely registered on the node.
    assert (
        allowed_identity(cache, sels("unix:uid:0", "unix:gid:0"), NOW, frozenset({PROXY})) is None
    )
    assert allowed_identity(cache, sels("unix:uid:41001"), NOW, frozenset({PROXY})) is None
    assert allowed_identity(cache, sels("unix:uid:0", "unix:gid:5101"), NOW, frozenset()) is None
