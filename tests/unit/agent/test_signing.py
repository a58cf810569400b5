from datetime import timedelta

from cryptography import x509

from insignia.agent.svids.signing import MintBudget, authority_ids
from insignia.keys import KeyType, generate_key
from insignia.server.ca.x509_leaf import build_leaf
from insignia.server.ca.x509ca import SigningAuthority, build_intermediate_ca
from insignia.spiffeid import SpiffeId
from tests.unit.agent.helpers import make_entry
from tests.unit.common import NOW, TD, make_ca


def ski(cert: x509.Certificate) -> str:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def test_authority_ids_name_every_ca_above_the_leaf():
    root = make_ca()
    key = generate_key(KeyType.EC_P256)
    cert = build_intermediate_ca(root, key.public_key(), TD, timedelta(hours=2), now=NOW)
    intermediate = SigningAuthority(cert, key, (cert, *root.chain))
    leaf_key = generate_key(KeyType.EC_P256)
    entry = make_entry("e", "/w", "unix:uid:1")
    leaf = build_leaf(
        leaf_key.public_key(), entry.spiffe_id, timedelta(hours=1), intermediate, now=NOW
    )
    ids = authority_ids((leaf, cert))
    assert ids == {ski(cert), ski(root.certificate)}
    assert ski(leaf) not in ids  # the leaf's own key taints nothing


def test_mint_budget_is_per_uid_and_per_spiffe_id() -> None:
    budget = MintBudget(per_uid=2, per_spiffe_id=3)
    web, db = SpiffeId.parse("spiffe://example.org/web"), SpiffeId.parse("spiffe://example.org/db")
    assert budget.refusal(1000, web, 0.0) is None
    assert budget.refusal(1000, db, 0.0) is None
    refused = budget.refusal(1000, web, 0.0)
    assert (
        refused is not None and "uid 1000" in refused and "jwt_mint_rate_per_uid = 2/s" in refused
    )
    # Another uid is not held back by uid 1000's spending, until the identity's own budget ends.
    assert budget.refusal(1001, web, 0.0) is None
    assert budget.refusal(1002, web, 0.0) is None
    refused = budget.refusal(1003, web, 0.0)
    assert refused is not None and "jwt_mint_rate_per_spiffe_id" in refused
    assert budget.refusal(1000, web, 1.0) is None  # refilled after a second
