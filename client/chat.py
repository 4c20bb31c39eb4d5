"""``onionpost chat``: a full-screen terminal chat on Textual, a client of the daemon's API.

The screen: contacts on the left (unread count, how the key travelled,
verified or not), the open conversation on the right (each message of yours
with its delivery state) above the input line, one line of news at the
bottom. Everything comes from the daemon (docs/api.md): the screen loads once,
then changes only when an event arrives (no polling). Without a running daemon
the app starts one in its own event loop (``chat_daemon.OwnDaemon``) and stops
it on exit.

Keys: Tab moves between the contact list and the input line; ↑↓ and Enter
open a conversation; Enter sends. ctrl+n invite (QR), ctrl+o answer an
invitation, ctrl+r requests, ctrl+s security code, ctrl+t rotate, ctrl+q quit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, ListItem, ListView, Static

from .chat_daemon import Session
from .chat_screens import ConfirmScreen, ConnectScreen, InviteScreen, RequestsScreen, VerifyScreen
from .chat_text import contact_label, contact_title, later_state, message_line, printable, relay_host
from .rpc import RpcError
from .runtime import ClientRuntime

HISTORY = 200
"""Messages loaded when a conversation opens (the API's ``history`` limit)."""

SENDABLE = ("connected", "accepted")
"""Contact states ``send`` accepts."""

CONTACT_NEWS = ("request", "accepted", "connected", "verified", "rotated", "failed")
"""Events after which the contact list is loaded again."""

BAD_NEWS = ("failed", "warning", "relay_down")


class ContactItem(ListItem):
    def __init__(self, contact: dict) -> None:
        super().__init__(Static(contact_label(contact)))
        self.contact = contact

    def show(self, contact: dict) -> None:
        self.contact = contact
        self.query_one(Static).update(contact_label(contact))

    @property
    def plain(self) -> str:
        return contact_label(self.contact).plain


class MessageLine(Static):
    def __init__(self, row: dict, contact: str) -> None:
        super().__init__(message_line(row, contact))
        self.row, self.contact = row, contact

    def show(self, row: dict) -> None:
        self.row = row
        self.update(message_line(row, self.contact))

    @property
    def plain(self) -> str:
        return message_line(self.row, self.contact).plain


class ChatApp(App):
    CSS_PATH = "chat.tcss"
    TITLE = "onionpost chat"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("ctrl+n", "invite", "Invite"),
        Binding("ctrl+o", "connect", "Answer invite"),
        Binding("ctrl+r", "requests", "Requests"),
        Binding("ctrl+s", "verify", "Security code"),
        Binding("ctrl+t", "rotate", "Rotate"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, home: Path, *, profile: str | None = None,
                 open_runtime: Callable[[], ClientRuntime] | None = None) -> None:
        """``open_runtime`` opens the home for a daemon of our own, used if none runs (None: never start one)."""
        super().__init__()
        self.home, self.wanted_profile, self.open_runtime = Path(home), profile, open_runtime
        self.session: Session | None = None
        self.profile: str | None = None
        self.contacts: list[dict] = []
        self.requests: list[dict] = []
        self.open_alias: str | None = None
        self.lines: dict[int, MessageLine] = {}
        self.states: dict[int, str] = {}  # message id -> the latest delivery state an event reported
        self.relays_down: set[str] = set()
        self.news: Text = Text()

    # --- layout ------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        # The widgets are kept as attributes: the app reaches them while a dialog is on top.
        self.top_line = Static(id="top")
        self.contact_list = ListView(id="contacts")
        self.no_contacts = Static(Text("No contacts yet.\nctrl+n invites someone,\nctrl+o answers an invitation.",
                                       style="dim"), id="no-contacts")
        self.no_contacts.display = False
        self.title_line = Static(Text("No conversation open: choose a contact (↑↓, Enter).", style="dim"), id="title")
        self.message_box = VerticalScroll(id="messages")
        self.message_input = Input(id="message", placeholder="Choose a contact first", disabled=True)
        self.news_line = Static(id="news")
        yield self.top_line
        with Horizontal(id="body"):
            with Vertical(id="side"):
                yield Static("Contacts", classes="heading")
                yield self.no_contacts
                yield self.contact_list
            with Vertical(id="main"):
                yield self.title_line
                yield self.message_box
                yield self.message_input
        yield self.news_line
        yield Footer()

    def on_mount(self) -> None:
        self.show_top()
        self.say("Connecting to the daemon...")
        self.start()

    async def on_unmount(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()

    # --- the daemon ------------------------------------------------------------------------

    async def api(self, method: str, *, alone: bool = False, **params):
        """Call a method for our profile; ``alone``: on its own connection (slow, network methods)."""
        if self.session is None:
            raise RpcError(0, "not connected to the daemon yet")
        params["profile"] = self.profile
        call = self.session.call_alone if alone else self.session.call
        return await call(method, **params)

    @work(exclusive=True, group="session")
    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def progress(summary: str, percent: float, **_) -> None:  # tor's bootstrap, from its thread
            loop.call_soon_threadsafe(self.say, f"Starting tor: {percent:.0f}% {summary}")

        try:
            self.session = await Session.open(self.home, self.open_runtime, progress=progress)
        except Exception as exc:  # no daemon, and ours could not start: say why, keep the screen
            self.say(f"Cannot reach or start a daemon for {self.home}: {exc}. ctrl+q quits.", error=True)
            return
        try:
            self.profile = await self.choose_profile()
            await self.session.subscribe()  # before loading: nothing that happens meanwhile is missed
        except RpcError as exc:
            self.say(exc.message, error=True)
            return
        self.show_top()
        await self.refresh_contacts()
        await self.refresh_requests()
        self.say("Ready. ↑↓ and Enter open a conversation; ctrl+n invites someone.")
        self.contact_list.focus()
        self.follow()

    async def choose_profile(self) -> str:
        profiles = await self.session.call("profile.list")
        if not profiles:
            raise RpcError(1, f"no profile in {self.home}: create one with 'onionpost profile create NAME'")
        if self.wanted_profile is None:
            return next(p["name"] for p in profiles if p["current"])
        for p in profiles:
            if p["name"] == self.wanted_profile:
                return p["name"]
        raise RpcError(1, f"no profile named {self.wanted_profile!r} (see 'onionpost profile list')")

    @work(exclusive=True, group="events")
    async def follow(self) -> None:
        session = self.session
        async for event in session.events():
            try:
                await self.on_daemon_event(event)
            except RpcError as exc:
                self.say(exc.message, error=True)
        if self.session is not session:
            return  # we are quitting: the app closed it
        why = session.own.failure() if session.own else None
        self.say("The daemon closed the connection" + (f" ({why})" if why else "") + ": nothing can be sent or "
                 "received now. ctrl+q quits.", error=True)
        self.message_input.disabled = True

    async def on_daemon_event(self, event: dict) -> None:
        if event.get("profile") not in (None, self.profile):
            return
        kind, contact = event["kind"], event.get("contact")
        if kind in ("sent", "delivered"):
            self.set_state(event["message"], kind)
            return
        if kind == "message":
            if contact == self.open_alias:
                await self.load_history()
            else:
                self.say(Text(f"New message from {printable(contact)}."))
            await self.refresh_contacts()
            return
        if kind == "relay_down":
            self.relays_down.add(event["relay"])
        elif kind == "relay_up":
            self.relays_down.discard(event["relay"])
        if kind == "request":
            await self.refresh_requests()
        if kind in CONTACT_NEWS:
            await self.refresh_contacts()
            if kind == "connected" and self.open_alias not in (None, *self.aliases()):
                await self.open_conversation(contact)  # the open contact took its display name
        self.say(Text(printable(event["text"])), error=kind in BAD_NEWS)
        self.show_top()

    # --- contacts and requests ------------------------------------------------------------

    def aliases(self) -> list[str]:
        return [c["alias"] for c in self.contacts]

    def contact(self, alias: str | None) -> dict | None:
        return next((c for c in self.contacts if c["alias"] == alias), None)

    async def refresh_contacts(self) -> None:
        try:
            contacts = await self.api("contacts")
        except RpcError as exc:
            self.say(exc.message, error=True)
            return
        view = self.contact_list
        items = list(view.query(ContactItem))
        if [i.contact["alias"] for i in items] == [c["alias"] for c in contacts]:
            for item, contact in zip(items, contacts):
                item.show(contact)
        else:
            chosen = view.highlighted_child.contact["alias"] if isinstance(view.highlighted_child, ContactItem) else None
            await view.clear()
            await view.extend(ContactItem(c) for c in contacts)
            aliases = [c["alias"] for c in contacts]
            if contacts:
                view.index = aliases.index(chosen) if chosen in aliases else 0
        self.contacts = contacts
        self.no_contacts.display = not contacts
        self.show_title()

    async def refresh_requests(self) -> None:
        try:
            self.requests = await self.api("requests")
        except RpcError as exc:
            self.say(exc.message, error=True)
            return
        self.show_top()
        for screen in self.screen_stack:
            if isinstance(screen, RequestsScreen):
                await screen.show(self.requests)

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        if isinstance(event.item, ContactItem):
            self.open(event.item.contact["alias"])

    @work(exclusive=True, group="open")
    async def open(self, alias: str) -> None:
        await self.open_conversation(alias)
        message = self.message_input
        if not message.disabled:
            message.focus()

    # --- the conversation ---------------------------------------------------------------------

    async def open_conversation(self, alias: str) -> None:
        self.open_alias = alias
        self.lines = {}
        await self.message_box.remove_children()
        self.show_title()
        await self.load_history()
        await self.refresh_contacts()  # its unread count is 0 now

    async def load_history(self) -> None:
        alias = self.open_alias
        try:
            rows = await self.api("history", contact=alias, limit=HISTORY)
        except RpcError as exc:
            self.say(exc.message, error=True)
            return
        if alias == self.open_alias:
            await self.show_messages(rows)

    async def show_messages(self, rows: list[dict]) -> None:
        """Add new messages at the end, update the state of those shown."""
        box = self.message_box
        new = []
        for row in rows:
            row = dict(row)
            if row.get("direction") == "out":
                row["state"] = later_state(row.get("state"), self.states.get(row["id"]))
            line = self.lines.get(row["id"])
            if line is not None:
                line.show(row)
            else:
                self.lines[row["id"]] = line = MessageLine(row, self.open_alias)
                new.append(line)
        if new:
            await box.mount_all(new)
            box.scroll_end(animate=False)

    def set_state(self, message_id: int, state: str) -> None:
        self.states[message_id] = later_state(self.states.get(message_id), state)
        line = self.lines.get(message_id)
        if line is not None:
            line.show(line.row | {"state": later_state(line.row.get("state"), state)})

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "message":
            return
        if self.open_alias is None:
            self.say("Choose a contact first (↑↓ and Enter in the contact list).", error=True)
            return
        if not event.value.strip():
            return
        self.send(self.open_alias, event.value)
        event.input.clear()

    @work(group="send")
    async def send(self, alias: str, text: str) -> None:
        try:
            row = await self.api("send", contact=alias, text=text)
        except RpcError as exc:
            self.say(f"Not sent: {exc.message}", error=True)
            message = self.message_input
            if not message.value:
                message.value = text  # give it back, to send again
            return
        if alias == self.open_alias:
            await self.show_messages([row | {"direction": "out", "time": int(time.time()), "notice": None}])

    # --- what the screen shows ------------------------------------------------------------------

    def say(self, text: str | Text, *, error: bool = False) -> None:
        """One line of news at the bottom: the latest event, error or hint."""
        self.news = Text(text, style="bold red" if error else "") if isinstance(text, str) else text
        if error:
            self.news.stylize("bold red")
        self.news_line.update(self.news)

    def show_top(self) -> None:
        """The top line: profile, requests waiting, relays down, then whose daemon this is."""
        top = Text("onionpost", style="bold")
        top.append(f" · {printable(self.profile)}" if self.profile else "")
        if self.requests:
            n = len(self.requests)
            top.append(f" · {n} request{'s' if n > 1 else ''}: ctrl+r", style="bold yellow")
        for relay in sorted(self.relays_down):
            top.append(f" · relay down: {relay_host(relay)}", style="bold red")
        if self.session is not None:
            top.append(" · own daemon (stops when you quit)" if self.session.own else " · daemon running", style="dim")
        self.top_line.update(top)

    def show_title(self) -> None:
        contact = self.contact(self.open_alias)
        title = self.title_line
        message = self.message_input
        if contact is None:
            title.update(Text("No conversation open: choose a contact (↑↓, Enter).", style="dim"))
            message.disabled, message.placeholder = True, "Choose a contact first"
            return
        title.update(contact_title(contact))
        if contact["state"] in SENDABLE:
            message.disabled, message.placeholder = False, f"Message {contact['alias']} (Enter sends)"
        else:
            message.disabled, message.placeholder = True, f"{contact['alias']} is {contact['state']}: nothing can be sent yet"

    # --- actions (keys) ---------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """The chat's keys work on the main screen only (not on top of a dialog)."""
        if action in ("invite", "connect", "requests", "verify", "rotate"):
            return not isinstance(self.screen, ModalScreen)
        return True

    def ready(self) -> bool:
        if self.session is None or self.profile is None:
            self.say("Not connected to the daemon yet.", error=True)
            return False
        return True

    def open_contact(self) -> str | None:
        if self.open_alias is None:
            self.say("Open a conversation first (↑↓ and Enter in the contact list).", error=True)
        return self.open_alias

    def action_invite(self) -> None:
        if self.ready():
            self.push_screen(InviteScreen())

    def action_connect(self) -> None:
        if not self.ready():
            return

        def done(result: dict | None) -> None:
            if result is not None:
                self.say(Text(f"Request delivered to their relay: {printable(result['contact'])} is connected "
                              "once they accept."))
                self.run_worker(self.refresh_contacts(), group="refresh")

        self.push_screen(ConnectScreen(), done)

    def action_requests(self) -> None:
        if self.ready():
            self.push_screen(RequestsScreen())

    def action_verify(self) -> None:
        if self.ready() and (alias := self.open_contact()):
            self.push_screen(VerifyScreen(alias))

    def action_rotate(self) -> None:
        if not (self.ready() and (alias := self.open_contact())):
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.rotate(alias)

        self.push_screen(ConfirmScreen(f"Move the conversation with {printable(alias)} to fresh queues "
                                       "(new ids and keys)?"), confirmed)

    @work(group="rotate")
    async def rotate(self, alias: str) -> None:
        self.say(Text(f"Rotating the conversation with {printable(alias)}..."))
        try:
            result = await self.api("rotate", alone=True, contact=alias)
        except RpcError as exc:
            self.say(f"Not rotated: {exc.message}", error=True)
            return
        self.say(Text(f"Rotation started: {printable(result['contact'])} moves to a new queue on "
                      f"{relay_host(result['relay'])}."))
