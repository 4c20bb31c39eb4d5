"""The client's commands: profiles, relays, invitations, contacts, messages, the daemon.

``register(app)`` adds them to the ``onionpost`` command. Each command calls
one method of ``client/api.py``: through the daemon when one runs for the
home (no password, no tor start), else one-shot in this process. Output,
``--json`` and exit codes are the same either way. User mistakes print one
line on stderr and exit non-zero; nothing here prints a traceback for them.
"""


import asyncio
import functools
import getpass
import inspect
import json
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import platformdirs
import typer

# Only what every command needs is imported here: with a daemon running, a command is a
# JSON-RPC call and must start fast. The agent, the store, tor and the QR code modules are
# imported where a command needs them (the one-shot path, invite, verify, ...).
from .home import HomeBusy, HomeNotPrivate, check_private, is_locked, owner_pid
from .rpc import DaemonClient, RpcError

HOME_ENV = "ONIONPOST_HOME"
PASSWORD_ENV = "ONIONPOST_PASSWORD"
TESTNET_ENV = "ONIONPOST_TESTNET"
DEFAULT_HOME = platformdirs.user_data_dir("onionpost")

HomeOpt = Annotated[Optional[Path], typer.Option(
    "--home", help=f"Data folder (default: ${HOME_ENV}, else {DEFAULT_HOME}).", show_default=False)]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="Profile to act as (default: the current one).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

# What to tell the user after an error of each kind (the API itself gives no CLI hints).
HINTS = {
    "no_contact": "see 'onionpost contacts'",
    "no_request": "see 'onionpost requests'",
    "no_relay": "add one with 'onionpost relay add ADDRESS'",
    "relay_access": "ask the relay's operator for an access key: 'onionpost relay add ADDRESS --access-key KEY'",
    "needs_daemon": "start one with 'onionpost daemon'",
}


class Options:
    """Global options, from the root callback and from each command (the command wins)."""

    home: Path | None = None
    profile: str | None = None
    json: bool = False
    testnet: Path | None = None
    tor_socks: str | None = None
    tor_control: int | None = None
    isolation: str = "queue"
    link_spread: float | None = None
    receipts: str | None = None
    receipt_delay: float | None = None
    defences: dict | None = None  # the daemon's traffic-correlation defences (TimingPolicy fields)
    daemon: bool = False  # the last command went through a running daemon


_options = Options()


class UserError(Exception):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def _home(home: Path | None) -> Path:
    chosen = home or _options.home or os.environ.get(HOME_ENV)
    return Path(chosen) if chosen else Path(DEFAULT_HOME)


def _password(home: Path, *, confirm: bool) -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password:
        return password
    if not sys.stdin.isatty():
        raise UserError(f"no password: set {PASSWORD_ENV} or run in a terminal")
    password = getpass.getpass(f"Password for {home}: ")
    if confirm and getpass.getpass("Same password again: ") != password:
        raise UserError("the two passwords differ")
    return password


def _emit(data, text: str | None, json_out: bool) -> None:
    if json_out or _options.json:
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    elif text:
        print(text)


def command(func):
    """Turn user errors into one line on stderr and an exit status."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            if not isinstance(exc, _user_errors()):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _user_errors() -> tuple[type[Exception], ...]:
    from .db import DatabaseError
    from .qr import QRReadError

    return DatabaseError, QRReadError, HomeBusy, HomeNotPrivate, ValueError


_NETWORK_PARAMETERS = [
    inspect.Parameter(
        "testnet", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Optional[Path], typer.Option("--testnet", envvar=TESTNET_ENV, help="Use the private Tor network in this folder ('onionpost testnet up').")],
    ),
    inspect.Parameter(
        "tor_socks", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Optional[str], typer.Option("--tor-socks", help="Use a running tor's SOCKS port, [HOST:]PORT, instead of starting one.")],
    ),
    inspect.Parameter(
        "tor_control", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Optional[int], typer.Option("--tor-control", help="That tor's control port (cookie auth): circuits shown, fresh circuits asked for when a relay is unreachable.")],
    ),
    inspect.Parameter(
        "isolation", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Optional[str], typer.Option("--isolation", help="One Tor circuit per: queue (default), contact, or profile (shared: one for everything, lab only).")],
    ),
]


def network_command(func):
    """Add the Tor options to a command that talks to relays."""

    @functools.wraps(func)
    def wrapper(*args, testnet=None, tor_socks=None, tor_control=None, isolation=None, **kwargs):
        _options.testnet = testnet or _options.testnet
        _options.tor_socks = tor_socks or _options.tor_socks
        _options.tor_control = tor_control or _options.tor_control
        _options.isolation = isolation or _options.isolation
        return func(*args, **kwargs)

    signature = inspect.signature(func)
    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *_NETWORK_PARAMETERS])
    return wrapper


def _tor_settings():
    from .tor import TorSettings, check_isolation, parse_host_port

    try:
        check_isolation(_options.isolation, testnet=_options.testnet is not None)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    socks = parse_host_port(_options.tor_socks, "--tor-socks") if _options.tor_socks else None
    if _options.testnet is not None and not (Path(_options.testnet) / "network.json").exists():
        raise UserError(f"no private Tor network in {_options.testnet}: start one with 'onionpost testnet up --dir DIR'")
    return TorSettings(socks=socks, control=_options.tor_control, testnet=_options.testnet)


def _timing(*, daemon: bool):
    """The timing defences (docs/privacy.md). A one-shot command opens and closes its links with the
    command, so it spreads nothing; its receipts ride with the next message you send, and other
    automatic messages leave after a short random delay that ``receive`` waits for."""
    from .timing import TimingPolicy

    base = TimingPolicy() if daemon else TimingPolicy(spread=0.0, link_lifetime=0.0, link_gap=0.0, send_link_idle=0.0,
                                                       receipts="next", automatic_delay=2.0)
    changes = {}
    if _options.link_spread is not None:
        changes["spread"] = _options.link_spread
    if _options.receipts is not None:
        changes["receipts"] = _options.receipts
    if _options.receipt_delay is not None:
        changes["receipt_delay"] = changes["automatic_delay"] = _options.receipt_delay
        changes.setdefault("receipts", "delay")
    if daemon and _options.defences:
        changes.update(_options.defences)
    try:
        return TimingPolicy(**{**base.__dict__, **changes})
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _fail(exc) -> None:
    """An API error (from the daemon, or one-shot) as the CLI's one line and exit code."""
    data = exc.data if isinstance(exc, RpcError) else {"kind": exc.kind, "exit_code": exc.exit_code}
    hint = HINTS.get(data.get("kind"))
    raise UserError(f"{exc.message}" + (f" ({hint})" if hint else ""), data.get("exit_code", 1))


def _invoke(method: str, params: dict, home: Path | None, *, emit=None) -> Any:
    """Run one API method: through the home's daemon if one answers, else one-shot here."""
    path = _home(home)
    params = {k: v for k, v in params.items() if v is not None}
    client = DaemonClient.connect(path) if path.is_dir() else None
    _options.daemon = client is not None
    if client is not None:
        with client:
            try:
                return client.call(method, params)
            except RpcError as exc:
                _fail(exc)
    return _oneshot(path, method, params, emit=emit)


def _oneshot(home: Path, method: str, params: dict, *, emit=None) -> Any:
    from . import api
    from .db import NoDatabaseError
    from .runtime import ClientRuntime

    spec = api.METHODS[method]
    if spec.daemon_only:
        raise UserError(f"{method} needs a running daemon (start one with 'onionpost daemon')")
    creating = method == "profile.create" and not (home / "onionpost.db").exists()
    if spec.writes and is_locked(home):
        raise HomeBusy(home, owner_pid(home))  # before the password prompt
    settings = _tor_settings() if spec.network else None
    try:
        runtime = ClientRuntime.open(home, _password(home, confirm=creating), create=creating, lock=spec.writes,
                                     tor_settings=settings, isolation=_options.isolation,
                                     timing=_timing(daemon=False))
    except NoDatabaseError:
        raise UserError(f"no onionpost data in {home}: create a profile first with 'onionpost profile create NAME'") from None

    async def main():
        try:
            return await api.call(api.Context(runtime, "oneshot", emit=emit), method, params)
        finally:
            await runtime.close()

    try:
        return asyncio.run(main())
    except api.ApiError as exc:
        _fail(exc)


def _safe(text) -> str:
    """Text a contact chose (a message, a name), with control characters made visible: a message
    must not be able to move the cursor, clear the screen or retitle the terminal it is printed on."""
    text = str(text)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _time(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else ""


def _event_line(event: dict) -> str:
    if event["kind"] == "message":
        earlier = "  (earlier)" if event.get("earlier") else ""
        return f"[{_time(event.get('time'))}] {_safe(event['contact'])}: {_safe(event['text'])}{earlier}"
    who = f"{_safe(event['contact'])}: " if event.get("contact") and event["kind"] not in ("connected", "request", "delivered") else ""
    return f"* {who}{_safe(event['text'])}"


def _grouped_lines(events: list[dict]) -> list[str]:
    """One line per event, but a run of receipts from one contact becomes one line."""
    lines: list[str] = []
    run: list[dict] = []

    def close_run():
        if len(run) > 2:
            lines.append(f"* delivered to {_safe(run[0]['contact'])}: {len(run)} messages, "
                         f"the last {_safe(run[-1]['text'].split(': ', 1)[-1])}")
        else:
            lines.extend(_event_line(e) for e in run)
        run.clear()

    for event in events:
        if event["kind"] == "delivered" and (not run or run[0]["contact"] == event["contact"]):
            run.append(event)
            continue
        close_run()
        if event["kind"] == "delivered":
            run.append(event)
        else:
            lines.append(_event_line(event))
    close_run()
    return lines


# --- profile -----------------------------------------------------------------------

profile_app = typer.Typer(help="Create, list, switch and delete profiles.", no_args_is_help=True, rich_markup_mode=None)


@profile_app.command("create")
@command
def profile_create(
    name: Annotated[str, typer.Argument(help="Your local name for the profile (never sent to anyone).")],
    display_name: Annotated[Optional[str], typer.Option("--display-name", help="Shown to accepted contacts (default: NAME).")] = None,
    bio: Annotated[str, typer.Option("--bio", help="Optional text shown to accepted contacts.")] = "",
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Create a profile (the first one also creates your encrypted data store)."""
    result = _invoke("profile.create", {"name": name, "display_name": display_name, "bio": bio}, home)
    _emit(result, f"created profile {result['name']!r} (display name {result['display_name']!r})\n"
                  "next: trust a relay with 'onionpost relay add ADDRESS'", json_out)


@profile_app.command("list")
@command
def profile_list(home: HomeOpt = None, json_out: JsonOpt = False):
    """List profiles; the current one is marked with *."""
    rows = _invoke("profile.list", {}, home)
    text = "\n".join(f"{'*' if r['current'] else ' '} {r['name']}  ({r['display_name']})" for r in rows) or "no profiles"
    _emit(rows, text, json_out)


@profile_app.command("use")
@command
def profile_use(name: Annotated[str, typer.Argument(help="The profile to switch to.")], home: HomeOpt = None,
                json_out: JsonOpt = False):
    """Make NAME the current profile."""
    result = _invoke("profile.use", {"name": name}, home)
    _emit(result, f"now using profile {result['current']!r}", json_out)


@profile_app.command("delete")
@command
def profile_delete(name: Annotated[str, typer.Argument(help="The profile to delete.")], home: HomeOpt = None,
                   json_out: JsonOpt = False):
    """Delete a profile with its contacts and history from this device."""
    result = _invoke("profile.delete", {"name": name}, home)
    _emit(result, f"deleted profile {result['deleted']!r}", json_out)


# --- relay -------------------------------------------------------------------------

relay_app = typer.Typer(help="The relays this profile trusts: its queues live there, its messages leave through them.", no_args_is_help=True, rich_markup_mode=None)


@relay_app.command("add")
@command
def relay_add(
    address: Annotated[str, typer.Argument(help="The relay's address, as 'onionpost node address' prints it.")],
    access_key: Annotated[Optional[str], typer.Option("--access-key", help="The relay's key for creating queues.")] = None,
    family: Annotated[Optional[str], typer.Option("--family", help="A name shared by relays with one operator: your queues are spread across operators, and a family counts as one.")] = None,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Trust a relay (an address printed by 'onionpost node address')."""
    result = _invoke("relay.add", {"address": address, "access_key": access_key, "family": family,
                                   "profile": profile or _options.profile}, home)
    _emit(result, f"added relay {result['address']}" + (f" (family {result['family']})" if result.get("family") else ""), json_out)


@relay_app.command("list")
@command
def relay_list(home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """List the profile's trusted relays."""
    rows = _invoke("relay.list", {"profile": profile or _options.profile}, home)
    text = "\n".join(r["address"] + (f"  (family {r['family']})" if r.get("family") else "")
                     + ("  (access key set)" if r["access_key"] else "") for r in rows) or "no relays"
    _emit(rows, text, json_out)


@relay_app.command("remove")
@command
def relay_remove(address: Annotated[str, typer.Argument(help="The relay's address.")], home: HomeOpt = None,
                 profile: ProfileOpt = None, json_out: JsonOpt = False):
    """Stop trusting a relay."""
    result = _invoke("relay.remove", {"address": address, "profile": profile or _options.profile}, home)
    _emit(result, f"removed relay {result['removed']}", json_out)


# --- conversations ------------------------------------------------------------------------


@command
@network_command
def invite(
    png: Annotated[Optional[Path], typer.Option("--png", help="Also write the QR code to this PNG file.")] = None,
    link_only: Annotated[bool, typer.Option("--link-only", help="Print only the link (recorded as lower assurance).")] = False,
    auto_accept: Annotated[bool, typer.Option("--auto-accept", help="Accept the first request for this invitation automatically.")] = False,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Make a one-time invitation: a link, and a QR code to show on screen."""
    from .qr import qr_png, qr_terminal

    result = _invoke("invite", {"link_only": link_only, "auto_accept": auto_accept, "profile": profile or _options.profile}, home)
    link = result["link"]
    if png is not None:
        qr_png(link, png)
    if json_out or _options.json:
        _emit(result | {"png": str(png) if png else None}, None, True)
        return
    print(link)
    if not link_only:
        print(qr_terminal(link))
        print("Show this QR code to your contact in person if you can; a forwarded link is easier to intercept.")
    if png is not None:
        print(f"QR code written to {png}")
    print("next: they run 'onionpost connect LINK' (or --qr IMAGE); then 'onionpost receive' shows their request")


@command
@network_command
def connect(
    link: Annotated[Optional[str], typer.Argument(help="The invitation link (onionpost:1/...).")] = None,
    qr: Annotated[Optional[Path], typer.Option("--qr", help="Read the invitation from a QR code image instead.")] = None,
    alias: Annotated[Optional[str], typer.Option("--alias", help="Your name for this contact.")] = None,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Answer an invitation: send a connection request."""
    if (link is None) == (qr is None):
        raise UserError("give either an invitation LINK or --qr FILE")
    from .qr import read_qr_image

    via = "qr-image" if qr is not None else "link"
    text = read_qr_image(qr) if qr is not None else link
    result = _invoke("connect", {"link": text, "via": via, "alias": alias, "profile": profile or _options.profile}, home)
    _emit(result, f"request delivered to their relay; {result['contact']} appears once they accept ('onionpost receive')", json_out)


@command
def requests(home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """List connection requests waiting for your answer."""
    rows = _invoke("requests", {"profile": profile or _options.profile}, home)
    text = "\n".join(f"{r['request']}  (invitation shared by {r['via']})" for r in rows) or "no pending requests"
    _emit(rows, text, json_out)


RequestArg = Annotated[int, typer.Argument(help="Request number from 'onionpost requests'.")]
ContactArg = Annotated[str, typer.Argument(help="The contact's name, as 'onionpost contacts' lists it (case does not matter).")]


@command
@network_command
def accept(
    request: RequestArg,
    alias: Annotated[Optional[str], typer.Option("--alias", help="Your name for this contact.")] = None,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Accept a connection request; profiles are exchanged after this."""
    result = _invoke("accept", {"request": request, "alias": alias, "profile": profile or _options.profile}, home)
    _emit(result, f"accepted: {result['contact']}", json_out)


@command
@network_command
def reject(request: RequestArg, home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """Reject a connection request and delete its queue."""
    result = _invoke("reject", {"request": request, "profile": profile or _options.profile}, home)
    _emit(result, f"rejected request {result['rejected']}", json_out)


@command
def contacts(home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """List contacts: state, how the key travelled, verified or not, unread messages."""
    rows = _invoke("contacts", {"profile": profile or _options.profile}, home)
    lines = []
    for r in rows:
        unread = f"  {r['unread']} unread" if r["unread"] else ""
        lines.append(f"{_safe(r['alias']):<20} {r['state']:<10} {r['assurance']}{unread}")
    _emit(rows, "\n".join(lines) or "no contacts", json_out)


@command
@network_command
def send(
    contact: ContactArg,
    text: Annotated[str, typer.Argument(help="The message.")],
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Send a message (kept in the outbox and retried if the relay is unreachable)."""
    row = _invoke("send", {"contact": contact, "text": text, "profile": profile or _options.profile}, home)
    pending = ("queued; the daemon delivers it ('onionpost receive --follow' shows when)" if _options.daemon else
               "queued: the relay could not be reached; your next command (or 'onionpost daemon') retries")
    notes = {"sent": "sent", "delivered": "delivered", "pending": pending}
    _emit(row, f"to {row['contact']}: {notes.get(row['state'], row['state'])}", json_out)


@command
@network_command
def receive(
    wait: Annotated[float, typer.Option("--wait", min=0, help="Keep listening this many seconds after the last news (default: return once everything waiting was fetched).")] = 0.0,
    follow: Annotated[bool, typer.Option("--follow", help="Keep printing events until Ctrl-C (needs the daemon).")] = False,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Show what arrived (fetching and acknowledging it, without a daemon) and send what is pending."""
    as_json = json_out or _options.json
    if follow:
        _follow(home, as_json)
        return
    streamed = []
    receipts: list[dict] = []  # a run of receipts is printed as one line, once something else comes or at the end

    def print_receipts() -> None:
        if receipts:
            print("\n".join(_grouped_lines(receipts)), flush=True)
            receipts.clear()

    def emit(event) -> None:  # one-shot: each event as it happens, so Ctrl-C loses nothing shown
        streamed.append(event.id)
        if as_json:
            return
        data = event.to_json()
        if data["kind"] == "delivered" and (not receipts or receipts[0]["contact"] == data["contact"]):
            receipts.append(data)
            return
        print_receipts()
        if data["kind"] == "delivered":
            receipts.append(data)
        else:
            print(_event_line(data), flush=True)

    try:
        events = _invoke("receive", {"wait": wait, "profile": profile or _options.profile}, home, emit=emit)
    finally:
        print_receipts()
    if as_json:
        _emit(events, None, True)
    elif not streamed:
        print("\n".join(_grouped_lines(events)) or "nothing new")


def _follow(home: Path | None, as_json: bool) -> None:
    client = DaemonClient.connect(_home(home))
    if client is None:
        raise UserError("--follow needs a running daemon for this home (start one with 'onionpost daemon')")
    with client:
        client.call("events.subscribe", {})
        for message in client.notifications():
            event = message["params"]
            print(json.dumps(event, ensure_ascii=False) if as_json else _event_line(event), flush=True)


@command
def history(
    contact: ContactArg,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many recent messages.")] = 50,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Show the conversation with CONTACT."""
    rows = _invoke("history", {"contact": contact, "limit": limit, "profile": profile or _options.profile}, home)
    lines = []
    for r in rows:
        who = "you" if r["direction"] == "out" else _safe(contact)
        state = f"  ({r['state']})" if r["direction"] == "out" else ""
        notice = f"  [{_safe(r['notice'])}]" if r["notice"] else ""
        lines.append(f"#{r['id']} [{_time(r['time'])}] {who}: {_safe(r['text'])}{state}{notice}")
    _emit(rows, "\n".join(lines) or "no messages", json_out)


@command
def verify(
    contact: ContactArg,
    code: Annotated[Optional[str], typer.Option("--code", help="The code your contact reads to you (12 groups of 5 digits).")] = None,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Show the security code for CONTACT, or check the code they read to you."""
    result = _invoke("verify", {"contact": contact, "code": code, "profile": profile or _options.profile}, home)
    if code is None:
        if json_out or _options.json:
            _emit(result, None, True)
            return
        from .e2e import format_code

        print(f"Security code with {result['contact']} (compare it with theirs, in person or on a call):")
        print(format_code(result["code"].replace(" ", ""), 4))
        return
    if json_out or _options.json:
        _emit(result, None, True)
    elif result["verified"]:
        print(f"codes match: {result['contact']} is now verified")
    if not result["verified"]:
        typer.echo(
            f"WARNING: the codes DO NOT MATCH. Someone may be intercepting your conversation with {result['contact']}. "
            "Do not trust it; make a new invitation and exchange it in person.",
            err=True,
        )
        raise typer.Exit(3)


@command
@network_command
def rotate(contact: ContactArg, home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """Move the connection to fresh queues (new ids and keys)."""
    result = _invoke("rotate", {"contact": contact, "profile": profile or _options.profile}, home)
    _emit(result, f"rotation started: {result['contact']} will move to a new queue on {result['relay']}", json_out)


@command
def status(home: HomeOpt = None, json_out: JsonOpt = False):
    """Show the client's state: profiles, relays, contacts, outbox, unread."""
    result = _invoke("status", {}, home)
    lines = [f"{result['home']} ({'daemon running' if result['mode'] == 'daemon' else 'no daemon'}; tor {result['tor']})"]
    for p in result["profiles"]:
        lines.append(f"  {p['name']}: {p['contacts']} contacts, {p['unread']} unread, {p['outbox']} in the outbox, "
                     f"{len(p['relays'])} relays")
    _emit(result, "\n".join(lines), json_out)


contact_app = typer.Typer(help="Delete, cancel or block a contact.", no_args_is_help=True, rich_markup_mode=None)


@contact_app.command("delete")
@command
@network_command
def contact_delete(
    contact: ContactArg,
    delete_history: Annotated[bool, typer.Option("--history", help="Also delete the messages (kept by default).")] = False,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Delete CONTACT: its queues are deleted from the relays; the history stays unless --history."""
    result = _invoke("contact.delete", {"contact": contact, "history": delete_history, "profile": profile or _options.profile}, home)
    _emit(result, f"deleted {result['deleted']} (history {result['history']})", json_out)


@contact_app.command("cancel")
@command
@network_command
def contact_cancel(contact: ContactArg, home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """Withdraw your connection request to CONTACT (one not answered yet)."""
    result = _invoke("contact.cancel", {"contact": contact, "profile": profile or _options.profile}, home)
    _emit(result, f"cancelled the request to {result['cancelled']}", json_out)


@contact_app.command("block")
@command
@network_command
def contact_block(contact: ContactArg, home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """Block CONTACT: your queue for them is deleted and nothing is sent to them; the history stays."""
    result = _invoke("contact.block", {"contact": contact, "profile": profile or _options.profile}, home)
    _emit(result, f"blocked {result['blocked']}", json_out)

# --- the chat screen --------------------------------------------------------------------------


@command
@network_command
def chat(home: HomeOpt = None, profile: ProfileOpt = None):
    """Full-screen chat: contacts, conversations, invitations, requests, security codes.

    It talks to the home's daemon; without one it runs its own until you quit (password asked first).
    """
    path = _home(home)
    client = DaemonClient.connect(path) if path.is_dir() else None
    open_runtime = None
    if client is not None:
        client.close()  # a daemon answers: the chat uses it, no password needed
    else:
        from .runtime import ClientRuntime

        if not (path / "onionpost.db").exists():
            raise UserError(f"no onionpost data in {path}: create a profile first with 'onionpost profile create NAME'")
        check_private(path)
        if is_locked(path):
            raise HomeBusy(path, owner_pid(path))
        settings, timing = _tor_settings(), _timing(daemon=True)
        # Opened here so a wrong password is one line, not a screen; the chat's event loop runs it.
        runtime = ClientRuntime.open(path, _password(path, confirm=False), tor_settings=settings,
                                     isolation=_options.isolation, timing=timing)
        open_runtime = lambda: runtime  # noqa: E731
    from .chat import ChatApp  # Textual only for this command: the others start fast

    ChatApp(path, profile=profile or _options.profile, open_runtime=open_runtime).run()


# --- the daemon -----------------------------------------------------------------------------


@command
@network_command
def daemon(
    home: HomeOpt = None,
    link_spread: Annotated[Optional[float], typer.Option("--link-spread", min=0, help="Seconds over which queue links (re)open, each at its own random time (docs/privacy.md). Default 20.")] = None,
    receipts: Annotated[Optional[str], typer.Option("--receipts", help="Delivery receipts: delay (default: each after its own random delay), next (with your next message) or off.")] = None,
    receipt_delay: Annotated[Optional[float], typer.Option("--receipt-delay", min=0, help="Mean seconds a receipt or other automatic message waits. Default 30 (receipts), 5 (others).")] = None,
    reconnect_jitter: Annotated[Optional[float], typer.Option("--reconnect-jitter", help="Seconds over which dropped links reopen, each at its own random time. Default: --link-spread.")] = None,
    send_delay: Annotated[float, typer.Option("--send-delay", help="Mean seconds of a random (exponential) delay before each message you send leaves. Default 0 (off).")] = 0.0,
    cover_rate: Annotated[float, typer.Option("--cover-rate", help="Cover messages per minute on each contact's queue, indistinguishable on the wire. Default 0 (off).")] = 0.0,
    cover_mode: Annotated[str, typer.Option("--cover-mode", help="Cover schedule: poisson (default) or constant.")] = "poisson",
    batch: Annotated[float, typer.Option("--batch", help="Hold outgoing messages and send them together at the end of each window of this many seconds. Default 0 (off).")] = 0.0,
    link_lifetime: Annotated[Optional[float], typer.Option("--link-lifetime", help="Mean seconds a queue's link stays open before it closes for a gap (or, with --link-gap 0, is replaced). Default 30; 0: until it drops.")] = None,
    link_gap: Annotated[Optional[float], typer.Option("--link-gap", help="Mean seconds a queue's link stays closed between two lifetimes, so a relay cannot see when you are online (docs/privacy.md). Default 20; 0: always connected, lower latency.")] = None,
    send_link_idle: Annotated[Optional[float], typer.Option("--send-link-idle", help="Mean seconds a link used only for sending stays open after a send. Default 15; 0: until the daemon stops.")] = None,
):
    """Keep the client running: stay connected, serve the local API on HOME/daemon.sock (docs/api.md)."""
    from . import api
    from .daemon import Daemon
    from .runtime import ClientRuntime
    from .timing import RECEIPT_MODES

    _options.link_spread = link_spread if link_spread is not None else _options.link_spread
    _options.receipts = receipts or _options.receipts
    _options.receipt_delay = receipt_delay if receipt_delay is not None else _options.receipt_delay
    if _options.receipts is not None and _options.receipts not in RECEIPT_MODES:
        raise UserError(f"--receipts must be one of {', '.join(RECEIPT_MODES)}")
    _options.defences = _defences(reconnect_jitter, send_delay, cover_rate, cover_mode, batch)
    _options.defences.update(_presence(link_lifetime, link_gap, send_link_idle))
    path = _home(home)
    if not (path / "onionpost.db").exists():
        raise UserError(f"no onionpost data in {path}: create a profile first with 'onionpost profile create NAME'")
    check_private(path)
    if is_locked(path):
        raise UserError(f"a daemon (or another onionpost command, pid {owner_pid(path)}) is already using {path}")
    runtime = ClientRuntime.open(path, _password(path, confirm=False), tor_settings=_tor_settings(),
                                 isolation=_options.isolation, timing=_timing(daemon=True))
    server = Daemon(runtime)

    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # 'kill -USR1 PID' prints every thread's stack (for hangs)

    async def main():
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        loop.add_signal_handler(signal.SIGUSR2, _print_tasks)  # 'kill -USR2 PID': every asyncio task's stack
        try:
            await runtime.start_network()
            queues = sum(len(a.inbound_queues()) for a in runtime.agents())

            def ready():
                print(f"onionpost daemon ready: {server.path} ({len(runtime.agents())} profiles, "
                      f"{queues} queues to keep; Ctrl-C stops it)", flush=True)

            await server.run(ready)
        finally:
            await runtime.close(spread_closes=True)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    except api.ApiError as exc:
        _fail(exc)
    print("onionpost daemon stopped", flush=True)


def _defences(reconnect_jitter: float | None, send_delay: float, cover_rate: float, cover_mode: str, batch: float) -> dict:
    """The daemon's defence options as TimingPolicy fields, each checked with the flag's name in the error."""
    from .timing import COVER_MODES, MAX_COVER_RATE

    for flag, value in (("--reconnect-jitter", reconnect_jitter), ("--send-delay", send_delay), ("--batch", batch)):
        if value is not None and not 0 <= value <= 86400:
            raise UserError(f"{flag} must be between 0 and 86400 seconds, not {value:g}")
    if not 0 <= cover_rate <= MAX_COVER_RATE:
        raise UserError(f"--cover-rate must be between 0 and {MAX_COVER_RATE:g} per minute, not {cover_rate:g}")
    if cover_mode not in COVER_MODES:
        raise UserError(f"--cover-mode must be one of {', '.join(COVER_MODES)}, not {cover_mode!r}")
    return {"reconnect_jitter": reconnect_jitter, "send_delay": send_delay, "cover_rate": cover_rate,
            "cover_mode": cover_mode, "batch": batch}


def _presence(link_lifetime: float | None, link_gap: float | None, send_link_idle: float | None) -> dict:
    """The daemon's link schedule options that were given, as TimingPolicy fields, each checked with the
    flag's name in the error."""
    given = {}
    for flag, field, value in (("--link-lifetime", "link_lifetime", link_lifetime), ("--link-gap", "link_gap", link_gap),
                               ("--send-link-idle", "send_link_idle", send_link_idle)):
        if value is not None:
            if not 0 <= value <= 86400:
                raise UserError(f"{flag} must be between 0 and 86400 seconds, not {value:g}")
            given[field] = value
    return given


def _print_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"onionpost {version('onionpost')}")
        raise typer.Exit()


def _root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_show_version, help="Show the version and exit.")] = False,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
    testnet: Annotated[Optional[Path], typer.Option("--testnet", envvar=TESTNET_ENV, help="Use the private Tor network in this folder.")] = None,
    tor_socks: Annotated[Optional[str], typer.Option("--tor-socks", help="A running tor's SOCKS port, [HOST:]PORT.")] = None,
    tor_control: Annotated[Optional[int], typer.Option("--tor-control", help="That tor's control port.")] = None,
    isolation: Annotated[str, typer.Option("--isolation", help="One Tor circuit per: queue, contact or profile.")] = "queue",
    receipt_delay: Annotated[Optional[float], typer.Option("--receipt-delay", envvar="ONIONPOST_RECEIPT_DELAY", min=0, help="Mean seconds receipts and other automatic messages wait (docs/privacy.md).")] = None,
):
    """Private chat over one-directional queues on Tor onion relays.

    The password for your data comes from a prompt or from $ONIONPOST_PASSWORD.
    """
    _options.home, _options.profile, _options.json = home, profile, json_out
    _options.testnet, _options.tor_socks, _options.tor_control, _options.isolation = testnet, tor_socks, tor_control, isolation
    _options.receipt_delay = receipt_delay


def register(app: typer.Typer) -> None:
    app.callback()(_root)
    app.add_typer(profile_app, name="profile")
    app.add_typer(relay_app, name="relay")
    app.add_typer(contact_app, name="contact")
    for func in (invite, connect, requests, accept, reject, contacts, send, receive, history, verify, rotate, status,
                 chat, daemon):
        app.command(func.__name__)(func)
