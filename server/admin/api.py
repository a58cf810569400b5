"""The admin API (insignia.admin.v1.AdminAPI) behind the peer-credentials Unix front.

Every call is checked (root, the server's own uid, or a uid listed in `admin_uids`) and
audit-logged with who (uid, pid), what (method and its key argument) and the result.

The web console calls the same methods in process with a `SessionCaller` in place of the
gRPC context: the session was opened by an admin (checked when its login was minted), the
audit log names it, and a refusal is raised as `AdminRefused` instead of a gRPC abort.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from insignia_proto import admin_pb2, admin_pb2_grpc

from insignia.bundle import Bundle
from insignia.daemon.logs import change_log_level, current_log_level, get_logger
from insignia.daemon.peercred.credentials import CallerTable
from insignia.daemon.reserved_ids import RESERVED_REASON, agent_spiffe_id, is_reserved
from insignia.selectors import InvalidSelector, Selector
from insignia.server.admin import federation_admin as fed
from insignia.server.admin.authority import Action, authority_action, list_authorities
from insignia.server.admin.client import DATASTORE_UNAVAILABLE_PREFIX
from insignia.server.admin.convert import agent_to_proto, entry_from_proto, entry_to_proto
from insignia.server.ca.rotation import AuthorityError
from insignia.server.ca.signing import NoActiveAuthority, SigningRefused, sign_jwt, sign_x509_svid
from insignia.server.core import ServerCore
from insignia.server.datastore import errors as ds
from insignia.server.entries import (
    InvalidEntry,
    RegistrationEntry,
    normalize_dns_name,
    validate_entry,
)
from insignia.server.registry import server_state
from insignia.spiffeid import InvalidSpiffeId, SpiffeId, TrustDomain

T = TypeVar("T")
audit = get_logger("insignia.server.audit")


@dataclass(frozen=True)
class SessionCaller:
    """An in-process caller already authenticated as an admin: a console session, named in
    the audit log with the uid that minted its login."""

    session: str
    uid: int


class AdminRefused(Exception):
    """A call refused with `code` (what a gRPC caller would get); `cause` is the error that
    made it (an `InvalidEntry` names its field)."""

    def __init__(self, code: grpc.StatusCode, detail: str, cause: Exception) -> None:
        super().__init__(f"{code.name}: {detail}")
        self.code, self.detail, self.cause = code, detail, cause


Context = grpc.aio.ServicerContext[Any, Any] | SessionCaller
ConsoleLoginMinter = Callable[[int], admin_pb2.ConsoleLogin]
"""The admin's uid -> a one-time console login for them (server/console/sessions.py)."""


class ConsoleOff(Exception):
    """`console login` on a server without a `[console]` section."""


_CODES: tuple[tuple[type[Exception] | tuple[type[Exception], ...], grpc.StatusCode], ...] = (
    (
        (InvalidEntry, InvalidSpiffeId, InvalidSelector, SigningRefused, ValueError),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    ((ds.DuplicateEntry, ds.DuplicateFederation), grpc.StatusCode.ALREADY_EXISTS),
    ((ds.EntryNotFound, ds.AgentNotFound, LookupError), grpc.StatusCode.NOT_FOUND),
    (ds.EntryRevisionConflict, grpc.StatusCode.ABORTED),
    (
        (
            AuthorityError,
            ds.AgentBanned,
            ds.BundleInUse,
            fed.DeclaredInConfig,
            fed.RefreshFailed,
            ConsoleOff,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    ((NoActiveAuthority, ds.DatastoreUnavailable), grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: Exception) -> grpc.StatusCode | None:
    for kinds, code in _CODES:
        if isinstance(exc, kinds):
            return code
    return None


class AdminApi:
    def __init__(self, core: ServerCore, callers: CallerTable, admin_uids: set[int]) -> None:
        self.core = core
        self.callers = callers
        self.allowed = {0, os.geteuid(), *admin_uids}
        self.console_login: ConsoleLoginMinter | None = None  # set when [console] is on

    async def _run(
        self,
        context: Context,
        method: str,
        what: str,
        fn: Callable[[], Awaitable[T]],
        *,
        routine: bool = False,
    ) -> T:
        """Authorize, run and audit one call. A `routine` call (health probes, polled every few
        seconds by monitoring) is audited at debug when it succeeds, so it does not bury the
        calls that change something."""
        who: dict[str, object]
        if isinstance(context, SessionCaller):
            who = {"uid": context.uid, "console_session": context.session}
        else:
            creds = await self.callers.caller_or_abort(context)
            who = {"uid": creds.uid, "pid": creds.pid}
            if creds.uid not in self.allowed:
                audit.warning(
                    "admin call", **who, method=method, what=what, result="PERMISSION_DENIED"
                )
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"uid {creds.uid} may not use the admin API (allowed: root and admin_uids)",
                )
        try:
            result = await fn()
        except Exception as exc:
            code = status_for(exc)
            if code is None:
                audit.exception("admin call", **who, method=method, what=what, result="INTERNAL")
                raise
            audit.info(
                "admin call", **who, method=method, what=what, result=code.name, error=str(exc)
            )
            detail = str(exc)
            if isinstance(exc, ds.DatastoreUnavailable):  # tell it apart from "no server"
                detail = f"{DATASTORE_UNAVAILABLE_PREFIX}{detail}"
            if isinstance(context, SessionCaller):
                raise AdminRefused(code, detail, exc) from exc
            await context.abort(code, detail)
        (audit.debug if routine else audit.info)(
            "admin call", **who, method=method, what=what, result="OK"
        )
        return result

    # --- entries --------------------------------------------------------------------------

    async def CreateEntries(
        self, request: admin_pb2.CreateEntriesRequest, context: Context
    ) -> admin_pb2.CreateEntriesResponse:
        async def run() -> admin_pb2.CreateEntriesResponse:
            batch = []
            for i, message in enumerate(request.entries):
                try:
                    batch.append(entry_from_proto(message, self.core.limits, keep_id=True))
                except InvalidEntry as exc:
                    raise InvalidEntry(f"entries[{i}].{exc.field}", exc.value, exc.reason) from exc
            await self._check_federates_with(batch)
            stored = await self.core.blocking(self.core.store.create_entries, batch)
            return admin_pb2.CreateEntriesResponse(entries=[entry_to_proto(e) for e in stored])

        ids = ",".join(e.spiffe_id for e in request.entries[:5])
        return await self._run(context, "CreateEntries", f"{len(request.entries)}: {ids}", run)

    async def _check_federates_with(
        self, batch: Sequence[RegistrationEntry], kept: frozenset[TrustDomain] = frozenset()
    ) -> None:
        """An entry may federate only with a trust domain this server holds a bundle of or a
        relationship with: any other name would silently give its workloads nothing. An
        update may keep a name the entry had (its relationship may be gone since)."""
        wanted = {td for e in batch for td in e.federates_with} - kept
        if not wanted:
            return
        stored = await self.core.blocking(self.core.store.list_bundles)
        relationships = await self.core.blocking(self.core.store.list_federations)
        known = (
            set(self.core.configured_federation)
            | {r.trust_domain for r in stored}
            | {r.trust_domain for r in relationships}
        )
        known.discard(self.core.trust_domain)
        for i, e in enumerate(batch):
            for td in e.federates_with:
                if td not in known and td not in kept:
                    where = f"entries[{i}].federates_with" if len(batch) > 1 else "federates_with"
                    raise InvalidEntry(
                        where,
                        str(td),
                        "unknown trust domain: no federation relationship or stored bundle "
                        "(federation create, bundle set)",
                    )

    async def ListEntries(
        self, request: admin_pb2.ListEntriesRequest, context: Context
    ) -> admin_pb2.ListEntriesResponse:
        async def run() -> admin_pb2.ListEntriesResponse:
            found = await self.core.blocking(
                lambda: self.core.store.list_entries(
                    spiffe_id=SpiffeId.parse(request.spiffe_id) if request.spiffe_id else None,
                    parent_id=SpiffeId.parse(request.parent_id) if request.parent_id else None,
                    selectors=[Selector.parse(s) for s in request.selectors],
                )
            )
            return admin_pb2.ListEntriesResponse(entries=[entry_to_proto(e) for e in found])

        return await self._run(context, "ListEntries", str(request).replace("\n", " "), run)

    async def GetEntry(
        self, request: admin_pb2.GetEntryRequest, context: Context
    ) -> admin_pb2.Entry:
        async def run() -> admin_pb2.Entry:
            return entry_to_proto(await self.core.blocking(self.core.store.get_entry, request.id))

        return await self._run(context, "GetEntry", request.id, run)

    async def CountEntries(
        self, request: admin_pb2.CountRequest, context: Context
    ) -> admin_pb2.CountResponse:
        return await self._count(context, "CountEntries", self.core.store.count_entries)

    async def UpdateEntry(
        self, request: admin_pb2.UpdateEntryRequest, context: Context
    ) -> admin_pb2.Entry:
        async def run() -> admin_pb2.Entry:
            if not request.entry.id:
                raise InvalidEntry("id", "", "the id of the entry to update is required")
            entry = entry_from_proto(request.entry, self.core.limits, keep_id=True)
            current = await self.core.blocking(self.core.store.get_entry, entry.id)
            await self._check_federates_with([entry], frozenset(current.federates_with))
            stored = await self.core.blocking(
                self.core.store.update_entry, entry, request.expected_revision
            )
            return entry_to_proto(stored)

        return await self._run(context, "UpdateEntry", request.entry.id, run)

    async def DeleteEntry(
        self, request: admin_pb2.DeleteEntryRequest, context: Context
    ) -> admin_pb2.DeleteEntryResponse:
        async def run() -> admin_pb2.DeleteEntryResponse:
            deleted = await self.core.blocking(self.core.store.delete_entry, request.id)
            return admin_pb2.DeleteEntryResponse(entry=entry_to_proto(deleted))

        return await self._run(context, "DeleteEntry", request.id, run)

    # --- join tokens and agents ----------------------------------------------------------------

    async def CreateJoinToken(
        self, request: admin_pb2.CreateJoinTokenRequest, context: Context
    ) -> admin_pb2.JoinToken:
        async def run() -> admin_pb2.JoinToken:
            if request.ttl < 0:
                raise ValueError(f"ttl {request.ttl}: expected a positive number of seconds")
            ttl = timedelta(seconds=request.ttl) if request.ttl else self.core.config.join_token_ttl
            token = str(uuid.uuid4())
            agent_id = agent_spiffe_id(self.core.trust_domain, "join_token", token)
            alias = None
            if request.spiffe_id:
                alias = validate_entry(
                    spiffe_id=request.spiffe_id,
                    parent_id=agent_id,
                    selectors=[f"spiffe_id:{agent_id}"],
                    limits=self.core.limits,
                )
            # whole seconds, so the expiry we report is exactly the one we enforce
            expires_at = (self.core.clock() + ttl).replace(microsecond=0)
            # Token and entry in one transaction: never a token without its entry. The entry's
            # parent is the agent ID, which contains the token itself (as in SPIRE): the
            # datastore keeps only the token's digest, but `entry show` reveals it until used.
            await self.core.blocking(self.core.store.create_join_token, token, expires_at, alias)
            return admin_pb2.JoinToken(
                token=token, expires_at=int(expires_at.timestamp()), agent_id=str(agent_id)
            )

        return await self._run(
            context, "CreateJoinToken", f"ttl={request.ttl} {request.spiffe_id}", run
        )

    async def ListAgents(
        self, request: admin_pb2.ListAgentsRequest, context: Context
    ) -> admin_pb2.ListAgentsResponse:
        async def run() -> admin_pb2.ListAgentsResponse:
            agents = await self.core.blocking(self.core.store.list_agents)
            return admin_pb2.ListAgentsResponse(agents=[agent_to_proto(a) for a in agents])

        return await self._run(context, "ListAgents", "", run)

    async def GetAgent(self, request: admin_pb2.AgentRequest, context: Context) -> admin_pb2.Agent:
        async def run() -> admin_pb2.Agent:
            agent = await self.core.blocking(self.core.store.get_agent, SpiffeId.parse(request.id))
            return agent_to_proto(agent)

        return await self._run(context, "GetAgent", request.id, run)

    async def CountAgents(
        self, request: admin_pb2.CountRequest, context: Context
    ) -> admin_pb2.CountResponse:
        return await self._count(context, "CountAgents", self.core.store.count_agents)

    async def EvictAgent(
        self, request: admin_pb2.AgentRequest, context: Context
    ) -> admin_pb2.Agent:
        async def run() -> admin_pb2.Agent:
            agent_id = SpiffeId.parse(request.id)
            deleted = await self.core.blocking(self.core.store.delete_agent, agent_id)
            self.core.model.apply_agent(agent_id, None)
            return agent_to_proto(deleted)

        return await self._run(context, "EvictAgent", request.id, run)

    async def BanAgent(self, request: admin_pb2.AgentRequest, context: Context) -> admin_pb2.Agent:
        async def run() -> admin_pb2.Agent:
            agent_id = SpiffeId.parse(request.id)
            banned = await self.core.blocking(self.core.store.set_agent_banned, agent_id, True)
            self.core.model.apply_agent(agent_id, banned)
            return agent_to_proto(banned)

        return await self._run(context, "BanAgent", request.id, run)

    # --- bundle and minting ----------------------------------------------------------------------

    async def GetBundle(
        self, request: admin_pb2.GetBundleRequest, context: Context
    ) -> admin_pb2.Bundle:
        async def run() -> admin_pb2.Bundle:
            record = await self.core.blocking(self.core.store.get_bundle, self.core.trust_domain)
            bundle = Bundle.parse_spiffe(self.core.trust_domain, record.document)
            return admin_pb2.Bundle(
                trust_domain=str(self.core.trust_domain),
                spiffe_bundle=record.document.encode(),
                x509_pem=bundle.x509_pem(),
            )

        return await self._run(context, "GetBundle", "", run)

    async def CountBundles(
        self, request: admin_pb2.CountRequest, context: Context
    ) -> admin_pb2.CountResponse:
        return await self._count(context, "CountBundles", self.core.store.count_bundles)

    async def SetFederatedBundle(
        self, request: admin_pb2.SetFederatedBundleRequest, context: Context
    ) -> admin_pb2.Bundle:
        return await self._run(
            context,
            "SetFederatedBundle",
            request.trust_domain,
            lambda: fed.set_bundle(self.core, request),
        )

    async def ListFederatedBundles(
        self, request: admin_pb2.ListFederatedBundlesRequest, context: Context
    ) -> admin_pb2.ListFederatedBundlesResponse:
        return await self._run(
            context,
            "ListFederatedBundles",
            request.trust_domain,
            lambda: fed.list_bundles(self.core, request),
        )

    async def DeleteFederatedBundle(
        self, request: admin_pb2.DeleteFederatedBundleRequest, context: Context
    ) -> admin_pb2.DeleteFederatedBundleResponse:
        return await self._run(
            context,
            "DeleteFederatedBundle",
            f"{request.trust_domain} mode={request.mode or 'restrict'}",
            lambda: fed.delete_bundle(self.core, request),
        )

    async def _count(
        self, context: Context, method: str, count: Callable[[], int]
    ) -> admin_pb2.CountResponse:
        async def run() -> admin_pb2.CountResponse:
            return admin_pb2.CountResponse(count=await self.core.blocking(count))

        return await self._run(context, method, "", run)

    async def MintX509SVID(
        self, request: admin_pb2.MintX509SVIDRequest, context: Context
    ) -> admin_pb2.MintX509SVIDResponse:
        async def run() -> admin_pb2.MintX509SVIDResponse:
            spiffe_id = self._member(request.spiffe_id)
            ttl = self.core.defaults.x509(request.ttl)
            dns = [normalize_dns_name(name) for name in request.dns_names]
            state = self.core.authorities.state
            signed = sign_x509_svid(
                state.active_x509(), request.csr, spiffe_id, ttl, dns, self.core.clock()
            )
            self.core.metrics.svids_signed.labels("x509").inc()
            bundle = self.core.authorities.bundle()
            return admin_pb2.MintX509SVIDResponse(
                svid_chain=signed.chain_der,
                bundle=bundle.x509_der(),
                expires_at=int(signed.expires_at.timestamp()),
            )

        return await self._run(context, "MintX509SVID", request.spiffe_id, run)

    async def MintJWTSVID(
        self, request: admin_pb2.MintJWTSVIDRequest, context: Context
    ) -> admin_pb2.MintJWTSVIDResponse:
        async def run() -> admin_pb2.MintJWTSVIDResponse:
            spiffe_id = self._member(request.spiffe_id)
            ttl = self.core.defaults.jwt(request.ttl)
            state = self.core.authorities.state
            signed = sign_jwt(
                state.active_key("jwt"),
                state.active_key_not_after("jwt"),
                spiffe_id,
                list(request.audience),
                ttl,
                self.core.clock(),
                self.core.config.audience_limits,
                self.core.config.jwt_issuer,
            )
            self.core.metrics.svids_signed.labels("jwt").inc()
            return admin_pb2.MintJWTSVIDResponse(token=signed.token, expires_at=signed.expires_at)

        return await self._run(context, "MintJWTSVID", request.spiffe_id, run)

    def _member(self, text: str) -> SpiffeId:
        """A workload ID of our trust domain: the server's and agents' IDs are not minted."""
        spiffe_id = SpiffeId.parse(text)
        if not spiffe_id.member_of(self.core.trust_domain):
            raise SigningRefused(f"{spiffe_id} is not in trust domain {self.core.trust_domain}")
        if is_reserved(spiffe_id):
            raise SigningRefused(f"{spiffe_id}: {RESERVED_REASON}")
        return spiffe_id

    # --- federation relationships ---------------------------------------------------------------

    async def CreateFederationRelationship(
        self, request: admin_pb2.FederationRelationship, context: Context
    ) -> admin_pb2.FederationRelationship:
        return await self._run(
            context,
            "CreateFederationRelationship",
            f"{request.trust_domain} {request.bundle_endpoint_url}",
            lambda: fed.create_relationship(self.core, request),
        )

    async def ListFederationRelationships(
        self, request: admin_pb2.ListFederationRelationshipsRequest, context: Context
    ) -> admin_pb2.ListFederationRelationshipsResponse:
        return await self._run(
            context, "ListFederationRelationships", "", lambda: fed.list_relationships(self.core)
        )

    async def GetFederationRelationship(
        self, request: admin_pb2.FederationRelationshipRequest, context: Context
    ) -> admin_pb2.FederationRelationship:
        return await self._run(
            context,
            "GetFederationRelationship",
            request.trust_domain,
            lambda: fed.get_relationship(self.core, request),
        )

    async def UpdateFederationRelationship(
        self, request: admin_pb2.FederationRelationship, context: Context
    ) -> admin_pb2.FederationRelationship:
        return await self._run(
            context,
            "UpdateFederationRelationship",
            f"{request.trust_domain} {request.bundle_endpoint_url}",
            lambda: fed.update_relationship(self.core, request),
        )

    async def DeleteFederationRelationship(
        self, request: admin_pb2.FederationRelationshipRequest, context: Context
    ) -> admin_pb2.FederationRelationship:
        return await self._run(
            context,
            "DeleteFederationRelationship",
            request.trust_domain,
            lambda: fed.delete_relationship(self.core, request),
        )

    async def RefreshFederationRelationship(
        self, request: admin_pb2.FederationRelationshipRequest, context: Context
    ) -> admin_pb2.RefreshFederationRelationshipResponse:
        return await self._run(
            context,
            "RefreshFederationRelationship",
            request.trust_domain,
            lambda: fed.refresh_relationship(self.core, request),
        )

    # --- authorities and health -----------------------------------------------------------------

    async def ListAuthorities(
        self, request: admin_pb2.AuthorityRequest, context: Context
    ) -> admin_pb2.ListAuthoritiesResponse:
        return await self._run(
            context, "ListAuthorities", _kind(request), lambda: list_authorities(self.core, request)
        )

    async def _authority(
        self, action: Action, request: admin_pb2.AuthorityRequest, context: Context
    ) -> admin_pb2.Authority:
        return await self._run(
            context,
            f"{action.capitalize()}Authority",
            _kind(request),
            lambda: authority_action(self.core, action, request),
        )

    async def PrepareAuthority(
        self, request: admin_pb2.AuthorityRequest, context: Context
    ) -> admin_pb2.Authority:
        return await self._authority("prepare", request, context)

    async def ActivateAuthority(
        self, request: admin_pb2.AuthorityRequest, context: Context
    ) -> admin_pb2.Authority:
        return await self._authority("activate", request, context)

    async def TaintAuthority(
        self, request: admin_pb2.AuthorityRequest, context: Context
    ) -> admin_pb2.Authority:
        return await self._authority("taint", request, context)

    async def RevokeAuthority(
        self, request: admin_pb2.AuthorityRequest, context: Context
    ) -> admin_pb2.Authority:
        return await self._authority("revoke", request, context)

    async def Health(
        self, request: admin_pb2.HealthRequest, context: Context
    ) -> admin_pb2.HealthResponse:
        async def run() -> admin_pb2.HealthResponse:
            reason = await self.core.blocking(self.core.readiness)
            return admin_pb2.HealthResponse(ready=reason is None, reason=reason or "")

        return await self._run(context, "Health", "", run, routine=True)

    async def ListServers(
        self, request: admin_pb2.ListServersRequest, context: Context
    ) -> admin_pb2.ListServersResponse:
        async def run() -> admin_pb2.ListServersResponse:
            core = self.core
            records = await core.blocking(core.store.list_servers)
            now, stale_after = core.clock(), core.config.cluster.stale_after
            return admin_pb2.ListServersResponse(
                servers=[
                    admin_pb2.Server(
                        id=r.id,
                        state=server_state(r, now, stale_after),
                        heartbeat_at=int(r.heartbeat_at.timestamp()),
                        started_at=int(r.started_at.timestamp()),
                        addresses=r.addresses,
                        x509_authority_id=r.x509_key_id,
                        jwt_authority_id=r.jwt_key_id,
                        answering=r.id == core.instance_id,
                    )
                    for r in records
                ]
            )

        return await self._run(context, "ListServers", "", run)

    # --- the web console ----------------------------------------------------------------------

    async def CreateConsoleLogin(
        self, request: admin_pb2.CreateConsoleLoginRequest, context: Context
    ) -> admin_pb2.ConsoleLogin:
        async def run() -> admin_pb2.ConsoleLogin:
            if self.console_login is None:
                raise ConsoleOff("the console is off: add a [console] section to the config")
            if isinstance(context, SessionCaller):
                uid = context.uid
            else:
                uid = (await self.callers.caller_or_abort(context)).uid
            login = self.console_login(uid)
            audit.info(
                "console login issued",
                uid=uid,
                console_session=login.session,
                expires_at=login.expires_at,
            )
            return login

        return await self._run(context, "CreateConsoleLogin", "", run)

    # --- logging ------------------------------------------------------------------------------

    async def GetLogLevel(
        self, request: admin_pb2.GetLogLevelRequest, context: Context
    ) -> admin_pb2.LogLevel:
        async def run() -> admin_pb2.LogLevel:
            return admin_pb2.LogLevel(level=current_log_level())

        return await self._run(context, "GetLogLevel", "", run)

    async def SetLogLevel(
        self, request: admin_pb2.SetLogLevelRequest, context: Context
    ) -> admin_pb2.LogLevel:
        async def run() -> admin_pb2.LogLevel:
            change_log_level(request.level)
            return admin_pb2.LogLevel(level=current_log_level())

        return await self._run(context, "SetLogLevel", request.level, run)


def _kind(request: admin_pb2.AuthorityRequest) -> str:
    return f"{admin_pb2.AuthorityKind.Name(request.kind)} {request.authority_id}".strip()


def admin_handlers(servicer: AdminApi) -> list[grpc.GenericRpcHandler[Any, Any]]:
    """The generic handlers for `servicer`, for `serve_grpc_with_peercred`."""

    class _Collector:
        handlers: list[grpc.GenericRpcHandler[Any, Any]] = []

        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            self.handlers.extend(handlers)

        def add_registered_method_handlers(self, *_: Any) -> None:
            pass

    collector = _Collector()
    admin_pb2_grpc.add_AdminAPIServicer_to_server(servicer, collector)
    return collector.handlers
