"""onionpost chat: the Textual UI driven headless by its pilot, against real relays and daemons.

Two homes, one loopback relay. The chats are clients of the daemons' sockets
(processes started here, or the chat's own in-process daemon); everything the
tests check they read from the screen's widgets, or from the other daemon's
API. Waits poll a condition with a deadline while the apps keep running.
"""

import asyncio
import inspect
import os
import subprocess
import sys

import pytest
from textual import events
from textual.widgets import Static

from onionpost.client.chat import ChatApp, ContactItem, MessageLine
from onionpost.client.chat_screens import ConfirmScreen, ConnectScreen, InviteScreen, RequestsScreen, VerifyScreen
from onionpost.client.chat_text import code_lines
from onionpost.client.home import is_locked
from onionpost.client.qr import qr_terminal
from onionpost.client.rpc import AsyncDaemonClient
from onionpost.client.runtime import ClientRuntime
from onionpost.client.timing import TimingPolicy

from .conftest import PASSWORD, REPO, Person
from .daemon_helpers import DaemonProcess

FAST = ("--link-spread", "1", "--receipt-delay", "0.2", "--link-gap", "0")
SIZE = (80, 24)


@pytest.fixture
def people(tmp_path, nodes):
    relay = nodes("relay")
    return [Person(tmp_path / name, name, [relay]) for name in ("alice", "bob")]


@pytest.fixture
def daemons(people):
    started = [DaemonProcess(p.home, *FAST).start() for p in people]
    yield started
    for daemon in started:
        daemon.stop()
        daemon.assert_clean_log()


async def api(home, method: str, **params):
    """One call on a daemon's socket, without blocking the event loop the chats (and maybe the daemon) run in."""
    client = await AsyncDaemonClient.connect(home)
    try:
        return await client.call(method, **params)
    finally:
        await client.close()


async def until(condition, timeout: float = 30, what: str = "condition"):
    """Poll ``condition`` (it may be async) until it is true; the apps run meanwhile."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def contacts(app: ChatApp) -> list[str]:
    return [item.plain for item in app.contact_list.query(ContactItem)]


def messages(app: ChatApp) -> list[str]:
    return [line.plain for line in app.message_box.query(MessageLine)]


def shown(widget) -> str:
    """The text a Static shows (what was given to it: ``content`` in Textual 2+, ``renderable`` before)."""
    source = widget.content if hasattr(widget, "content") else widget.renderable
    return source.plain if hasattr(source, "plain") else str(source)


def status(screen) -> str:
    return shown(screen.query_one(".status"))


def news(app: ChatApp) -> str:
    return app.news.plain


async def ready(app: ChatApp) -> None:
    await until(lambda: app.profile is not None and "Ready" in news(app), what="the chat connected to its daemon")


async def type_text(pilot, text: str) -> None:
    await pilot.press(*("space" if c == " " else c for c in text))


async def open_conversation(app: ChatApp, pilot, alias: str) -> None:
    view = app.contact_list
    view.focus()
    view.index = [item.contact["alias"] for item in view.query(ContactItem)].index(alias)
    await pilot.press("enter")
    await until(lambda: app.open_alias == alias and app.focused is app.message_input,
                what=f"the conversation with {alias} open")


@pytest.mark.timeout(240)
async def test_two_chats_invite_accept_talk_and_compare_codes(people, daemons):
    alice_home, bob_home = (p.home for p in people)
    alice, bob = ChatApp(alice_home), ChatApp(bob_home)
    async with alice.run_test(size=SIZE) as a, bob.run_test(size=SIZE) as b:
        await ready(alice)
        await ready(bob)
        assert "daemon running" in shown(alice.top_line)
        assert "No contacts yet" in shown(alice.no_contacts)

        # Alice invites: the QR code of the link is on her screen.
        await a.press("ctrl+n")
        invite = await until(lambda: isinstance(alice.screen, InviteScreen) and alice.screen.link and alice.screen,
                             what="the invitation")
        assert shown(invite.query_one("#qr")).strip("\n") == qr_terminal(invite.link)
        assert invite.link in shown(invite.query_one("#link")).replace("\n", "")

        # Bob answers it in his chat: ctrl+o, the link pasted (as a wrapped terminal copy: the lines are joined).
        await b.press("ctrl+o")
        connect = await until(lambda: isinstance(bob.screen, ConnectScreen) and bob.screen, what="the connect dialog")
        link_input = connect.query_one("#connect-link")
        wrapped = "\n".join(invite.link[i:i + 70] for i in range(0, len(invite.link), 70))
        link_input.post_message(events.Paste(wrapped))
        await until(lambda: link_input.value == invite.link, what="the pasted link")
        await b.press("enter")
        await until(lambda: not isinstance(bob.screen, ConnectScreen), what="the request delivered")
        assert "Request delivered" in news(bob)

        # Alice sees the request arrive (an event), and accepts it.
        await a.press("escape")
        await until(lambda: "1 request" in shown(alice.top_line), what="the request on alice's screen")
        await a.press("ctrl+r")
        requests = await until(lambda: isinstance(alice.screen, RequestsScreen) and alice.screen, what="the requests")
        await until(lambda: requests.chosen() is not None, what="the request listed")
        await a.press("a")
        await until(lambda: contacts(alice) == ["Bob\n  key: link"] and contacts(bob) == ["Alice\n  key: link"],
                    timeout=60, what="both connected (each under the other's display name)")
        assert "No requests waiting" in shown(requests.query_one("#request-list").query_one(Static))
        await a.press("escape")
        assert "request" not in shown(alice.top_line)

        # Alice types a message; it goes pending -> delivered on her screen.
        await open_conversation(alice, a, "Bob")
        assert "key: link (lower assurance) · not verified (ctrl+s)" in shown(alice.title_line)
        await type_text(a, "hello bob")
        await a.press("enter")
        first = await until(lambda: messages(alice) and messages(alice)[-1], what="the message on alice's screen")
        assert first.split(" ", 1)[1] in ("you: hello bob  … pending", "you: hello bob  ✓ sent",
                                          "you: hello bob  ✓✓ delivered")
        await until(lambda: messages(alice)[-1].endswith("you: hello bob  ✓✓ delivered"), timeout=60,
                    what="the delivery receipt")
        assert alice.message_input.value == ""

        # Bob has not opened the conversation: an unread count; opening it shows the message and clears it.
        await until(lambda: contacts(bob) == ["Alice  1 unread\n  key: link"], what="the unread count at bob")
        assert "New message from Alice" in news(bob)
        await open_conversation(bob, b, "Alice")
        assert messages(bob)[-1].endswith("Alice: hello bob")
        await until(lambda: contacts(bob) == ["Alice\n  key: link"], what="the unread count cleared")
        assert [c["unread"] for c in await api(bob_home, "contacts")] == [0]

        # Bob answers; Alice has the conversation open, so it counts as read at once.
        await type_text(b, "hi alice")
        await b.press("enter")
        await until(lambda: messages(alice)[-1].endswith("Bob: hi alice"), what="bob's answer on alice's screen")
        await until(lambda: messages(bob)[-1].endswith("✓✓ delivered"), timeout=60, what="bob's receipt")
        assert contacts(alice) == ["Bob\n  key: link"]

        # Security code: shown, a short code is not a code, a wrong one warns loudly, the right one verifies.
        code = (await api(alice_home, "verify", contact="Bob"))["code"]
        await a.press("ctrl+s")
        verify = await until(lambda: isinstance(alice.screen, VerifyScreen) and alice.screen, what="the code dialog")
        await until(lambda: shown(verify.query_one("#code")).strip() == code_lines(code), what="the code")
        code_input = verify.query_one("#code-input")
        code_input.value = "12345 67890"
        await a.press("enter")
        await until(lambda: "not a complete code" in status(verify), what="the incomplete code refused")
        assert not verify.has_class("alarm")
        code_input.value = "1" * 60
        await a.press("enter")
        await until(lambda: "DO NOT MATCH" in status(verify), what="the mismatch warning")
        assert verify.has_class("alarm")
        assert [c["verified"] for c in await api(alice_home, "contacts")] == [False]
        code_input.value = code
        await a.press("enter")
        await until(lambda: "The codes match" in status(verify), what="the match")
        assert not verify.has_class("alarm")
        await a.press("escape")
        await until(lambda: contacts(alice) == ["Bob\n  ✓ verified"], what="verified in the contact list")
        assert "✓ verified" in shown(alice.title_line)

        # Rotation: asked first, then the conversation moves and still works.
        await a.press("ctrl+t")
        confirm = await until(lambda: isinstance(alice.screen, ConfirmScreen) and alice.screen, what="the question")
        assert "fresh queues" in shown(confirm.query_one(Static))
        await a.press("y")
        await until(lambda: "now uses a new queue" in news(alice), timeout=60, what="the rotation finished")
        await type_text(a, "after rotation")
        await a.press("enter")
        await until(lambda: messages(bob)[-1].endswith("Alice: after rotation"), timeout=60,
                    what="a message over the new queue")
    for app in (alice, bob):
        assert app.session is None  # closed with the app


@pytest.mark.timeout(180)
async def test_reject_a_request_and_api_errors_on_screen(people, daemons):
    alice_home, bob_home = (p.home for p in people)
    bob = ChatApp(bob_home)
    async with bob.run_test(size=SIZE) as b:
        await ready(bob)
        # Alice (through her daemon's API) answers an invitation Bob made in his chat.
        await b.press("ctrl+n")
        invite = await until(lambda: isinstance(bob.screen, InviteScreen) and bob.screen.link and bob.screen,
                             what="the invitation")
        await api(alice_home, "connect", link=invite.link)
        await b.press("escape")
        await b.press("ctrl+r")
        requests = await until(lambda: isinstance(bob.screen, RequestsScreen) and bob.screen.chosen() and bob.screen,
                               what="the request listed")
        await b.press("r")
        await until(lambda: isinstance(bob.screen, ConfirmScreen), what="asked before rejecting")
        await b.press("y")
        await until(lambda: "Rejected request" in status(requests), what="the request rejected")
        assert await api(bob_home, "requests") == []
        assert requests.chosen() is None
        await b.press("a")  # nothing left to accept
        assert "No request chosen" in status(requests)
        await b.press("escape")
        assert contacts(bob) == []

        # An API error is a line on the screen, not a traceback: a malformed invitation.
        await b.press("ctrl+o")
        connect = await until(lambda: isinstance(bob.screen, ConnectScreen) and bob.screen, what="the connect dialog")
        await b.press("enter")
        assert "Paste the invitation link first" in status(connect)
        connect.query_one("#connect-link").value = "onionpost:1/NOTALINK"
        await b.press("enter")
        await until(lambda: "Not sent: bad invitation" in status(connect), what="the API's error")
        await b.press("escape")
        # Keys that need an open conversation say so.
        await b.press("ctrl+s")
        assert "Open a conversation first" in news(bob)
        assert not isinstance(bob.screen, VerifyScreen)

        # The daemon stops under the chat: it says so, and what needs the daemon says why it failed.
        await asyncio.to_thread(daemons[1].stop)
        await until(lambda: "The daemon closed the connection" in news(bob), what="the lost daemon on screen")
        await b.press("ctrl+n")
        invite = await until(lambda: isinstance(bob.screen, InviteScreen) and bob.screen, what="the invite dialog")
        await until(lambda: "Could not make an invitation: the daemon is not running" in status(invite),
                    what="the error in the dialog")


@pytest.mark.timeout(180)
async def test_the_chat_runs_its_own_daemon_when_none_runs(people):
    alice, bob = people
    bob_daemon = DaemonProcess(bob.home, *FAST).start()
    timing = TimingPolicy(spread=1.0, receipt_delay=0.2, automatic_delay=0.2, link_gap=0.0)
    opened = []

    def open_runtime():
        opened.append(ClientRuntime.open(alice.home, PASSWORD, timing=timing))
        return opened[-1]

    try:
        app = ChatApp(alice.home, open_runtime=open_runtime)
        async with app.run_test(size=SIZE) as pilot:
            await ready(app)
            assert len(opened) == 1 and app.session.own is not None
            assert "own daemon" in shown(app.top_line)
            assert is_locked(alice.home) and (alice.home / "daemon.sock").exists()
            # Its socket serves other clients too, like 'onionpost daemon'.
            assert (await api(alice.home, "status"))["mode"] == "daemon"

            link = (await api(bob.home, "invite", auto_accept=True))["link"]
            await pilot.press("ctrl+o")
            connect = await until(lambda: isinstance(app.screen, ConnectScreen) and app.screen, what="the dialog")
            connect.query_one("#connect-link").value = link
            await pilot.press("tab")
            await type_text(pilot, "bobby")
            await pilot.press("enter")
            await until(lambda: contacts(app) == ["bobby\n  key: link"], timeout=60, what="bob connected")

            async def alice_at_bob():
                return [c["state"] for c in await api(bob.home, "contacts") if c["alias"] == "Alice"] == ["connected"]

            await until(alice_at_bob, timeout=60, what="alice's profile at bob")
            await api(bob.home, "send", contact="Alice", text="from bob")
            await until(lambda: contacts(app) == ["bobby  1 unread\n  key: link"], what="the unread message")
            await open_conversation(app, pilot, "bobby")
            assert messages(app)[-1].endswith("bobby: from bob")
            await type_text(pilot, "from alice")
            await pilot.press("enter")
            await until(lambda: messages(app)[-1].endswith("✓✓ delivered"), timeout=60, what="the receipt")
        # Quitting stopped it: socket gone, lock released, a daemon can start on the home.
        assert not (alice.home / "daemon.sock").exists() and not is_locked(alice.home)
        history = bob_daemon.call("history", contact="Alice")
        assert [m["text"] for m in history] == ["from bob", "from alice"]
    finally:
        for runtime in opened:
            if runtime.lock.held:
                await runtime.close()
        bob_daemon.stop()
        bob_daemon.assert_clean_log()


@pytest.mark.timeout(60)
def test_the_command_checks_the_home_first_and_other_commands_do_not_load_textual(tmp_path):
    env = dict(os.environ, ONIONPOST_PASSWORD=PASSWORD)
    result = subprocess.run([sys.executable, "-m", "onionpost", "chat", "--home", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=30, cwd=REPO, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no onionpost data in")
    person = Person(tmp_path / "carol", "carol", [])
    wrong = subprocess.run([sys.executable, "-m", "onionpost", "chat", "--home", str(person.home)], capture_output=True,
                           text=True, timeout=30, cwd=REPO, env=dict(env, ONIONPOST_PASSWORD="wrong"),
                           stdin=subprocess.DEVNULL)
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: wrong password")  # one line, before any screen
    assert not is_locked(person.home)
    probe = ("import sys\nfrom onionpost.cli import app\n"
             "try:\n    app(['status', '--help'])\nexcept SystemExit:\n    pass\n"
             "print('textual' in sys.modules)\n")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert loaded.stdout.strip().endswith("False"), loaded.stdout + loaded.stderr


def test_what_the_screen_writes():
    from onionpost.client.chat_text import code_problem, contact_label, later_state, message_line, printable

    assert printable("evil \x1b[2J\r escape\nnext") == "evil \ufffd[2J\ufffd escape\nnext"
    assert later_state("delivered", "sent") == "delivered" and later_state("pending", "sent") == "sent"
    assert later_state(None, "sent") == "sent" and later_state("sent", None) == "sent"
    assert code_problem("") == "Type the code your contact reads to you."
    assert "it has 10 digits" in code_problem("12345-67890")
    assert "only digits" in code_problem("1234O " * 12)
    assert code_problem(" ".join(["12345"] * 12)) is None and code_problem("1" * 60) is None
    row = {"direction": "in", "text": "[bold]x[/bold]", "time": None}
    assert message_line(row, "bob").plain == "--:-- bob: [bold]x[/bold]"  # text, never markup
    assert contact_label({"alias": "bob", "unread": 2, "verified": False, "key_via": "qr-screen",
                          "state": "accepted"}).plain == "bob  2 unread\n  key: QR on screen · accepted"
