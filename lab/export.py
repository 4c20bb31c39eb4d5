"""``onionpost lab export DIR --format espresso|deepcoffea|jsonl``: the captured flows for published attacks.

ESPRESSO and DeepCoFFEA read two folders of per-flow text files, ``inflow/``
(the client side: the "guard" capture's guard-link flows, ``flows/guard.jsonl``)
and ``outflow/`` (the far side: here the relay's sessions), one line per packet,
``timestamp<TAB>signed size`` (written by ``flowexport.write_flow_file``); a
flow and its match have the same file name. The lab pairs them per user and
run: ``<variant>_run<k>_<user>`` holds everything that user's side sent and
received (all their sessions merged, time order). Timestamps are seconds
since the run's observed start, sizes are bytes, positive from the client.
``index.json`` says which file is which run and user and where time 0 is.
A user with no capture on one side has no file on that side (the index
says how many pairs are complete).

``jsonl`` writes one JSON object per packet: run, flow, vantage, side, user,
conversation, t (unix seconds) and size.
"""

from __future__ import annotations

import json
from pathlib import Path

from onionpost.lab.flowexport import read_pair_file, write_flow_file
from onionpost.lab.flows import read_flows

FORMATS = ("espresso", "deepcoffea", "jsonl")
SIDES = {"client": "inflow", "relay": "outflow"}


class ExportError(RuntimeError):
    pass


def _runs(out: Path) -> list[Path]:
    runs = sorted(p.parent for p in (out / "traces").glob("*/run*/run.json"))
    if not runs:
        raise ExportError(f"{out} holds no captured run (traces/<variant>/run<k>/run.json)")
    return runs


def export(out: Path, fmt: str, dest: Path | None = None) -> Path:
    """Write DIR/export/<format>/ (or ``dest``); returns the folder."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    runs = _runs(out)
    dest = dest or out / "export" / fmt
    if dest.exists() and any(dest.iterdir()):
        raise ExportError(f"{dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with open(dest / "packets.jsonl", "w", encoding="utf-8") as fh:
            for run_dir in runs:
                run = f"{run_dir.parent.name}/{run_dir.name}"
                for flow in read_flows(run_dir):
                    meta = {k: flow.get(k) for k in ("flow", "vantage", "side", "user", "conversation")}
                    for t, size in flow["packets"]:
                        fh.write(json.dumps({"run": run, **meta, "t": t, "size": size}, separators=(",", ":")) + "\n")
        return dest
    for side in SIDES.values():
        (dest / side).mkdir()
    index = {"format": fmt, "time_unit": "seconds since origin", "size_sign": "+ from the client, - to it",
             "flows": {}}
    for run_dir in runs:
        origin = json.loads((run_dir / "run.json").read_text())["observed_from"]
        merged: dict[tuple[str, str], list] = {}
        for flow in read_flows(run_dir):
            if flow.get("user") and flow.get("side") in SIDES:
                merged.setdefault((flow["user"], SIDES[flow["side"]]), []).extend(flow["packets"])
        for (user, side), packets in sorted(merged.items()):
            name = f"{run_dir.parent.name}_{run_dir.name}_{user}"
            rows = sorted(packets)
            write_flow_file(dest / side / name, [t for t, _ in rows], [s for _, s in rows], origin)
            entry = index["flows"].setdefault(name, {"run": f"{run_dir.parent.name}/{run_dir.name}", "user": user,
                                                     "origin": origin, "sides": []})
            entry["sides"].append(side)
    index["pairs"] = sum(len(e["sides"]) == 2 for e in index["flows"].values())
    (dest / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return dest


def read_layout(folder: Path) -> dict[str, dict[str, list[tuple[float, int]]]]:
    """An inflow/outflow export read back: {name: {"inflow"|"outflow": [(t, size), ...]}}."""
    flows: dict[str, dict[str, list[tuple[float, int]]]] = {}
    for side in SIDES.values():
        for path in sorted((folder / side).iterdir()):
            t, size = read_pair_file(path)
            flows.setdefault(path.name, {})[side] = list(zip(t.tolist(), size.tolist()))
    return flows
