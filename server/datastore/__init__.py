"""The server's datastore: SQLite (default) or PostgreSQL, one schema, migrations at open.

All methods are synchronous and thread-safe; call them via `trio.to_thread.run_sync`.
Times are timezone-aware UTC. Every write is one transaction; writes that change entries,
agents, bundles or CA keys append change events in that same transaction.

    store = Datastore.open(url)        # sqlite:///PATH | postgresql[+psycopg]://...; upgrades
    store.close() / with Datastore.open(url) as store: ...
    store.backend -> "sqlite" | "postgresql";  store.ping()  (for /ready)
    store.datastore_id, store.notify_channel (PostgreSQL NOTIFY on every commit)
    claim_trust_domain(td) -> the td the database belongs to (recorded on first use)

Entries (build them with `insignia.server.entries.validate_entry`):
    create_entry(e) / create_entries([e, ...]) -> stored (all or none; DuplicateEntry)
    update_entry(e, expected_revision=None) -> stored, revision + 1
        (EntryNotFound, DuplicateEntry, EntryRevisionConflict)
    delete_entry(id) / delete_entries([id, ...]) -> deleted (all or none; EntryNotFound)
    prune_expired_entries() -> deleted
    get_entry(id) (EntryNotFound);  get_entries(ids) -> {id: entry} for those that exist
    list_entries(spiffe_id=, parent_id=, selectors=) -> oldest first; selectors: entry has all
    entries_snapshot() -> EntrySnapshot(entries, revision);  count_entries()
Agents:
    put_agent(AgentRecord) -> stored (upsert; keeps created_at);  get_agent(id) (AgentNotFound)
    find_agent(id) -> record | None;  list_agents(banned=None);  count_agents()
    set_agent_banned(id, banned=True) -> record;  delete_agent(id) -> record  (evict)
Join tokens (stored as SHA-256 only):
    create_join_token(token, expires_at, alias=None) (DuplicateJoinToken; with its entry)
    consume_join_token(token)  (JoinTokenNotFound | JoinTokenUsed | JoinTokenExpired)
    prune_join_tokens() -> count
Bundles (SPIFFE bundle JSON text, opaque here):
    put_bundle(td, document) -> BundleRecord (sequence + 1);  get_bundle(td) (BundleNotFound)
    list_bundles();  count_bundles();  delete_bundle(td)
    update_bundle(td, compose(journal, stored) -> document | None) -> stored?  (atomic)
    put_federated_bundle(td, document, relationship_required=) -> record | None
    delete_federated_bundle(td, mode) -> entry ids  (BundleInUse; restrict|delete|dissociate)
Federation relationships (admin API's; the config file's live in memory):
    create_federation(FederationRecord) (DuplicateFederation);  update_federation(record)
    delete_federation(td) -> record, with its bundle (FederationNotFound)
    get_federation(td);  list_federations()
CA journal:
    put_ca_keys([CaKeyRecord, ...]) (upsert by (kind, key_id), one transaction)
    load_ca_keys(kind=None);  delete_ca_key(kind, key_id) (CaKeyNotFound)
    (every server's keys; `server_id` says whose; taint and revoked never clear)
Server registry:
    put_server(ServerRecord) (upsert);  list_servers()
Change log (resume "after revision N"):
    head_revision();  events_since(revision, limit=None) -> [ChangeEvent] (RevisionPruned)
    prune_events(before) -> count;  add_listener(fn(head_revision)) / remove_listener(fn)
Database failures surface as DatastoreUnavailable; all errors derive from DatastoreError.
"""

from insignia.server.datastore.engine import normalize_url, sqlite_url
from insignia.server.datastore.errors import (
    AgentBanned,
    AgentNotFound,
    BundleInUse,
    BundleNotFound,
    CaKeyNotFound,
    ConstraintViolation,
    DatastoreError,
    DatastoreUnavailable,
    DuplicateEntry,
    DuplicateFederation,
    DuplicateJoinToken,
    EntryNotFound,
    EntryRevisionConflict,
    FederationNotFound,
    InvalidRecord,
    JoinTokenError,
    JoinTokenExpired,
    JoinTokenNotFound,
    JoinTokenUsed,
    RevisionPruned,
    SchemaTooNew,
    UnsupportedDatabaseUrl,
)
from insignia.server.datastore.records import (
    AgentRecord,
    AuthorityKind,
    AuthorityStatus,
    BundleRecord,
    CaKeyRecord,
    ChangeEvent,
    ChangeKind,
    ChangeOp,
    EntrySnapshot,
    FederationRecord,
    ServerRecord,
)
from insignia.server.datastore.store import Datastore, Listener

__all__ = [
    "AgentBanned",
    "AgentNotFound",
    "AgentRecord",
    "AuthorityKind",
    "AuthorityStatus",
    "BundleInUse",
    "BundleNotFound",
    "BundleRecord",
    "CaKeyNotFound",
    "CaKeyRecord",
    "ChangeEvent",
    "ChangeKind",
    "ChangeOp",
    "ConstraintViolation",
    "Datastore",
    "DatastoreError",
    "DatastoreUnavailable",
    "DuplicateEntry",
    "DuplicateFederation",
    "DuplicateJoinToken",
    "EntryNotFound",
    "EntryRevisionConflict",
    "EntrySnapshot",
    "FederationNotFound",
    "FederationRecord",
    "InvalidRecord",
    "JoinTokenError",
    "JoinTokenExpired",
    "JoinTokenNotFound",
    "JoinTokenUsed",
    "Listener",
    "RevisionPruned",
    "SchemaTooNew",
    "ServerRecord",
    "UnsupportedDatabaseUrl",
    "normalize_url",
    "sqlite_url",
]
