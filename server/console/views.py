"""The console's pages and actions.

Pages read the server's in-memory model and the datastore directly (reads are not audited);
every action is an admin API call (`AdminApi`, the code path of the admin socket) made with
a `SessionCaller`, so it passes the same validation and lands in the audit log with the
console session named.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Literal

import trio
from google.protobuf.message import Message
from insignia_proto import admin_pb2

from insignia.daemon.http.endpoint import Response, Streamed
from insignia.daemon.runtime import call_asyncio
from insignia.selectors import InvalidSelector, Selector
from insignia.server.admin.api import AdminApi, AdminRefused, SessionCaller
from insignia.server.admin.authority import Action
from insignia.server.admin.convert import entry_to_proto
from insignia.server.console.agents import SORTS, select_agents
from insignia.server.console.app import SECURITY_HEADERS, Call, Page, Renderer, redirect
from insignia.server.console.entry_form import EntryForm, read_entry_form
from insignia.server.console.events import EventHub
from insignia.server.console.sessions import Sessions
from insignia.server.console.timeline import layout
from insignia.server.core import ServerCore
from insignia.server.datastore.errors import EntryNotFound
from insignia.server.registry import server_state
from insignia.spiffeid import InvalidSpiffeId, SpiffeId, TrustDomain

PAGE_SIZE = 50
KINDS = {"x509": admin_pb2.X509, "jwt": admin_pb2.JWT, "wit": admin_pb2.WIT}
# What each authority action does to workloads, shown on its confirmation page.
AUTHORITY_EFFECTS: dict[Action, str] = {
    "prepare": "A new key is created and published in the trust bundle. Workloads notice "
    "nothing yet: agents add the key to the bundles they serve, and SVIDs are still signed "
    "by the active key.",
    "activate": "The prepared key becomes the active one: every SVID signed from now on is "
    "signed by it. The key active until now stays in the bundle until it expires, so the SVIDs "
    "it signed keep verifying and are replaced at their usual rotation.",
    "taint": "The key is marked tainted: every agent replaces, at once, each SVID the key "
    "signed with one from the active key. It stays in the bundle (SVIDs not yet replaced keep "
    "verifying) until it is revoked. Only an old key can be tainted.",
    "revoke": "The key leaves the trust bundle at once: any SVID it signed that was not yet "
    "replaced stops verifying everywhere. Only a tainted key can be revoked; taint it first "
    "and let agents rotate.",
}
AGENT_EFFECTS = {
    "evict": "The agent's record is deleted. Its next call to the server is refused and it "
    "must attest again: an agent that can re-attest (x509pop, sshpop) does so at once; a "
    "join-token agent cannot reuse its token and exits. Its workloads keep their current "
    "SVIDs until they expire.",
    "ban": "The agent is refused for good: every call and every re-attestation, until its "
    "record is deleted. Its workloads get no new SVIDs.",
}


def _now() -> datetime:
    return datetime.now(UTC)


class ConsoleViews:
    def __init__(
        self,
        core: ServerCore,
        admin: AdminApi,
        sessions: Sessions,
        renderer: Renderer,
        hub: EventHub,
    ) -> None:
        self.core, self.admin, self.sessions = core, admin, sessions
        self.renderer, self.hub = renderer, hub

    def routes(self) -> tuple[dict[str, Page], dict[str, Page]]:
        pages: dict[str, Page] = {
            "/": self.overview,
            "/timeline": self.timeline,
            "/authorities": self.authorities,
            "/authorities/confirm": self.authority_confirm,
            "/agents": self.agents,
            "/agents/detail": self.agent,
            "/agents/confirm": self.agent_confirm,
            "/entries": self.entries,
            "/entries/detail": self.entry,
            "/entries/new": self.entry_new,
            "/entries/edit": self.entry_edit,
            "/entries/delete": self.entry_delete_confirm,
            "/federation": self.federation,
            "/events": self.events,
            "/events/stream": self.event_stream,
        }
        actions: dict[str, Page] = {
            "/authorities/act": self.authority_act,
            "/agents/act": self.agent_act,
            "/entries/new": self.entry_create,
            "/entries/edit": self.entry_update,
            "/entries/delete": self.entry_delete,
        }
        return pages, actions

    # --- helpers -------------------------------------------------------------------------

    def _page(self, call: Call, template: str, status: int = 200, **context: Any) -> Response:
        return self.renderer.page(template, status, session=call.session, **context)

    def _message(self, call: Call, title: str, text: str, status: int = 200) -> Response:
        return self._page(call, "message.html", status, title=title, text=text)

    async def _admin(self, call: Call, method: str, request: Message) -> Any:
        """One admin API call as this console session (raises AdminRefused)."""
        caller = SessionCaller(call.session.name, call.session.uid)
        handler: Callable[[Message, SessionCaller], Coroutine[Any, Any, Any]] = getattr(
            self.admin, method
        )
        return await call_asyncio(handler, request, caller)

    # --- overview and authorities --------------------------------------------------------

    async def _timeline(self) -> Any:
        records = await trio.to_thread.run_sync(self.core.store.load_ca_keys)
        return layout(records, _now()), records

    async def overview(self, call: Call) -> Response:
        core = self.core
        servers = await trio.to_thread.run_sync(core.store.list_servers)
        bundles = await trio.to_thread.run_sync(core.store.list_bundles)
        now, stale = _now(), core.config.cluster.stale_after
        federated = set(core.federation) | {b.trust_domain for b in bundles}
        federated.discard(core.trust_domain)
        timeline, _ = await self._timeline()
        return self._page(
            call,
            "overview.html",
            servers=[(s, server_state(s, now, stale), s.id == core.instance_id) for s in servers],
            counts={
                "agents": len(core.model.agents),
                "entries": len(core.model.index),
                "federated trust domains": len(federated),
                "connected agents": core.model.connected_agents(),
            },
            timeline=timeline,
        )

    async def timeline(self, call: Call) -> Response:
        timeline, _ = await self._timeline()
        return self._page(call, "timeline.html", timeline=timeline)

    async def authorities(self, call: Call) -> Response:
        timeline, records = await self._timeline()
        ordered = sorted(records, key=lambda r: (r.kind, r.not_before))
        return self._page(call, "authorities.html", timeline=timeline, records=ordered)

    def _authority_args(self, call: Call) -> tuple[str, Action, str] | None:
        kind, action, key = call.arg("kind"), call.arg("action"), call.arg("id")
        if kind not in KINDS or action not in AUTHORITY_EFFECTS:
            return None
        return kind, action, key

    async def authority_confirm(self, call: Call) -> Response:
        args = self._authority_args(call)
        if args is None:
            return self._message(call, "Unknown action", "expected kind and action", 400)
        kind, action, key = args
        return self._page(
            call,
            "confirm.html",
            title=f"{action.capitalize()} {kind} authority {key}".strip(),
            effect=AUTHORITY_EFFECTS[action],
            target="/authorities/act",
            fields={"kind": kind, "action": action, "id": key},
            back="/authorities",
        )

    async def authority_act(self, call: Call) -> Response:
        args = self._authority_args(call)
        if args is None:
            return self._message(call, "Unknown action", "expected kind and action", 400)
        kind, action, key = args
        request = admin_pb2.AuthorityRequest(kind=KINDS[kind], authority_id=key)
        try:
            done = await self._admin(call, f"{action.capitalize()}Authority", request)
        except AdminRefused as exc:
            return self._message(call, f"{action.capitalize()} refused", f"error: {exc}", 409)
        return self._message(
            call, f"{action.capitalize()}d", f"{kind} authority {done.authority_id}: {done.state}"
        )

    # --- agents ----------------------------------------------------------------------------

    async def agents(self, call: Call) -> Response:
        sort = call.arg("sort", "id")
        found = select_agents(
            self.core.model.agents.values(),
            text=call.arg("q"),
            attestor=call.arg("attestor"),
            banned=call.arg("banned"),
            sort=sort,
            descending=call.arg("order") == "desc",
        )
        attestors = sorted({a.attestation_type for a in self.core.model.agents.values()})
        return self._page(
            call,
            "agents.html",
            agents=found,
            attestors=attestors,
            sorts=list(SORTS),
            args={k: call.arg(k) for k in ("q", "attestor", "banned", "order")} | {"sort": sort},
        )

    def _agent_id(self, call: Call) -> SpiffeId | None:
        try:
            return SpiffeId.parse(call.arg("id"))
        except InvalidSpiffeId:
            return None

    async def agent(self, call: Call) -> Response:
        agent_id = self._agent_id(call)
        record = self.core.model.agents.get(agent_id) if agent_id else None
        if agent_id is None or record is None:
            return self._message(call, "No such agent", call.arg("id"), 404)
        entries = await trio.to_thread.run_sync(
            lambda: self.core.store.page_entries(parent_id=agent_id, limit=PAGE_SIZE)
        )
        return self._page(call, "agent.html", agent=record, entries=entries)

    async def agent_confirm(self, call: Call) -> Response:
        action, agent_id = call.arg("action"), call.arg("id")
        if action not in AGENT_EFFECTS:
            return self._message(call, "Unknown action", "expected evict or ban", 400)
        return self._page(
            call,
            "confirm.html",
            title=f"{action.capitalize()} agent {agent_id}",
            effect=AGENT_EFFECTS[action],
            target="/agents/act",
            fields={"action": action, "id": agent_id},
            back=f"/agents/detail?id={agent_id}",
        )

    async def agent_act(self, call: Call) -> Response:
        action, agent_id = call.arg("action"), call.arg("id")
        if action not in AGENT_EFFECTS:
            return self._message(call, "Unknown action", "expected evict or ban", 400)
        method = "EvictAgent" if action == "evict" else "BanAgent"
        try:
            await self._admin(call, method, admin_pb2.AgentRequest(id=agent_id))
        except AdminRefused as exc:
            return self._message(call, f"{action.capitalize()} refused", f"error: {exc}", 409)
        past = "evicted" if action == "evict" else "banned"
        return self._message(call, f"Agent {past}", f"{agent_id} {past}")

    # --- entries ---------------------------------------------------------------------------

    async def entries(self, call: Call) -> Response:
        args = {k: call.arg(k).strip() for k in ("spiffe_id", "parent_id", "selector", "federates")}
        errors: dict[str, str] = {}
        filters: dict[str, Any] = {}
        for name, parse in (("spiffe_id", SpiffeId.parse), ("parent_id", SpiffeId.parse)):
            if args[name]:
                try:
                    filters[name] = parse(args[name])
                except InvalidSpiffeId as exc:
                    errors[name] = f"error: {exc}"
        if args["selector"]:
            try:
                filters["selectors"] = [Selector.parse(args["selector"])]
            except InvalidSelector as exc:
                errors["selector"] = f"error: {exc}"
        if args["federates"]:
            try:
                filters["federates_with"] = TrustDomain.parse(args["federates"])
            except InvalidSpiffeId as exc:
                errors["federates"] = f"error: {exc}"
        after = call.arg("after")  # "<SPIFFE ID> <entry id>" of the previous page's last
        spiffe_after, _, id_after = after.rpartition(" ")
        cursor = (spiffe_after, id_after) if spiffe_after else None
        found = []
        if not errors:
            found = await trio.to_thread.run_sync(
                lambda: self.core.store.page_entries(after=cursor, limit=PAGE_SIZE + 1, **filters)
            )
        last = found[PAGE_SIZE - 1] if len(found) > PAGE_SIZE else None
        return self._page(
            call,
            "entries.html",
            entries=found[:PAGE_SIZE],
            next_after=f"{last.spiffe_id} {last.id}" if last else "",
            after=after,
            args=args,
            errors=errors,
            total=len(self.core.model.index),
        )

    async def _stored_entry(self, call: Call) -> admin_pb2.Entry | None:
        try:
            record = await trio.to_thread.run_sync(self.core.store.get_entry, call.arg("id"))
        except EntryNotFound:
            return None
        return entry_to_proto(record)

    async def entry(self, call: Call) -> Response:
        found = await self._stored_entry(call)
        if found is None:
            return self._message(call, "No such entry", call.arg("id"), 404)
        return self._page(call, "entry.html", entry=found)

    def _form(
        self,
        call: Call,
        form: EntryForm,
        mode: Literal["new", "edit"],
        status: int = 200,
        **more: Any,
    ) -> Response:
        return self._page(call, "entry_form.html", status, form=form, mode=mode, **more)

    async def entry_new(self, call: Call) -> Response:
        form = EntryForm()
        form.values["parent_id"] = call.arg("parent_id")
        return self._form(call, form, "new")

    async def entry_create(self, call: Call) -> Response:
        entry, form = read_entry_form(call.form, admin_pb2.Entry())
        if not form.errors:
            request = admin_pb2.CreateEntriesRequest(entries=[entry])
            try:
                created = await self._admin(call, "CreateEntries", request)
            except AdminRefused as exc:
                form.refused(exc)
            else:
                return redirect(f"/entries/detail?id={created.entries[0].id}")
        return self._form(call, form, "new", 400)

    async def entry_edit(self, call: Call) -> Response:
        found = await self._stored_entry(call)
        if found is None:
            return self._message(call, "No such entry", call.arg("id"), 404)
        return self._form(call, EntryForm.of(found), "edit", entry=found)

    async def entry_update(self, call: Call) -> Response:
        found = await self._stored_entry(call)
        if found is None:
            return self._message(call, "No such entry", call.arg("id"), 404)
        read = call.arg("revision")  # as the form was opened: a change since is refused
        revision = int(read) if read.isdigit() else found.revision
        entry, form = read_entry_form(call.form, found)
        if not form.errors:
            request = admin_pb2.UpdateEntryRequest(entry=entry, expected_revision=revision)
            try:
                await self._admin(call, "UpdateEntry", request)
            except AdminRefused as exc:
                form.refused(exc)
            else:
                return redirect(f"/entries/detail?id={entry.id}")
        return self._form(call, form, "edit", 400, entry=found)

    async def entry_delete_confirm(self, call: Call) -> Response:
        entry_id = call.arg("id")
        return self._page(
            call,
            "confirm.html",
            title=f"Delete entry {entry_id}",
            effect="The entry is deleted: agents drop it within a second, and its workloads "
            "get no new SVIDs for it (those they hold stay valid until they expire).",
            target="/entries/delete",
            fields={"id": entry_id},
            back=f"/entries/detail?id={entry_id}",
        )

    async def entry_delete(self, call: Call) -> Response:
        try:
            await self._admin(call, "DeleteEntry", admin_pb2.DeleteEntryRequest(id=call.arg("id")))
        except AdminRefused as exc:
            return self._message(call, "Delete refused", f"error: {exc}", 409)
        return self._message(call, "Entry deleted", f"deleted {call.arg('id')}")

    # --- federation and events -------------------------------------------------------------

    async def federation(self, call: Call) -> Response:
        bundles = await trio.to_thread.run_sync(self.core.store.list_bundles)
        peers = sorted(set(self.core.federation) | {b.trust_domain for b in bundles}, key=str)
        held = {b.trust_domain: b for b in bundles}
        rows = [
            (
                td,
                self.core.federation.get(td),
                self.core.federation_status.get(td),
                held.get(td),
            )
            for td in peers
            if td != self.core.trust_domain
        ]
        return self._page(call, "federation.html", rows=rows, own=held.get(self.core.trust_domain))

    async def events(self, call: Call) -> Response:
        return self._page(call, "events.html")

    async def event_stream(self, call: Call) -> Response | Streamed:
        if self.hub.full:
            return self._message(call, "Too many live streams", "try again later", 503)
        left = (call.session.expires_at - _now()).total_seconds()
        session = call.session
        return Streamed(
            200,
            lambda: self.hub.stream(min(600.0, left), lambda: self.sessions.is_open(session)),
            [("content-type", "text/event-stream"), *SECURITY_HEADERS],
        )
