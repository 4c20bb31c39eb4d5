"""What ``onionpost chat`` writes on screen: contacts, messages, states and security codes.

Pure functions from the API's JSON (docs/api.md) to Rich ``Text``. Everything a
contact or a relay chose (a name, a message) goes through ``printable`` and is
never parsed as markup, so a message cannot restyle or clear the screen.
"""

from __future__ import annotations

from datetime import datetime

from rich.text import Text

from .e2e import format_code

STATE_ORDER = ("pending", "sent", "delivered")
"""An outgoing message's delivery states, in the order they happen."""

STATE_MARKS = {"pending": "… pending", "sent": "✓ sent", "delivered": "✓✓ delivered"}

KEY_VIA = {
    "qr-screen": "QR code shown on screen",
    "qr-image": "QR code read from an image",
    "link": "link (lower assurance)",
}
"""How a contact's key travelled (the API's ``key_via``)."""

KEY_VIA_SHORT = {"qr-screen": "QR on screen", "qr-image": "QR image", "link": "link"}

CODE_DIGITS = 60
_CODE_SEPARATORS = str.maketrans("", "", " \t\r\n-._")


def printable(text: str) -> str:
    """``text`` with control characters (escape sequences, carriage returns, ...) shown as U+FFFD."""
    return "".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in str(text))


def later_state(old: str | None, new: str | None) -> str | None:
    """The further along of two delivery states: events and answers may arrive in any order."""
    rank = {state: i for i, state in enumerate(STATE_ORDER)}
    if old not in rank:
        return new
    if new not in rank:
        return old
    return new if rank[new] > rank[old] else old


def clock(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M") if ts else "--:--"


def contact_label(contact: dict) -> Text:
    """Two lines for the contact list: the name with its unread count, then its key and state."""
    label = Text(printable(contact["alias"]), style="bold" if contact.get("unread") else "")
    if contact.get("unread"):
        label.append(f"  {contact['unread']} unread", style="bold reverse")
    label.append("\n")
    if contact.get("verified"):
        label.append("  ✓ verified", style="green")
    else:
        label.append(f"  key: {KEY_VIA_SHORT.get(contact.get('key_via'), contact.get('key_via') or '?')}", style="dim")
    if contact.get("state") != "connected":
        label.append(f" · {contact.get('state')}", style="yellow")
    return label


def contact_title(contact: dict) -> Text:
    """The conversation's heading: who, their state, how the key travelled, verified or not."""
    title = Text(printable(contact["alias"]), style="bold")
    display = contact.get("display_name")
    if display and display != contact["alias"]:
        title.append(f" ({printable(display)})")
    title.append(f" · {contact.get('state')}", style="" if contact.get("state") == "connected" else "yellow")
    title.append("\n")
    title.append(f"key: {KEY_VIA.get(contact.get('key_via'), contact.get('key_via') or '?')} · ", style="dim")
    if contact.get("verified"):
        title.append("✓ verified", style="green")
    else:
        title.append("not verified (ctrl+s)", style="yellow")
    return title


def message_line(row: dict, contact: str) -> Text:
    """One message: time, who, text, and for ours its delivery state."""
    ours = row.get("direction") == "out"
    line = Text(f"{clock(row.get('time'))} ", style="dim")
    line.append("you" if ours else printable(contact), style="bold cyan" if ours else "bold magenta")
    line.append(": ")
    line.append(printable(row.get("text", "")))
    if ours:
        state = row.get("state") or "pending"
        line.append(f"  {STATE_MARKS.get(state, state)}", style="green" if state == "delivered" else "dim")
    if row.get("notice"):
        line.append(f"  [{printable(row['notice'])}]", style="yellow")
    return line


def code_lines(code: str) -> str:
    """The security code as 3 lines of 4 groups of 5 digits (as the CLI shows it)."""
    return format_code(code.replace(" ", ""), 4)


def code_problem(typed: str) -> str | None:
    """Why a typed security code is not a complete code, or None if it is one (60 digits)."""
    digits = typed.translate(_CODE_SEPARATORS)
    if not digits:
        return "Type the code your contact reads to you."
    if not (digits.isascii() and digits.isdigit()):
        return "That is not a complete code: a code has only digits (spaces and dashes do not matter)."
    if len(digits) != CODE_DIGITS:
        return f"That is not a complete code: it has {len(digits)} digits, a code has {CODE_DIGITS}."
    return None


def relay_host(address: str) -> str:
    """``onionpost://KEY@HOST:PORT`` -> ``HOST:PORT`` (the key is too long to show)."""
    return address.rsplit("@", 1)[-1]
