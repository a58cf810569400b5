"""Typed datastore errors: callers never see SQLAlchemy or driver exceptions."""

from __future__ import annotations

from insignia._shown import shown


class DatastoreError(Exception):
    """Base of every error the datastore raises."""


class UnsupportedDatabaseUrl(DatastoreError, ValueError):
    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(f"database url {url!r}: {reason}")


class SchemaTooNew(DatastoreError):
    def __init__(self, revision: str, head: str) -> None:
        self.revision = revision
        self.head = head
        super().__init__(
            f"database schema is at migration {revision!r}, newer than this release knows "
            f"(newest {head!r}): run the release that migrated it"
        )


class DatastoreUnavailable(DatastoreError):
    """The database could not be reached or refused the operation (locked, gone, disk full)."""


class ConstraintViolation(DatastoreError):
    """The database refused a write the checks before it should have caught (a bug or a
    second writer outside this server)."""


class InvalidRecord(DatastoreError, ValueError):
    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"invalid {field} {shown(value)}: {reason}")


class EntryNotFound(DatastoreError, LookupError):
    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id
        super().__init__(f"no registration entry with id {shown(entry_id)}")


class DuplicateEntry(DatastoreError):
    """Same id, or same (spiffe_id, parent_id, selectors), as an existing or batched entry."""

    def __init__(self, entry_id: str, existing_id: str, reason: str) -> None:
        self.entry_id = entry_id
        self.existing_id = existing_id
        super().__init__(f"entry {shown(entry_id)} duplicates entry {shown(existing_id)}: {reason}")


class EntryRevisionConflict(DatastoreError):
    def __init__(self, entry_id: str, expected: int, actual: int) -> None:
        self.entry_id = entry_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"entry {shown(entry_id)} is at revision {actual}, expected {expected}: "
            "it changed since it was read"
        )


class AgentNotFound(DatastoreError, LookupError):
    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        super().__init__(f"no attested agent {shown(agent_id)}")


class AgentBanned(DatastoreError):
    """Evicting a banned agent would forget the ban and let it attest again."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        super().__init__(
            f"agent {agent_id!r} is banned: evicting it would forget the ban and let it attest "
            "again, so a banned agent stays recorded"
        )


class JoinTokenError(DatastoreError):
    """A join token that cannot be used. Carries a digest prefix, never the secret."""

    reason = "unusable"

    def __init__(self, token_digest: str) -> None:
        self.token_digest = token_digest
        super().__init__(f"join token sha256:{token_digest[:12]}... {self.reason}")


class JoinTokenNotFound(JoinTokenError):
    reason = "is unknown"


class JoinTokenUsed(JoinTokenError):
    reason = "was already used"


class JoinTokenExpired(JoinTokenError):
    reason = "has expired"


class DuplicateJoinToken(JoinTokenError):
    reason = "already exists"


class BundleNotFound(DatastoreError, LookupError):
    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        super().__init__(f"no bundle for trust domain {trust_domain!r}")


class FederationNotFound(DatastoreError, LookupError):
    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        super().__init__(f"no federation relationship with trust domain {trust_domain!r}")


class DuplicateFederation(DatastoreError):
    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        super().__init__(f"a federation relationship with {trust_domain!r} already exists")


class BundleInUse(DatastoreError):
    """A bundle delete refused: entries federate with it, or a relationship still fetches it."""

    def __init__(self, trust_domain: str, reason: str) -> None:
        self.trust_domain = trust_domain
        super().__init__(f"bundle of {trust_domain!r} not deleted: {reason}")


class CaKeyNotFound(DatastoreError, LookupError):
    def __init__(self, kind: str, key_id: str) -> None:
        self.kind = kind
        self.key_id = key_id
        super().__init__(f"no {kind} authority with key id {shown(key_id)}")


class RevisionPruned(DatastoreError):
    """The change log no longer reaches back to `revision`: the reader must resync fully."""

    def __init__(self, revision: int, pruned_through: int) -> None:
        self.revision = revision
        self.pruned_through = pruned_through
        super().__init__(
            f"changes after revision {revision} were pruned through revision "
            f"{pruned_through}: resynchronise from a full snapshot"
        )
