import math

import pytest
from insignia_proto import agent_pb2

from insignia.agent.cache.sync import InvalidSyncUpdate, parse_update, silence_limit
from insignia.bundle import Bundle
from tests.unit.common import TD, make_ca


def state(ca, **kw):
    return agent_pb2.BundleState(spiffe_bundle=Bundle(TD, (ca.certificate,)).to_spiffe(), **kw)


def entry(**kw):
    fields = dict(
        id="e",
        spiffe_id="spiffe://example.org/w",
        selectors=["unix:uid:1"],
        x509_svid_ttl=60,
        jwt_svid_ttl=60,
    )
    fields.update(kw)
    return agent_pb2.Entry(**fields)


def test_full_update_is_parsed_with_bundle_and_tainted_ids():
    ca, fed = make_ca(), make_ca()
    fed_doc = Bundle(TD.__class__.parse("partner.org"), (fed.certificate,)).to_spiffe()
    update = agent_pb2.SyncUpdate(
        store_id="s",
        revision=9,
        full=True,
        entries=[entry()],
        bundle=state(
            ca,
            tainted_x509_authorities=["ABCD"],
            tainted_jwt_authorities=["k1"],
            federated_bundles={"partner.org": fed_doc},
        ),
    )
    delta = parse_update(update, TD)
    assert (delta.store_id, delta.revision, delta.full) == ("s", 9, True)
    assert [e.id for e in delta.entries] == ["e"]
    assert delta.bundles.tainted_x509 == frozenset({"abcd"})
    assert delta.bundles.tainted_jwt == frozenset({"k1"})
    assert [str(td) for td in delta.bundles.federated] == ["partner.org"]


def test_bad_entries_are_dropped_not_fatal():
    update = agent_pb2.SyncUpdate(
        store_id="s",
        revision=1,
        full=True,
        entries=[entry(), entry(id="bad", selectors=[])],
        bundle=state(make_ca()),
    )
    assert [e.id for e in parse_update(update, TD).entries] == ["e"]


def test_full_update_without_bundle_or_with_garbage_bundle_is_refused():
    with pytest.raises(InvalidSyncUpdate, match="must carry the bundle"):
        parse_update(agent_pb2.SyncUpdate(store_id="s", revision=1, full=True), TD)
    garbage = agent_pb2.SyncUpdate(
        store_id="s", revision=1, full=True, bundle=agent_pb2.BundleState(spiffe_bundle=b"{nope")
    )
    with pytest.raises(InvalidSyncUpdate, match="unusable bundle"):
        parse_update(garbage, TD)


def test_silence_limit_allows_two_heartbeats_and_slack_and_none_without_an_interval():
    assert silence_limit(2000) == 4.5
    assert silence_limit(100) == pytest.approx(0.7)
    assert silence_limit(0) == math.inf  # an older server that does not say: keepalive decides
