"""The client's commands: profiles, relays, invitations, contacts, messages.

``register(app)`` adds them to the ``onionpost`` command. Every command takes
``--home``, ``--profile`` and ``--json`` (before or after the command name).
User mistakes print one line on stderr and exit non-zero; nothing here prints
a traceback for them.
"""

import asyncio
import functools
import getpass
import inspect
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import platformdirs
import typer

from onionpost.proto import parse_node_address

from . import e2e
from .agent import Agent, AgentError
from .db import Database, DatabaseError, NoDatabaseError, open_database
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
from .qr import QRReadError, qr_png, qr_terminal, read_qr_image
from .tor import ISOLATION_MODES, ClientTor, TorSettings, parse_host_port

HOME_ENV = "ONIONPOST_HOME"
PASSWORD_ENV = "ONIONPOST_PASSWORD"
TESTNET_ENV = "ONIONPOST_TESTNET"

HomeOpt = Annotated[Optional[Path], typer.Option("--home", help=f"Data directory (env {HOME_ENV}).", show_default=False)]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="Profile to act as (default: the current one).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


class Options:
    """Global options, from the root callback and from each command (the command wins)."""

    home: Path | None = None
    profile: str | None = None
    json: bool = False
    testnet: Path | None = None
    tor_socks: str | None = None
    tor_control: int | None = None
    isolation: str = "queue"


_options = Options()


class UserError(Exception):
    pass


def _home(home: Path | None) -> Path:
    chosen = home or _options.home or os.environ.get(HOME_ENV)
    return Path(chosen) if chosen else Path(platformdirs.user_data_dir("onionpost"))


def _password(*, confirm: bool) -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password:
        return password
    if not sys.stdin.isatty():
        raise UserError(f"no password: set {PASSWORD_ENV} or run in a terminal")
    password = getpass.getpass("Password for your onionpost data: ")
    if confirm and getpass.getpass("Same password again: ") != password:
        raise UserError("the two passwords differ")
    return password


def _open(home: Path | None, *, create: bool = False) -> Database:
    path = _home(home)
    try:
        return open_database(path, _password(confirm=create and not (path / "onionpost.db").exists()), create=create)
    except NoDatabaseError:
        raise UserError(f"no onionpost data in {path}: create a profile first with 'onionpost profile create NAME'") from None


def _emit(data, text: str | None, json_out: bool) -> None:
    if json_out or _options.json:
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    elif text:
        print(text)


def command(func):
    """Turn user errors into one line on stderr and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (UserError, AgentError, ProfileError, DatabaseError, InvitationError, QRReadError, e2e.E2EError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


_NETWORK_PARAMETERS = [
    inspect.Parameter(
        "testnet", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Optional[Path], typer.Option("--testnet", envvar=TESTNET_ENV, help="Use the private Tor network in this directory ('onionpost testnet up').")],
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
        annotation=Annotated[Optional[str], typer.Option("--isolation", help="One Tor circuit per: queue (default), contact, or profile.")],
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


def _tor_settings() -> TorSettings:
    if _options.isolation not in ISOLATION_MODES:
        raise UserError(f"--isolation must be one of {', '.join(ISOLATION_MODES)}")
    socks = parse_host_port(_options.tor_socks, "--tor-socks") if _options.tor_socks else None
    if _options.testnet is not None and not (Path(_options.testnet) / "network.json").exists():
        raise UserError(f"no private Tor network in {_options.testnet}: start one with 'onionpost testnet up --dir DIR'")
    return TorSettings(socks=socks, control=_options.tor_control, testnet=_options.testnet)


def _run_agent(home, profile_name, action, *, network: bool = True):
    """Open the store, build an agent for the profile, run ``action(agent)``, close everything.

    Tor is started (or attached to) only when one of the profile's relays is an onion service.
    """
    db = _open(home)
    tor = None
    try:
        profile = get_profile(db, profile_name or _options.profile)
        settings = _tor_settings()
        needs_tor = network and any(parse_node_address(r.address).is_onion for r in list_relays(db, profile))

        async def main():
            nonlocal tor
            connector = None
            if needs_tor:
                tor = ClientTor(_home(home), settings)
                try:
                    connector = await tor.start()
                except RuntimeError as exc:
                    raise UserError(str(exc)) from None
            agent = Agent(db, profile, connector=connector, isolation=_options.isolation)
            try:
                return await action(agent), agent
            finally:
                await agent.close()

        return asyncio.run(main())
    finally:
        if tor is not None:
            tor.stop()
        db.close()


def _time(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else ""


def _event_line(event) -> str:
    if event.kind == "message":
        return f"[{_time(event.data.get('time'))}] {event.contact}: {event.text}"
    who = f"{event.contact}: " if event.contact and event.kind not in ("connected", "request") else ""
    return f"* {who}{event.text}"


def _events_json(events) -> list[dict]:
    return [{"kind": e.kind, "contact": e.contact, "text": e.text, **e.data} for e in events]


# --- profile -----------------------------------------------------------------------

profile_app = typer.Typer(help="Create, list, switch and delete profiles.", no_args_is_help=True)


@profile_app.command("create")
@command
def profile_create(
    name: str,
    display_name: Annotated[Optional[str], typer.Option("--display-name", help="Shown to accepted contacts (default: NAME).")] = None,
    bio: Annotated[str, typer.Option("--bio", help="Optional text shown to accepted contacts.")] = "",
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """Create a profile (the first one also creates your encrypted data store)."""
    db = _open(home, create=True)
    try:
        profile = create_profile(db, name, display_name, bio)
    finally:
        db.close()
    _emit({"name": profile.name, "display_name": profile.display_name, "bio": profile.bio},
          f"created profile {profile.name!r} (display name {profile.display_name!r})", json_out)


@profile_app.command("list")
@command
def profile_list(home: HomeOpt = None, json_out: JsonOpt = False):
    """List profiles; the current one is marked with *."""
    db = _open(home)
    try:
        profiles = list_profiles(db)
        current = get_profile(db).id if profiles else None
    finally:
        db.close()
    rows = [{"name": p.name, "display_name": p.display_name, "current": p.id == current} for p in profiles]
    text = "\n".join(f"{'*' if r['current'] else ' '} {r['name']}  ({r['display_name']})" for r in rows) or "no profiles"
    _emit(rows, text, json_out)


@profile_app.command("use")
@command
def profile_use(name: str, home: HomeOpt = None, json_out: JsonOpt = False):
    """Make NAME the current profile."""
    db = _open(home)
    try:
        profile = use_profile(db, name)
    finally:
        db.close()
    _emit({"current": profile.name}, f"now using profile {profile.name!r}", json_out)


@profile_app.command("delete")
@command
def profile_delete(name: str, home: HomeOpt = None, json_out: JsonOpt = False):
    """Delete a profile with its contacts and history from this device."""
    db = _open(home)
    try:
        profile = delete_profile(db, name)
    finally:
        db.close()
    _emit({"deleted": profile.name}, f"deleted profile {profile.name!r}", json_out)


# --- relay -------------------------------------------------------------------------

relay_app = typer.Typer(help="The relays this profile trusts: its queues live there, its messages leave through them.", no_args_is_help=True)


@relay_app.command("add")
@command
def relay_add(
    address: str,
    access_key: Annotated[Optional[str], typer.Option("--access-key", help="The relay's key for creating queues.")] = None,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Trust a relay (an address printed by 'onionpost node address')."""
    db = _open(home)
    try:
        owner = get_profile(db, profile or _options.profile)
        relay = add_relay(db, owner, address, access_key)
    finally:
        db.close()
    _emit({"address": relay.address, "access_key": bool(relay.access_key)}, f"added relay {relay.address}", json_out)


@relay_app.command("list")
@command
def relay_list(home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """List the profile's trusted relays."""
    db = _open(home)
    try:
        relays = list_relays(db, get_profile(db, profile or _options.profile))
    finally:
        db.close()
    rows = [{"address": r.address, "access_key": bool(r.access_key)} for r in relays]
    text = "\n".join(r["address"] + ("  (access key set)" if r["access_key"] else "") for r in rows) or "no relays"
    _emit(rows, text, json_out)


@relay_app.command("remove")
@command
def relay_remove(address: str, home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """Stop trusting a relay."""
    db = _open(home)
    try:
        relay = remove_relay(db, get_profile(db, profile or _options.profile), address)
    finally:
        db.close()
    _emit({"removed": relay.address}, f"removed relay {relay.address}", json_out)


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
    (invitation_id, link), _ = _run_agent(
        home, profile, lambda agent: agent.invite(auto_accept=auto_accept, shared_as="link" if link_only else "qr")
    )
    if png is not None:
        qr_png(link, png)
    if json_out or _options.json:
        _emit({"invitation": invitation_id, "link": link, "png": str(png) if png else None}, None, True)
        return
    print(link)
    if not link_only:
        print(qr_terminal(link))
        print("Show this QR code to your contact in person if you can; a forwarded link is easier to intercept.")


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
    via = "qr-image" if qr is not None else "link"
    text = read_qr_image(qr) if qr is not None else link
    contact, agent = _run_agent(home, profile, lambda agent: agent.connect(text, via=via, alias=alias))
    _emit(
        {"contact": contact.alias, "state": contact.state, "via": via},
        f"request sent; {contact.alias} appears once they accept ('onionpost receive')",
        json_out,
    )


@command
def requests(home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """List connection requests waiting for your answer."""
    pending, _ = _run_agent(home, profile, _async(lambda agent: agent.requests()), network=False)
    rows = [{"request": c.id, "via": c.assurance} for c in pending]
    text = "\n".join(f"{r['request']}  (invitation shared by {r['via']})" for r in rows) or "no pending requests"
    _emit(rows, text, json_out)


@command
@network_command
def accept(
    request: Annotated[int, typer.Argument(help="Request number from 'onionpost requests'.")],
    alias: Annotated[Optional[str], typer.Option("--alias", help="Your name for this contact.")] = None,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Accept a connection request; profiles are exchanged after this."""
    contact, _ = _run_agent(home, profile, lambda agent: agent.accept(request, alias=alias))
    _emit({"contact": contact.alias, "state": contact.state}, f"accepted: {contact.alias}", json_out)


@command
@network_command
def reject(
    request: Annotated[int, typer.Argument(help="Request number from 'onionpost requests'.")],
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Reject a connection request and delete its queue."""
    _run_agent(home, profile, lambda agent: agent.reject(request))
    _emit({"rejected": request}, f"rejected request {request}", json_out)


@command
def contacts(home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """List contacts: state, how the key travelled, verified or not."""
    found, _ = _run_agent(home, profile, _async(lambda agent: agent.contacts()), network=False)
    rows = [
        {"alias": c.alias, "display_name": c.display_name, "state": c.state, "key_via": c.provenance,
         "assurance": c.assurance, "verified": c.verified}
        for c in found
    ]
    text = "\n".join(f"{r['alias']:<20} {r['state']:<10} {r['assurance']}" for r in rows) or "no contacts"
    _emit(rows, text, json_out)


@command
@network_command
def send(
    contact: str,
    text: str,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Send a message (kept pending and retried if the relay is unreachable)."""
    row, _ = _run_agent(home, profile, lambda agent: agent.send(contact, text))
    note = "sent" if row["state"] == "sent" else "pending: will be retried by 'onionpost receive' or the next send"
    _emit(row, f"to {contact}: {note}", json_out)


@command
@network_command
def receive(
    wait: Annotated[float, typer.Option("--wait", min=0, help="Return after this many seconds without news.")] = 5.0,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Fetch and store what arrived, acknowledge it, send what is pending."""
    events, _ = _run_agent(home, profile, lambda agent: agent.receive(wait))
    _emit(_events_json(events), "\n".join(_event_line(e) for e in events) or "nothing new", json_out)


@command
def history(
    contact: str,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many recent messages.")] = 50,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Show the conversation with CONTACT."""
    rows, _ = _run_agent(home, profile, _async(lambda agent: agent.history(contact, limit)), network=False)
    lines = []
    for r in rows:
        who = "you" if r["direction"] == "out" else contact
        state = f"  ({r['state']})" if r["direction"] == "out" else ""
        notice = f"  [{r['notice']}]" if r["notice"] else ""
        lines.append(f"[{_time(r['time'])}] {who}: {r['text']}{state}{notice}")
    _emit(rows, "\n".join(lines) or "no messages", json_out)


@command
def verify(
    contact: str,
    code: Annotated[Optional[str], typer.Option("--code", help="The code your contact reads to you.")] = None,
    home: HomeOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
):
    """Show the security code for CONTACT, or check the code they read to you."""
    if code is None:
        security_code, _ = _run_agent(home, profile, _async(lambda agent: agent.security_code(contact)), network=False)
        if json_out or _options.json:
            _emit({"contact": contact, "code": security_code}, None, True)
            return
        print(f"Security code with {contact} (compare it with theirs, in person or on a call):")
        print(e2e.format_code(security_code.replace(" ", ""), 4))
        print(qr_terminal(security_code))
        return
    matched, _ = _run_agent(home, profile, _async(lambda agent: agent.verify(contact, code)), network=False)
    if json_out or _options.json:
        _emit({"contact": contact, "verified": matched}, None, True)
    elif matched:
        print(f"codes match: {contact} is now verified")
    if not matched:
        typer.echo(
            f"WARNING: the codes DO NOT MATCH. Someone may be intercepting your conversation with {contact}. "
            "Do not trust it; make a new invitation and exchange it in person.",
            err=True,
        )
        raise typer.Exit(3)


@command
@network_command
def rotate(contact: str, home: HomeOpt = None, profile: ProfileOpt = None, json_out: JsonOpt = False):
    """Move the connection to fresh queues (new ids and keys)."""
    relay, _ = _run_agent(home, profile, lambda agent: agent.rotate(contact))
    _emit({"contact": contact, "relay": relay}, f"rotation started: {contact} will move to a new queue on {relay}", json_out)


def _async(func):
    async def run(agent):
        return func(agent)

    return run


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
    testnet: Annotated[Optional[Path], typer.Option("--testnet", envvar=TESTNET_ENV, help="Use the private Tor network in this directory.")] = None,
    tor_socks: Annotated[Optional[str], typer.Option("--tor-socks", help="A running tor's SOCKS port, [HOST:]PORT.")] = None,
    tor_control: Annotated[Optional[int], typer.Option("--tor-control", help="That tor's control port.")] = None,
    isolation: Annotated[str, typer.Option("--isolation", help="One Tor circuit per: queue, contact or profile.")] = "queue",
):
    """Private chat over one-directional queues on Tor onion relays."""
    _options.home, _options.profile, _options.json = home, profile, json_out
    _options.testnet, _options.tor_socks, _options.tor_control, _options.isolation = testnet, tor_socks, tor_control, isolation


def register(app: typer.Typer) -> None:
    app.callback()(_root)
    app.add_typer(profile_app, name="profile")
    app.add_typer(relay_app, name="relay")
    for func in (invite, connect, requests, accept, reject, contacts, send, receive, history, verify, rotate):
        app.command(func.__name__)(func)
