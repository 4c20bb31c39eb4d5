"""Flows and ground truth of one lab run.

A **flow** is what one vantage point saw of one connection, as packets
``(unix time, signed size)``: positive from the client towards the relay,
negative towards the client. Each capture writes its flows to
``traces/<variant>/run<k>/flows/<vantage>.jsonl``, one JSON object a line:
``{"flow", "vantage", "side": "client"|"relay", "user", "conversation", "packets": [[t, size], ...]}``.

The relay's flows come from its trace: one per session, a block of
``BLOCK_SIZE`` bytes per command the client sent (+) and per message pushed
to it (-). The relay does not log its replies, so they are not in the flow.

The truth (``truth.jsonl``, one record a line, each with ``run`` and ``kind``):
``queue`` (ids, reader, writer, conversation), ``session`` (the relay session,
the user it belongs to and the queues it carried), ``flow`` (a flow's owner)
and ``message`` (sender, recipient, conversation, send and receive times;
``received`` is null for a message that never arrived).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from onionpost.proto import BLOCK_SIZE

READER_COMMANDS = frozenset({"NEW", "KEY", "SUB", "GET", "ACK", "OFF", "DEL"})


def _events(trace: Path) -> list[dict]:
    with open(trace, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _session_owners(events: list[dict], queues: list[dict]) -> dict[int, dict]:
    """Session -> the queues it carried and who that makes its user (reader of a rid, writer of a snd)."""
    by_rid = {q["rid"]: q for q in queues}
    by_snd = {q["snd"]: q for q in queues}
    sessions: dict[int, dict] = {}
    for e in events:
        if e["ev"] in ("open", "close"):
            sessions.setdefault(e["session"], {"queues": set(), "users": set()})[e["ev"]] = e["t"]
        elif e["ev"] == "cmd" and e.get("via") == "direct" and e.get("queue"):
            s = sessions.setdefault(e["session"], {"queues": set(), "users": set()})
            if e["cmd"] == "SEND" and e["queue"] in by_snd:
                q = by_snd[e["queue"]]
                s["queues"].add(q["name"])
                s["users"].add(q["writer"])
            elif e["cmd"] in READER_COMMANDS and e["queue"] in by_rid:
                q = by_rid[e["queue"]]
                s["queues"].add(q["name"])
                s["users"].add(q["reader"])
    return sessions


def relay_traces(run_dir: Path) -> dict[str, Path]:
    """relay0, relay1, ...: the relay traces of one run."""
    return {path.stem: path for path in sorted(run_dir.glob("relay[0-9]*.jsonl"))}


def queues_seen(trace: Path) -> set[str]:
    """Every queue id (rid or snd) a relay trace names."""
    ids = set()
    for e in _events(trace):
        ids.update(e[k] for k in ("rid", "snd", "queue") if e.get(k))
    return ids


def truth_records(run: str, queues_truth: dict, traces: dict[str, Path], result: dict) -> list[dict]:
    """Every truth record of one run (see the module docstring); ``traces`` maps relay names to trace files."""
    queues = queues_truth["queues"]
    conversation = {q["name"]: q["conversation"] for q in queues}
    seen = {relay: queues_seen(trace) for relay, trace in traces.items()}
    records = [{"run": run, "kind": "queue", **{k: q[k] for k in ("name", "rid", "snd", "reader", "writer",
                                                                    "conversation")},
                "relay": next((r for r, ids in seen.items() if q["rid"] in ids or q["snd"] in ids), None)}
               for q in queues]
    for relay, trace in traces.items():
        for session, s in sorted(_session_owners(_events(trace), queues).items()):
            conversations = sorted({conversation[n] for n in s["queues"]})
            user = next(iter(s["users"])) if len(s["users"]) == 1 else None
            records.append({"run": run, "kind": "session", "relay": relay, "session": session, "user": user,
                            "users": sorted(s["users"]), "queues": sorted(s["queues"]),
                            "conversations": conversations, "open": s.get("open"), "close": s.get("close"),
                            "flow": f"{relay}-s{session}"})
    received = {m["text"]: m for m in result.get("messages", [])}
    for text, sent in sorted(result.get("sent_at", {}).items(), key=lambda kv: kv[1]):
        sender, _, rest = text.partition(" to ")
        recipient = rest.split(" at ")[0]
        got = received.get(text)
        records.append({"run": run, "kind": "message", "from": sender, "to": recipient,
                        "conversation": "+".join(sorted((sender, recipient))), "sent": sent,
                        "received": got["received"] if got else None})
    return records


def relay_flows(relay: str, trace: Path, truth: list[dict]) -> list[dict]:
    """One flow per session of this relay, from its trace."""
    owners = {r["session"]: r for r in truth if r["kind"] == "session" and r["relay"] == relay}
    packets: dict[int, list[list[float]]] = {}
    for e in _events(trace):
        if e["ev"] == "cmd" and e.get("via") == "direct":
            packets.setdefault(e["session"], []).append([e["t"], BLOCK_SIZE])
        elif e["ev"] == "msg":
            packets.setdefault(e["session"], []).append([e["t"], -BLOCK_SIZE])
    flows = []
    for session, pk in sorted(packets.items()):
        owner = owners.get(session, {})
        conversations = owner.get("conversations") or []
        flows.append({"flow": f"{relay}-s{session}", "vantage": "relay", "side": "relay", "user": owner.get("user"),
                      "conversation": conversations[0] if len(conversations) == 1 else None,
                      "packets": sorted(pk)})
    return flows


def write_flows(path: Path, flows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for flow in flows:
            fh.write(json.dumps(flow, separators=(",", ":")) + "\n")


def read_flows(run_dir: Path) -> list[dict]:
    """Every flow every capture wrote for one run."""
    flows = []
    for path in sorted((run_dir / "flows").glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            flows += [json.loads(line) for line in fh if line.strip()]
    return flows
