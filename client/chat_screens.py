"""The chat's dialogs: invite (QR), answer an invitation, requests, security code, and yes/no.

Each dialog calls the daemon through ``ChatApp.api`` and shows the API's error
messages in itself; Escape closes it.
"""

from __future__ import annotations

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, ListItem, ListView, Static

from .chat_text import code_lines, code_problem, printable
from .rpc import RpcError


class Dialog(ModalScreen):
    """A modal dialog; Escape closes it."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def action_close(self) -> None:
        self.dismiss(None)

    def say(self, text: str, style: str = "") -> None:
        self.query_one(".status", Static).update(Text(text, style=style))


class InviteScreen(Dialog):
    """A new one-time invitation: its QR code and its link."""

    BINDINGS = [Binding("c", "copy", "Copy the link"), Binding("escape", "close", "Close")]

    def __init__(self) -> None:
        super().__init__()
        self.link: str | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide"):
            yield Static("New invitation (Esc closes)", classes="heading")
            yield Static("Asking your relay for a queue...", classes="status")
            yield Static(id="qr")
            yield Static(id="link")
            yield Static(id="advice")
        yield Footer()

    def on_mount(self) -> None:
        self.make()

    @work(exclusive=True)
    async def make(self) -> None:
        from .qr import qr_terminal

        try:
            result = await self.app.api("invite", alone=True)
        except RpcError as exc:
            self.say(f"Could not make an invitation: {exc.message}", "bold red")
            return
        self.link = result["link"]
        qr = qr_terminal(self.link)
        rows = qr.count("\n") + 1
        if self.app.size.height < rows + 4:
            self.say(f"The code is {rows} lines tall: enlarge the terminal to scan it whole, "
                     "or scroll with ↑↓ to read the link below it.", "yellow")
        else:
            self.say("Their phone or camera scans this code:")
        self.query_one("#qr", Static).update(Text(qr, no_wrap=True, overflow="ignore"))
        self.query_one("#link", Static).update(Text(self.link, style="dim"))
        self.query_one("#advice", Static).update(
            "Show the code to your contact in person if you can: a forwarded link is easier to intercept. "
            "In their chat they press ctrl+o and paste the link (c copies it). Their request then appears "
            "under ctrl+r.")
        self.query_one(VerticalScroll).focus()

    def action_copy(self) -> None:
        if self.link is not None:
            self.app.copy_to_clipboard(self.link)  # the terminal's clipboard (OSC 52), where it allows it
            self.say("Link copied to the clipboard (if your terminal allows it).")


class LinkInput(Input):
    """An input for an invitation link: a pasted link keeps all its lines (a terminal may have wrapped it)."""

    def on_paste(self, event: events.Paste) -> None:
        event.prevent_default()  # Input keeps only the first line
        event.stop()
        self.insert_text_at_cursor("".join(event.text.split()))


class ConnectScreen(Dialog):
    """Answer an invitation: paste its link, optionally name the contact."""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Answer an invitation", classes="heading")
            yield Static("The invitation link (onionpost:1/...):")
            yield LinkInput(id="connect-link", placeholder="paste the link here")
            yield Static("Your name for this contact (optional):")
            yield Input(id="connect-alias", placeholder="their name appears once they accept")
            yield Static("Enter sends the request; Esc cancels.", classes="status")
        yield Footer()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        link = self.query_one("#connect-link", Input).value.strip()
        if not link:
            self.say("Paste the invitation link first.", "yellow")
            self.query_one("#connect-link", Input).focus()
            return
        alias = self.query_one("#connect-alias", Input).value.strip() or None
        self.say("Sending the connection request...")
        self.send(link, alias)

    @work(exclusive=True)
    async def send(self, link: str, alias: str | None) -> None:
        try:
            result = await self.app.api("connect", alone=True, link=link, alias=alias)
        except RpcError as exc:
            self.say(f"Not sent: {exc.message}", "bold red")
            return
        self.dismiss(result)


class RequestItem(ListItem):
    def __init__(self, request: dict) -> None:
        super().__init__(Static(Text(f"Request {request['request']}  (invitation shared by {printable(request['via'])})")))
        self.request = request


class RequestsScreen(Dialog):
    """Connection requests waiting for an answer; the app keeps the list current (``show``)."""

    BINDINGS = [Binding("a", "accept", "Accept"), Binding("r", "reject", "Reject"), Binding("escape", "close", "Close")]

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[dict] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Connection requests", classes="heading")
            yield ListView(id="request-list")
            yield Static("↑↓ choose, a accepts, r rejects, Esc closes.", classes="status")
        yield Footer()

    async def on_mount(self) -> None:
        await self.show(self.app.requests)
        self.query_one(ListView).focus()

    async def show(self, requests: list[dict]) -> None:
        if requests == self.shown:
            return
        self.shown = list(requests)
        view = self.query_one(ListView)
        index = view.index
        await view.clear()
        if not requests:
            await view.append(ListItem(Static("No requests waiting.")))
            return
        await view.extend(RequestItem(r) for r in requests)
        view.index = min(index or 0, len(requests) - 1)

    def chosen(self) -> int | None:
        item = self.query_one(ListView).highlighted_child
        return item.request["request"] if isinstance(item, RequestItem) else None

    def action_accept(self) -> None:
        request = self.chosen()
        if request is None:
            self.say("No request chosen.", "yellow")
            return
        self.say(f"Accepting request {request}...")
        self.answer("accept", request)

    def action_reject(self) -> None:
        request = self.chosen()
        if request is None:
            self.say("No request chosen.", "yellow")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.say(f"Rejecting request {request}...")
                self.answer("reject", request)

        self.app.push_screen(ConfirmScreen(f"Reject request {request}? Its queue is deleted; "
                                           "they would need a new invitation."), confirmed)

    @work(group="answer")
    async def answer(self, method: str, request: int) -> None:
        try:
            result = await self.app.api(method, alone=True, request=request)
        except RpcError as exc:
            self.say(f"Request {request}: {exc.message}", "bold red")
            return
        if method == "accept":
            self.say(f"Accepted request {request}: {printable(result['contact'])} takes their own name "
                     "once their profile arrives.", "green")
        else:
            self.say(f"Rejected request {request}.")
        await self.app.refresh_requests()
        await self.app.refresh_contacts()


class VerifyScreen(Dialog):
    """The security code with a contact, and a check of the code they read out."""

    def __init__(self, contact: str) -> None:
        super().__init__()
        self.contact = contact

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(f"Security code with {printable(self.contact)}"), classes="heading")
            yield Static("Asking for the code...", id="code")
            yield Static("Compare it with theirs, in person or on a call. Or type the code they read to you "
                         "and press Enter:")
            yield Input(id="code-input", placeholder="60 digits; spaces do not matter")
            yield Static("Esc closes.", classes="status")
        yield Footer()

    def on_mount(self) -> None:
        self.show_code()
        self.query_one(Input).focus()

    @work(exclusive=True, group="code")
    async def show_code(self) -> None:
        try:
            result = await self.app.api("verify", contact=self.contact)
        except RpcError as exc:
            self.query_one("#code", Static).update(Text(exc.message, style="bold red"))
            return
        self.query_one("#code", Static).update(Text(code_lines(result["code"]), style="bold"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        problem = code_problem(event.value)
        if problem:
            self.set_class(False, "alarm")
            self.say(problem, "yellow")
            return
        self.compare(event.value)

    @work(exclusive=True, group="compare")
    async def compare(self, typed: str) -> None:
        try:
            result = await self.app.api("verify", contact=self.contact, code=typed)
        except RpcError as exc:
            self.say(exc.message, "bold red")
            return
        if result["verified"]:
            self.set_class(False, "alarm")
            self.say(f"The codes match: {printable(result['contact'])} is now verified.", "bold green")
            await self.app.refresh_contacts()
            return
        self.set_class(True, "alarm")
        self.say(f"WARNING: THE CODES DO NOT MATCH. Someone may be intercepting your conversation with "
                 f"{printable(result['contact'])}. Do not trust it; make a new invitation and exchange it "
                 "in person.", "bold white on red")


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question: y or Enter for yes, n or Esc for no."""

    BINDINGS = [Binding("y,enter", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog small"):
            yield Static(Text(self.question))
            yield Static("y: yes   n: no", classes="status")
        yield Footer()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
