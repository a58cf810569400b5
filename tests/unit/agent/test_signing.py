from datetime import timedelta

from cryptography import x509

from agent.signing import authority_ids
from insignia.keys import KeyType, generate_key
from insignia.x509ca import SigningAuthority, build_intermediate_ca
from insignia.x509svid import build_leaf
from tests.unit.agent.helpers import NOW, TD, make_ca, make_entry


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
