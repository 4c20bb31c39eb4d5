"""The client's commands as one method table: the daemon's JSON-RPC API and the CLI's one-shot path.

Each method takes a ``ClientRuntime`` and named parameters (the CLI's option
and argument names) and returns JSON data. ``docs/api.md`` documents every
method, parameter, result, error and event; ``tests/unit/test_api_doc.py``
keeps that document equal to ``METHODS``.

``mode`` is ``"daemon"`` when the agents run continuously (sends and receipts
go in the background) and ``"oneshot"`` when a command runs alone (it must
deliver what it queued before it returns).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import e2e
from .agent import Agent, AgentError, ContactNotFound, Event, NoRelayConfigured, NoRequest
from .db import DatabaseError
from .home import HomeBusy
from .invitation import InvitationError
from .profiles import (
    ProfileError,
    add_relay,
    create_profile,
    delete_profile,
    get_profile,
    list_profiles,
    list_relays,
    remove_relay,
    use_profile,
)
from .runtime import ClientRuntime, TorUnavailable
from .store import EVENT_LOG_SIZE, events_since, last_event_id

# JSON-RPC 2.0 error codes, and ours (docs/api.md, "Errors").
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
FAILED = 1
"""The command failed for a reason the user can act on; ``data.kind`` names it, ``data.exit_code`` is the CLI's."""

EVENT_KINDS = {
    "message": "a message arrived (fields: message, seq, time)",
    "request": "a connection request arrived (field: request)",
    "accepted": "a request was accepted automatically (field: request)",
    "connected": "a contact is connected (the profile exchange finished)",
    "sent": "a message left for the contact's relay (field: message)",
    "delivered": "the contact's receipt arrived (fields: message, seq, sent)",
    "verified": "a contact's security code was compared and matched",
    "rotated": "a conversation moved to a new queue",
    "failed": "a contact's queue is gone, or a request got no answer; nothing more is sent (field: reason)",
    "blocked": "a contact was blocked",
    "warning": "something went wrong that needs no answer (a message could not be read, ...)",
    "relay_down": "a relay could not be reached (field: relay)",
    "relay_up": "a relay is reachable again (field: relay)",
}


class ApiError(Exception):
    def __init__(self, code: int, message: str, *, kind: str = "failed", exit_code: int = 1):
        super().__init__(message)
        self.code, self.message, self.kind, self.exit_code = code, message, kind, exit_code

    def to_json(self) -> dict:
        return {"code": self.code, "message": self.message, "data": {"kind": self.kind, "exit_code": self.exit_code}}


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # "string", "integer", "number", "boolean"
    required: bool = False
    default: Any = None
    help: str = ""


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    result: str
    params: tuple[Param, ...]
    handler: Callable[..., Awaitable[Any]]
    network: bool = False
    """One-shot: needs the relays (tor is started if one is an onion service)."""
    writes: bool = True
    """One-shot: takes the home lock."""
    daemon_only: bool = False


METHODS: dict[str, Method] = {}
PROFILE = Param("profile", "string", help="profile to act as (default: the current one)")
_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}


def method(name: str, summary: str, result: str, *params: Param, network=False, writes=True, daemon_only=False):
    def register(handler):
        METHODS[name] = Method(name, summary, result, params, handler, network, writes, daemon_only)
        return handler

    return register


def check_params(spec: Method, params: Any) -> dict:
    """Validate JSON-RPC params against the method's table; fill defaults."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ApiError(INVALID_PARAMS, "params must be an object with named parameters", kind="params")
    known = {p.name: p for p in spec.params}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ApiError(INVALID_PARAMS, f"{spec.name}: unknown parameter {unknown[0]!r}", kind="params")
    checked = {}
    for p in spec.params:
        value = params.get(p.name)
        if value is None:
            if p.required:
                raise ApiError(INVALID_PARAMS, f"{spec.name}: parameter {p.name!r} is required", kind="params")
            checked[p.name] = p.default
            continue
        types = _TYPES[p.type]
        if not isinstance(value, types) or (p.type in ("integer", "number") and isinstance(value, bool)):
            raise ApiError(INVALID_PARAMS, f"{spec.name}: parameter {p.name!r} must be a {p.type}", kind="params")
        checked[p.name] = value
    return checked


@dataclass
class Context:
    """What a method call runs against."""

    runtime: ClientRuntime
    mode: str  # "daemon" or "oneshot"
    emit: Callable[[Event], None] | None = None
    """One-shot ``receive``: called with each event as it happens."""
    extra: dict = field(default_factory=dict)

    def agent(self, profile: str | None) -> Agent:
        return self.runtime.agent(profile)

    @property
    def daemon(self) -> bool:
        return self.mode == "daemon"


async def call(ctx: Context, name: str, params: Any) -> Any:
    """Run one method; every failure a user can cause comes out as ``ApiError``."""
    spec = METHODS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ApiError(METHOD_NOT_FOUND, f"no method {name!r}", kind="method")
    if spec.daemon_only and not ctx.daemon:
        raise ApiError(FAILED, f"{name} needs a running daemon ('onionpost daemon')", kind="needs_daemon")
    checked = check_params(spec, params)
    try:
        return await spec.handler(ctx, **checked)
    except ApiError:
        raise
    except ContactNotFound as exc:
        raise ApiError(FAILED, str(exc), kind="no_contact") from None
    except NoRequest as exc:
        raise ApiError(FAILED, str(exc), kind="no_request") from None
    except NoRelayConfigured as exc:
        raise ApiError(FAILED, str(exc), kind="no_relay") from None
    except HomeBusy as exc:
        raise ApiError(FAILED, str(exc), kind="home_busy") from None
    except TorUnavailable as exc:
        raise ApiError(FAILED, str(exc), kind="tor") from None
    except (AgentError, ProfileError, DatabaseError, InvitationError, e2e.E2EError, ValueError) as exc:
        kind = "relay_access" if "ACCESS" in str(exc) else "failed"
        raise ApiError(FAILED, str(exc), kind=kind) from None


def _contact_json(contact) -> dict:
    return {"alias": contact.alias, "display_name": contact.display_name, "state": contact.state,
            "key_via": contact.provenance, "assurance": contact.assurance, "verified": contact.verified,
            "unread": contact.unread}


async def _deliver(ctx: Context, agent: Agent, contact_id: int | None = None) -> None:
    """One-shot: send what the command queued before returning (daemon: the agent does it)."""
    if not ctx.daemon:
        await agent.flush(contact_id)


# --- profiles and relays -----------------------------------------------------------------


@method("profile.create", "Create a profile (the first one also creates the encrypted store).",
        '{"name", "display_name", "bio"}',
        Param("name", "string", True, help="local name, never sent to anyone"),
        Param("display_name", "string", help="shown to accepted contacts (default: NAME)"),
        Param("bio", "string", default="", help="optional text shown to accepted contacts"))
async def profile_create(ctx: Context, name, display_name, bio):
    profile = create_profile(ctx.runtime.db, name, display_name, bio)
    return {"name": profile.name, "display_name": profile.display_name, "bio": profile.bio}


@method("profile.list", "List profiles.", '[{"name", "display_name", "current"}]', writes=False)
async def profile_list(ctx: Context):
    profiles = list_profiles(ctx.runtime.db)
    current = get_profile(ctx.runtime.db).id if profiles else None
    return [{"name": p.name, "display_name": p.display_name, "current": p.id == current} for p in profiles]


@method("profile.use", "Make a profile the current one.", '{"current"}', Param("name", "string", True))
async def profile_use(ctx: Context, name):
    return {"current": use_profile(ctx.runtime.db, name).name}


@method("profile.delete", "Delete a profile with its contacts and history from this device.", '{"deleted"}',
        Param("name", "string", True))
async def profile_delete(ctx: Context, name):
    profile = delete_profile(ctx.runtime.db, name)
    closing = ctx.runtime.forget_profile(profile.id)
    if closing is not None:
        await closing
    return {"deleted": profile.name}


@method("relay.add", "Trust a relay: new queues go there, messages leave through it.", '{"address", "access_key", "family"}',
        Param("address", "string", True, help="onionpost://KEY@HOST:PORT"),
        Param("access_key", "string", help="the relay's key for creating queues"),
        Param("family", "string", help="relays run by one operator share a family name; they count as one"), PROFILE)
async def relay_add(ctx: Context, address, access_key, family, profile):
    owner = get_profile(ctx.runtime.db, profile)
    relay = add_relay(ctx.runtime.db, owner, address, access_key, family)
    ctx.runtime.refresh_relays(owner)
    return {"address": relay.address, "access_key": bool(relay.access_key), "family": relay.family}


@method("relay.list", "List the profile's trusted relays.", '[{"address", "access_key", "family"}]', PROFILE, writes=False)
async def relay_list(ctx: Context, profile):
    relays = list_relays(ctx.runtime.db, get_profile(ctx.runtime.db, profile))
    return [{"address": r.address, "access_key": bool(r.access_key), "family": r.family} for r in relays]


@method("relay.remove", "Stop trusting a relay.", '{"removed"}', Param("address", "string", True), PROFILE)
async def relay_remove(ctx: Context, address, profile):
    owner = get_profile(ctx.runtime.db, profile)
    relay = remove_relay(ctx.runtime.db, owner, address)
    ctx.runtime.refresh_relays(owner)
    return {"removed": relay.address}


# --- conversations -----------------------------------------------------------------------


@method("invite", "Make a one-time invitation (a queue on one of your relays).", '{"invitation", "link"}',
        Param("link_only", "boolean", default=False, help="the link will be sent, not shown as a QR (lower assurance)"),
        Param("auto_accept", "boolean", default=False, help="accept the first request automatically"),
        PROFILE, network=True)
async def invite(ctx: Context, link_only, auto_accept, profile):
    agent = ctx.agent(profile)
    invitation_id, link = await agent.invite(auto_accept=auto_accept, shared_as="link" if link_only else "qr")
    return {"invitation": invitation_id, "link": link}


@method("connect", "Answer an invitation: send a connection request.", '{"contact", "state", "via"}',
        Param("link", "string", True, help="the invitation link (onionpost:1/...)"),
        Param("via", "string", default="link", help='how it arrived: "link" or "qr-image"'),
        Param("alias", "string", help="your name for this contact"), PROFILE, network=True)
async def connect(ctx: Context, link, via, alias, profile):
    if via not in ("link", "qr-image"):
        raise ApiError(INVALID_PARAMS, 'connect: via must be "link" or "qr-image"', kind="params")
    contact = await ctx.agent(profile).connect(link, via=via, alias=alias)
    return {"contact": contact.alias, "state": contact.state, "via": via}


@method("requests", "List connection requests waiting for an answer.", '[{"request", "via"}]', PROFILE, writes=False)
async def requests(ctx: Context, profile):
    return [{"request": c.id, "via": c.assurance} for c in ctx.agent(profile).requests()]


@method("accept", "Accept a connection request; profiles are exchanged after this.", '{"contact", "state"}',
        Param("request", "integer", True, help="the request number"),
        Param("alias", "string", help="your name for this contact"), PROFILE, network=True)
async def accept(ctx: Context, request, alias, profile):
    agent = ctx.agent(profile)
    contact = await agent.accept(request, alias=alias)
    await _deliver(ctx, agent, contact.id)
    return {"contact": contact.alias, "state": contact.state}


@method("reject", "Reject a connection request and delete its queue.", '{"rejected"}',
        Param("request", "integer", True), PROFILE, network=True)
async def reject(ctx: Context, request, profile):
    await ctx.agent(profile).reject(request)
    return {"rejected": request}


@method("contacts", "List contacts: state, how the key travelled, verified, unread.",
        '[{"alias", "display_name", "state", "key_via", "assurance", "verified", "unread"}]', PROFILE, writes=False)
async def contacts(ctx: Context, profile):
    return [_contact_json(c) for c in ctx.agent(profile).contacts()]


@method("send", "Encrypt a message into the outbox; it is delivered in the background.",
        '{"id", "contact", "seq", "text", "state"}',
        Param("contact", "string", True), Param("text", "string", True), PROFILE, network=True)
async def send(ctx: Context, contact, text, profile):
    agent = ctx.agent(profile)
    row = await agent.send(contact, text)
    await _deliver(ctx, agent, agent.contact(contact).id)
    state = agent.message_state(row["id"])
    if state == "failed":
        raise ApiError(FAILED, f"not delivered: {row['contact']}'s queue no longer exists (they deleted or blocked "
                               "this conversation); nothing more will be sent to them", kind="contact_failed")
    return row | {"state": state}


@method("receive", "Messages and news not shown yet; one-shot, this also fetches them from the relays.",
        "[event]", Param("wait", "number", default=0.0, help="seconds to keep listening after the last news"),
        PROFILE, network=True)
async def receive(ctx: Context, wait, profile):
    if wait < 0 or wait > 86400:
        raise ApiError(INVALID_PARAMS, "receive: wait must be between 0 and 86400 seconds", kind="params")
    agent = ctx.agent(profile)
    if ctx.daemon:
        news = await _news_since_cursor(ctx, agent, wait)
        listed = {e.data.get("message") for e in news if e.kind == "message"}
        earlier = [_unread_event(agent, row) for row in agent.unread_messages() if row["id"] not in listed]
    else:
        earlier = [_unread_event(agent, row) for row in agent.unread_messages()]
        for event in earlier:  # shown before anything new, so an interrupted receive loses nothing
            _show(ctx, event)
        agent.mark_shown([e.data["message"] for e in earlier])
        def listener(event: Event) -> None:  # shown as it happens, and read from then on (Ctrl-C loses nothing)
            _show(ctx, event)
            if event.kind == "message":
                agent.mark_shown([event.data["message"]])

        listener = listener if ctx.emit else None
        if listener:
            agent.listeners.append(listener)
        try:
            news = await agent.receive(wait)
        finally:
            if listener:
                agent.listeners.remove(listener)
    news = [e for e in news if e.kind != "sent"]
    shown = earlier + news
    agent.mark_shown([e.data["message"] for e in shown if e.kind == "message"])
    return [e.to_json() for e in shown]


def _show(ctx: Context, event: Event) -> None:
    if ctx.emit is not None and event.kind != "sent":
        ctx.emit(event)


def _unread_event(agent: Agent, row: dict) -> Event:
    return Event("message", row["alias"], row["text"], {"message": row["id"], "seq": row["seq"], "time": row["time"],
                                                         "earlier": True}, 0, agent.profile.name)


async def _news_since_cursor(ctx: Context, agent: Agent, wait: float) -> list[Event]:
    """Daemon: the profile's events since the last ``receive``, waiting up to ``wait`` s for the first."""
    key = f"receive_cursor:{agent.profile.id}"
    row = ctx.runtime.db.fetch_one("SELECT value FROM settings WHERE key = ?", (key,))
    cursor = row[0] if row else max(0, last_event_id(ctx.runtime.db) - EVENT_LOG_SIZE)

    def pending() -> list[Event]:
        return [Event(e.kind, e.contact, e.text, e.data, e.id, agent.profile.name)
                for e in events_since(ctx.runtime.db, cursor) if e.profile_id == agent.profile.id]

    news = pending()
    if not news and wait > 0:
        arrived = asyncio.Event()
        listener = (lambda event: arrived.set() if event.profile == agent.profile.name and event.kind != "sent" else None)
        agent.listeners.append(listener)
        try:
            async with asyncio.timeout(wait):
                await arrived.wait()
        except TimeoutError:
            pass
        finally:
            agent.listeners.remove(listener)
        news = pending()
    with ctx.runtime.db.transaction():
        ctx.runtime.db.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, max([cursor, *(e.id for e in news)])),
        )
    return news


@method("history", "The conversation with a contact (shown messages count as read).",
        '[{"id", "direction", "seq", "text", "state", "notice", "time", "unread"}]',
        Param("contact", "string", True), Param("limit", "integer", default=50, help="how many recent messages"),
        PROFILE, writes=False)
async def history(ctx: Context, contact, limit, profile):
    if limit < 1:
        raise ApiError(INVALID_PARAMS, "history: limit must be at least 1", kind="params")
    return ctx.agent(profile).history(contact, limit)


@method("verify", "Show the security code with a contact, or compare the code they read to you.",
        '{"contact", "code"} or {"contact", "verified"}',
        Param("contact", "string", True), Param("code", "string", help="the code your contact reads to you"),
        PROFILE, writes=False)
async def verify(ctx: Context, contact, code, profile):
    agent = ctx.agent(profile)
    name = agent.contact(contact).alias
    if code is None:
        return {"contact": name, "code": agent.security_code(contact)}
    return {"contact": name, "verified": agent.verify(contact, code)}


@method("rotate", "Move the conversation to fresh queues (new ids and keys).", '{"contact", "relay"}',
        Param("contact", "string", True), PROFILE, network=True)
async def rotate(ctx: Context, contact, profile):
    agent = ctx.agent(profile)
    relay = await agent.rotate(contact)
    await _deliver(ctx, agent, agent.contact(contact).id)
    return {"contact": agent.contact(contact).alias, "relay": relay}


@method("contact.delete", "Delete a contact: its queues go from the relays; its messages only with history.",
        '{"deleted", "history"}', Param("contact", "string", True),
        Param("history", "boolean", default=False, help="also delete the messages"), PROFILE, network=True)
async def contact_delete(ctx: Context, contact, history, profile):
    deleted = await ctx.agent(profile).delete_contact(contact, history=history)
    return {"deleted": deleted.alias, "history": "deleted" if history else "kept"}


@method("contact.cancel", "Withdraw a connection request that was not answered yet.", '{"cancelled"}',
        Param("contact", "string", True), PROFILE, network=True)
async def contact_cancel(ctx: Context, contact, profile):
    return {"cancelled": (await ctx.agent(profile).cancel_request(contact)).alias}


@method("contact.block", "Block a contact: nothing more from or to them; the history stays.", '{"blocked"}',
        Param("contact", "string", True), PROFILE, network=True)
async def contact_block(ctx: Context, contact, profile):
    return {"blocked": (await ctx.agent(profile).block(contact)).alias}


# --- the daemon itself -----------------------------------------------------------------------


@method("status", "The daemon's state: profiles, relays, queues, outbox, events.",
        '{"home", "mode", "tor", "profiles": [{"name", "relays", "contacts", "outbox", "unread"}], "last_event"}',
        writes=False)
async def status(ctx: Context):
    profiles = []
    for profile in list_profiles(ctx.runtime.db):
        agent = ctx.runtime.agent(profile)
        contacts = agent.contacts()
        profiles.append({"name": profile.name, "relays": [r.address for r in list_relays(ctx.runtime.db, profile)],
                         "contacts": len(contacts), "outbox": agent.store.outbox_count(),
                         "unread": sum(c.unread for c in contacts), "queues_watched": len(agent.watched())})
    return {"home": str(ctx.runtime.home), "mode": ctx.mode,
            "tor": "running" if ctx.runtime.tor is not None else "not started",
            "profiles": profiles, "last_event": last_event_id(ctx.runtime.db)}


@method("events.subscribe", "Receive events as notifications on this connection; replay those after `since`.",
        '{"subscribed": true, "last"}', Param("since", "integer", help="replay events with a higher id first"),
        writes=False, daemon_only=True)
async def events_subscribe(ctx: Context, since):
    subscribe = ctx.extra.get("subscribe")
    if subscribe is None:
        raise ApiError(FAILED, "events.subscribe needs a daemon connection", kind="needs_daemon")
    return await subscribe(since)


@method("events.unsubscribe", "Stop event notifications on this connection.", '{"subscribed": false}',
        writes=False, daemon_only=True)
async def events_unsubscribe(ctx: Context):
    ctx.extra["unsubscribe"]()
    return {"subscribed": False}


def method_table() -> list[dict]:
    """The table ``docs/api.md`` must match (tests/unit/test_api_doc.py)."""
    return [
        {"method": m.name, "params": [p.name for p in m.params], "result": m.result}
        for m in METHODS.values()
    ]


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))
