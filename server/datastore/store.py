"""`Datastore`: the server's synchronous, thread-safe persistence API.

SQLAlchemy Core, not the ORM: the domain types are frozen dataclasses built by validation,
so an identity map and mutable mapped objects would only add a second model to keep in sync;
Core keeps every statement explicit (guarded UPDATEs, batch inserts) and identical on SQLite
and PostgreSQL. Call it from trio through `trio.to_thread.run_sync`.

Every write runs in one transaction that also appends its change events, then notifies the
listeners with the new head revision after the commit.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Literal

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from insignia._closing import Closing
from insignia.selectors import Selector
from insignia.server.datastore import (
    agent_queries,
    changelog,
    entry_queries,
    federation_queries,
    meta,
    server_queries,
    trust_queries,
)
from insignia.server.datastore.engine import (
    WRITE_OPTION,
    create_engine,
    normalize_url,
    upgrade_schema,
)
from insignia.server.datastore.errors import (
    BundleInUse,
    ConstraintViolation,
    DatastoreError,
    DatastoreUnavailable,
    EntryNotFound,
)
from insignia.server.datastore.federation_queries import BundleDeleteMode
from insignia.server.datastore.records import (
    AgentRecord,
    AuthorityKind,
    BundleRecord,
    CaKeyRecord,
    ChangeEvent,
    EntrySnapshot,
    FederationRecord,
    ServerRecord,
)
from insignia.server.datastore.schema import agents, bundles, entries
from insignia.server.entries import RegistrationEntry
from insignia.spiffeid import SpiffeId, TrustDomain

Listener = Callable[[int], None]
# Builds the new local bundle document from the whole CA journal and the stored bundle (None:
# no change). Runs inside the write transaction, so no other server's key can slip past it.
BundleComposer = Callable[[list[CaKeyRecord], BundleRecord | None], str | None]
log = structlog.get_logger(__name__)
DATASTORE_ID = "datastore_id"
TRUST_DOMAIN = "trust_domain"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Datastore(Closing):
    def __init__(self, engine: Engine, clock: Callable[[], datetime] = _utcnow) -> None:
        self._engine = engine
        self._clock = clock
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        self.datastore_id = ""

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] = _utcnow) -> Datastore:
        """Connect and bring the schema to the newest migration (`alembic upgrade head`)."""
        store = cls(create_engine(normalize_url(url)), clock)
        try:
            with store._write(notify=False) as conn:
                upgrade_schema(conn)
                store.datastore_id = meta.claim(conn, DATASTORE_ID, secrets.token_hex(8))
        except BaseException:
            store.close()
            raise
        return store

    @property
    def url(self) -> URL:
        return self._engine.url

    @property
    def notify_channel(self) -> str:
        """The PostgreSQL NOTIFY channel every commit on this database signals (per database
        id, so stores sharing one PostgreSQL database in different schemas stay apart)."""
        return f"insignia_changes_{self.datastore_id}"

    def claim_trust_domain(self, trust_domain: TrustDomain) -> TrustDomain:
        """The trust domain the database belongs to, recording `trust_domain` if it is new:
        one database serves one deployment."""
        with self._write(notify=False) as conn:
            return TrustDomain(meta.claim(conn, TRUST_DOMAIN, str(trust_domain)))

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self._engine.dialect.name == "sqlite" else "postgresql"

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> None:
        """Raise `DatastoreUnavailable` unless the database answers (for /ready)."""
        with self._read() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -- change notification -------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(head_revision)` after every committed write, in the writer's
        thread. It must be quick and must not raise (hand off to trio with
        `trio.from_thread.run_sync` or a memory channel's `send_nowait`)."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._listeners_lock:
            self._listeners.remove(listener)

    def head_revision(self) -> int:
        with self._read() as conn:
            return changelog.head_revision(conn)

    def events_since(self, revision: int, limit: int | None = None) -> list[ChangeEvent]:
        """Events after `revision`, oldest first. Raises `RevisionPruned` when the log no
        longer reaches back that far: the reader then reloads a full snapshot."""
        with self._read() as conn:
            return changelog.events_since(conn, revision, limit)

    def store_id(self) -> str:
        """The database's resume-point name (changelog.store_id); the same on every server."""
        try:
            with self._write(notify=False) as conn:
                return changelog.store_id(conn)
        except ConstraintViolation:  # another server named it at the same moment
            with self._read() as conn:
                return changelog.store_id(conn)

    def prune_events(self, before: datetime) -> int:
        """Drop events older than `before` (always keeping the newest); returns how many."""
        with self._write(notify=False) as conn:
            return changelog.prune(conn, before)

    # -- registration entries ------------------------------------------------------------

    def create_entry(self, entry: RegistrationEntry) -> RegistrationEntry:
        return self.create_entries([entry])[0]

    def create_entries(self, batch: Sequence[RegistrationEntry]) -> list[RegistrationEntry]:
        """Store all entries or none. Raises `DuplicateEntry` naming the first clash."""
        now = self._clock()
        with self._write() as conn:
            entry_queries.insert(conn, batch, now)
            changelog.append(conn, "entry", "created", (e.id for e in batch), now)
        return [replace(e, revision=0) for e in batch]

    def update_entry(
        self, entry: RegistrationEntry, expected_revision: int | None = None
    ) -> RegistrationEntry:
        """Replace the entry with `entry.id` by `entry`; its revision goes up by one.
        With `expected_revision`, refuse (`EntryRevisionConflict`) if it moved meanwhile."""
        now = self._clock()
        with self._write() as conn:
            stored = entry_queries.update(conn, entry, expected_revision, now)
            changelog.append(conn, "entry", "updated", [entry.id], now)
        return stored

    def delete_entry(self, entry_id: str) -> RegistrationEntry:
        return self.delete_entries([entry_id])[0]

    def delete_entries(self, entry_ids: Sequence[str]) -> list[RegistrationEntry]:
        """Delete all or none (`EntryNotFound`); returns the deleted entries."""
        now = self._clock()
        with self._write() as conn:
            deleted = entry_queries.delete(conn, entry_ids)
            changelog.append(conn, "entry", "deleted", (e.id for e in deleted), now)
        return deleted

    def prune_expired_entries(self) -> list[RegistrationEntry]:
        """Delete entries whose `expires_at` has passed; returns them."""
        now = self._clock()
        with self._write() as conn:
            deleted = entry_queries.delete(conn, entry_queries.expired_ids(conn, now))
            changelog.append(conn, "entry", "deleted", (e.id for e in deleted), now)
        return deleted

    def get_entry(self, entry_id: str) -> RegistrationEntry:
        with self._read() as conn:
            found = entry_queries.load_by_ids(conn, [entry_id])
        if not found:
            raise EntryNotFound(entry_id)
        return found[0]

    def get_entries(self, entry_ids: Iterable[str]) -> dict[str, RegistrationEntry]:
        """The entries that exist among `entry_ids` (absent ones were deleted)."""
        with self._read() as conn:
            return {e.id: e for e in entry_queries.load_by_ids(conn, entry_ids)}

    def list_entries(
        self,
        *,
        spiffe_id: SpiffeId | None = None,
        parent_id: SpiffeId | None = None,
        selectors: Sequence[Selector] = (),
    ) -> list[RegistrationEntry]:
        """Entries matching every given filter, oldest first. `selectors`: the entry holds
        at least all of them."""
        conditions: list[sa.ColumnElement[bool]] = []
        if spiffe_id is not None:
            conditions.append(entries.c.spiffe_id == str(spiffe_id))
        if parent_id is not None:
            conditions.append(entries.c.parent_id == str(parent_id))
        if selectors:
            conditions.append(entry_queries.having_selectors(selectors))
        with self._read() as conn:
            return entry_queries.load(conn, sa.and_(*conditions) if conditions else None)

    def page_entries(
        self,
        *,
        after: tuple[str, str] | None = None,
        limit: int = 50,
        spiffe_id: SpiffeId | None = None,
        parent_id: SpiffeId | None = None,
        selectors: Sequence[Selector] = (),
        federates_with: TrustDomain | None = None,
    ) -> list[RegistrationEntry]:
        """At most `limit` entries matching every given filter, in (SPIFFE ID, id) order after
        the pair `after` (keyset paging: the last page of 100k entries costs what the first
        does)."""
        conditions: list[sa.ColumnElement[bool]] = []
        if after is not None:
            cursor = sa.tuple_(sa.literal(after[0]), sa.literal(after[1]))
            conditions.append(sa.tuple_(entries.c.spiffe_id, entries.c.id) > cursor)
        if spiffe_id is not None:
            conditions.append(entries.c.spiffe_id == str(spiffe_id))
        if parent_id is not None:
            conditions.append(entries.c.parent_id == str(parent_id))
        if selectors:
            conditions.append(entry_queries.holding_each(selectors))
        if federates_with is not None:
            conditions.append(entry_queries.federating_with(federates_with))
        with self._read() as conn:
            return entry_queries.page(conn, sa.and_(sa.true(), *conditions), limit)

    def entries_snapshot(self) -> EntrySnapshot:
        """Every entry and the revision they reflect, read in one consistent snapshot."""
        with self._read() as conn:
            revision = changelog.head_revision(conn)
            return EntrySnapshot(entry_queries.load(conn), revision)

    def count_entries(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(entries)).scalar_one())

    # -- agents ----------------------------------------------------------------------------

    def put_agent(self, agent: AgentRecord) -> AgentRecord:
        """Insert or replace an attested agent (attestation, re-attestation, renewal)."""
        now = self._clock()
        with self._write() as conn:
            stored, created = agent_queries.upsert(conn, agent, now)
            op: Literal["created", "updated"] = "created" if created else "updated"
            changelog.append(conn, "agent", op, [str(agent.spiffe_id)], now)
        return stored

    def get_agent(self, agent_id: SpiffeId) -> AgentRecord:
        with self._read() as conn:
            return agent_queries.load_one(conn, agent_id)

    def find_agent(self, agent_id: SpiffeId) -> AgentRecord | None:
        with self._read() as conn:
            found = agent_queries.load(conn, agents.c.spiffe_id == str(agent_id))
        return found[0] if found else None

    def list_agents(self, *, banned: bool | None = None) -> list[AgentRecord]:
        with self._read() as conn:
            return agent_queries.load(conn, None if banned is None else agents.c.banned == banned)

    def count_agents(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(agents)).scalar_one())

    def set_agent_banned(self, agent_id: SpiffeId, banned: bool = True) -> AgentRecord:
        now = self._clock()
        with self._write() as conn:
            agent_queries.set_banned(conn, agent_id, banned, now)
            changelog.append(conn, "agent", "updated", [str(agent_id)], now)
            return agent_queries.load_one(conn, agent_id)

    def delete_agent(self, agent_id: SpiffeId) -> AgentRecord:
        """Evict: forget the agent, so it must attest again. Raises `AgentNotFound`, or
        `AgentBanned` for a banned agent (forgetting it would lift the ban)."""
        now = self._clock()
        with self._write() as conn:
            deleted = agent_queries.delete(conn, agent_id)
            changelog.append(conn, "agent", "deleted", [str(agent_id)], now)
        return deleted

    # -- join tokens -----------------------------------------------------------------------

    def create_join_token(
        self, token: str, expires_at: datetime, alias: RegistrationEntry | None = None
    ) -> None:
        """Remember a token by its SHA-256 digest until it is used or expires. With `alias`
        (an entry parented to the token's agent ID), store both or neither."""
        now = self._clock()
        with self._write(notify=alias is not None) as conn:
            trust_queries.create_token(conn, token, expires_at, now)
            if alias is not None:
                entry_queries.insert(conn, [alias], now)
                changelog.append(conn, "entry", "created", [alias.id], now)

    def consume_join_token(self, token: str) -> None:
        """Use a token once. Raises `JoinTokenNotFound`, `JoinTokenUsed` or
        `JoinTokenExpired` (all `JoinTokenError`); exactly one concurrent caller succeeds."""
        now = self._clock()
        with self._write(notify=False) as conn:
            trust_queries.consume_token(conn, token, now)

    def prune_join_tokens(self) -> int:
        now = self._clock()
        with self._write(notify=False) as conn:
            return trust_queries.prune_tokens(conn, now)

    # -- bundles ---------------------------------------------------------------------------

    def put_bundle(self, trust_domain: TrustDomain, document: str) -> BundleRecord:
        """Store a SPIFFE-format bundle (JWKS JSON text); its sequence grows by one."""
        now = self._clock()
        with self._write() as conn:
            record, created = trust_queries.put_bundle(conn, trust_domain, document, now)
            op: Literal["created", "updated"] = "created" if created else "updated"
            changelog.append(conn, "bundle", op, [str(trust_domain)], now)
        return record

    def get_bundle(self, trust_domain: TrustDomain) -> BundleRecord:
        with self._read() as conn:
            return trust_queries.load_bundles(conn, trust_domain)[0]

    def list_bundles(self) -> list[BundleRecord]:
        with self._read() as conn:
            return trust_queries.load_bundles(conn)

    def count_bundles(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(bundles)).scalar_one())

    def delete_bundle(self, trust_domain: TrustDomain) -> None:
        now = self._clock()
        with self._write() as conn:
            trust_queries.delete_bundle(conn, trust_domain)
            changelog.append(conn, "bundle", "deleted", [str(trust_domain)], now)

    def put_federated_bundle(
        self, trust_domain: TrustDomain, document: str, *, relationship_required: bool
    ) -> BundleRecord | None:
        """Store a peer's fetched bundle. With `relationship_required` (a relationship of the
        datastore, not of the config file), only while that relationship exists: a fetch in
        flight when another server deleted it must not bring the bundle back. None then."""
        now = self._clock()
        with self._write() as conn:
            if relationship_required and not federation_queries.exists(conn, trust_domain):
                return None
            record, created = trust_queries.put_bundle(conn, trust_domain, document, now)
            op: Literal["created", "updated"] = "created" if created else "updated"
            changelog.append(conn, "bundle", op, [str(trust_domain)], now)
        return record

    def delete_federated_bundle(
        self, trust_domain: TrustDomain, mode: BundleDeleteMode
    ) -> list[str]:
        """`bundle delete`: refuse (`BundleInUse`) while a stored relationship fetches it;
        entries federating with it are a refusal (restrict), deleted with it (delete), or
        lose it from their federates_with (dissociate). Returns those entries' ids."""
        now = self._clock()
        with self._write() as conn:
            if federation_queries.exists(conn, trust_domain):
                raise BundleInUse(
                    str(trust_domain),
                    "a federation relationship keeps it (`federation delete` removes both)",
                )
            ids = federation_queries.federating_entry_ids(conn, trust_domain)
            if ids and mode == "restrict":
                raise BundleInUse(
                    str(trust_domain),
                    f"{len(ids)} {'entry federates' if len(ids) == 1 else 'entries federate'} "
                    f"with it (first {ids[0]}); --mode delete or dissociate",
                )
            trust_queries.delete_bundle(conn, trust_domain)
            changelog.append(conn, "bundle", "deleted", [str(trust_domain)], now)
            if ids and mode == "delete":
                entry_queries.delete(conn, ids)
                changelog.append(conn, "entry", "deleted", ids, now)
            elif ids:
                federation_queries.dissociate(conn, trust_domain, ids, now)
                changelog.append(conn, "entry", "updated", ids, now)
        return ids

    # -- federation relationships ----------------------------------------------------------

    def create_federation(self, record: FederationRecord) -> FederationRecord:
        """Store a new relationship (`DuplicateFederation` if the trust domain has one)."""
        now = self._clock()
        with self._write() as conn:
            stored = federation_queries.insert(conn, record, now)
            changelog.append(conn, "federation", "created", [str(record.trust_domain)], now)
        return stored

    def update_federation(self, record: FederationRecord) -> FederationRecord:
        now = self._clock()
        with self._write() as conn:
            stored = federation_queries.update(conn, record, now)
            changelog.append(conn, "federation", "updated", [str(record.trust_domain)], now)
        return stored

    def delete_federation(self, trust_domain: TrustDomain) -> FederationRecord:
        """Forget the relationship and the bundle fetched through it, in one transaction, so
        agents drop the bundle with it. Entries keep naming the trust domain."""
        now = self._clock()
        with self._write() as conn:
            deleted = federation_queries.delete(conn, trust_domain)
            changelog.append(conn, "federation", "deleted", [str(trust_domain)], now)
            if trust_queries.bundle_exists(conn, trust_domain):
                trust_queries.delete_bundle(conn, trust_domain)
                changelog.append(conn, "bundle", "deleted", [str(trust_domain)], now)
        return deleted

    def get_federation(self, trust_domain: TrustDomain) -> FederationRecord:
        with self._read() as conn:
            return federation_queries.load(conn, trust_domain)[0]

    def list_federations(self) -> list[FederationRecord]:
        with self._read() as conn:
            return federation_queries.load(conn)

    def update_bundle(self, trust_domain: TrustDomain, compose: BundleComposer) -> bool:
        """Recompute the local bundle from the whole CA journal under the write lock; store
        it if `compose` returns a document. True when it did."""
        now = self._clock()
        with self._write() as conn:
            journal = trust_queries.load_ca_keys(conn)
            stored = trust_queries.load_bundles(conn)
            current = next((b for b in stored if b.trust_domain == trust_domain), None)
            document = compose(journal, current)
            if document is None:
                return False
            _record, created = trust_queries.put_bundle(conn, trust_domain, document, now)
            op: Literal["created", "updated"] = "created" if created else "updated"
            changelog.append(conn, "bundle", op, [str(trust_domain)], now)
        return True

    # -- CA journal ------------------------------------------------------------------------

    def put_ca_keys(self, records: Sequence[CaKeyRecord]) -> None:
        """Insert or replace authorities by (kind, key_id), all in one transaction, so a
        rotation (activate one, retire another) is never half recorded."""
        now = self._clock()
        with self._write() as conn:
            for record, created in trust_queries.put_ca_keys(conn, records, now):
                op: Literal["created", "updated"] = "created" if created else "updated"
                changelog.append(conn, "ca_key", op, [f"{record.kind}:{record.key_id}"], now)

    def load_ca_keys(self, kind: AuthorityKind | None = None) -> list[CaKeyRecord]:
        with self._read() as conn:
            return trust_queries.load_ca_keys(conn, kind)

    def delete_ca_key(self, kind: AuthorityKind, key_id: str) -> None:
        now = self._clock()
        with self._write() as conn:
            trust_queries.delete_ca_key(conn, kind, key_id)
            changelog.append(conn, "ca_key", "deleted", [f"{kind}:{key_id}"], now)

    # -- server registry -------------------------------------------------------------------

    def put_server(self, record: ServerRecord) -> None:
        """Insert or refresh this server's registry row (start and every heartbeat)."""
        with self._write(notify=False) as conn:
            server_queries.put_server(conn, record)

    def list_servers(self) -> list[ServerRecord]:
        with self._read() as conn:
            return server_queries.load_servers(conn)

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction over one consistent snapshot (REPEATABLE READ on PostgreSQL;
        a SQLite read transaction is a snapshot already)."""
        with _translated_errors(), self._engine.connect() as conn:
            if self.backend == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextmanager
    def _write(self, *, notify: bool = True) -> Iterator[Connection]:
        """A write transaction holding the store-wide write lock (see engine.py); listeners
        hear the new head revision once it has committed."""
        with _translated_errors(), self._engine.connect() as conn:
            conn = conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn
                head = changelog.head_revision(conn) if notify else 0
                if notify and self.backend == "postgresql":
                    # Delivered at commit to every server LISTENing (server/datastore/listen.py).
                    conn.execute(sa.select(sa.func.pg_notify(self.notify_channel, str(head))))
        if notify:
            with self._listeners_lock:
                listeners = list(self._listeners)
            for listener in listeners:
                try:
                    listener(head)
                except Exception:
                    # The write committed; a failing listener must not make it look failed.
                    log.exception("datastore change listener failed", head_revision=head)


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except IntegrityError as exc:
        raise ConstraintViolation(str(exc.orig or exc)) from exc
    except DBAPIError as exc:
        raise DatastoreUnavailable(str(exc.orig or exc)) from exc
    except StatementError as exc:
        # A value our own column types refused (e.g. a naive datetime): surface it as is.
        if isinstance(exc.orig, DatastoreError):
            raise exc.orig from exc
        raise
