"""Whether the local trust bundle must be stored again, and under which sequence number.

The server recomputes its bundle from the CA's authorities on every CA change. A bundle whose
keys are the stored ones keeps the stored sequence (a restart, or a change that left the keys
alone, is not a new bundle); any change of keys takes the next sequence, so agents and
federated peers see `spiffe_sequence` grow exactly when the keys do. Pure: the caller reads
the stored record and writes what this decides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from insignia.server.datastore.records import BundleRecord


@dataclass(frozen=True, slots=True)
class Publication:
    sequence: int  # the sequence the local bundle carries from now on
    store: bool  # whether the bundle must be written under `sequence`


def publication(stored: BundleRecord | None, current_document: str) -> Publication:
    """What to do with `current_document` (the bundle from the CA now) given what is stored."""
    if stored is not None and keys_of(stored.document) == keys_of(current_document):
        return Publication(stored.sequence, store=False)
    return Publication((stored.sequence if stored else 0) + 1, store=True)


def keys_of(document: str) -> str:
    """A bundle document without its sequence, to tell a real change from a re-publish."""
    doc = json.loads(document)
    doc.pop("spiffe_sequence", None)
    return json.dumps(doc, sort_keys=True)
