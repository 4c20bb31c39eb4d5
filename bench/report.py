"""Results: one JSON file and one Markdown table, from the workloads' ``Result``s."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from .common import Result


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 0.1:
        return f"{value:.2f}"
    if a == 0:
        return "0"
    return f"{value:.3g}"


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def markdown(results: list[Result], mode: str) -> str:
    m = machine()
    lines = [
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, mode `{mode}`, {m['cores']} cores ({m['cpu']}), Python {m['python']}.",
        "",
        "| workload | metric | onionpost | baseline | baseline is | unit | ratio | target | met | note |",
        "|---|---|---:|---:|---|---|---:|---|---|---|",
    ]
    for result in results:
        if result.skipped:
            lines.append(f"| {result.name} | – | skipped: {result.skipped} | | | | | | | |")
            continue
        if result.error:
            lines.append(f"| {result.name} | – | FAILED: {result.error} | | | | | | | |")
            continue
        for row in result.rows:
            met = "" if row.met is None else ("yes" if row.met else "**no**")
            r = f"{row.ratio:.2f}×" if row.ratio is not None else "–"
            lines.append(
                f"| {row.workload} | {row.metric} | {fmt(row.ours)} | {fmt(row.baseline)} | {row.baseline_name} | {row.unit} | {r} | {row.target} | {met} | {row.note.replace('|', '/')} |"
            )
    return "\n".join(lines) + "\n"


def write(results: list[Result], mode: str, json_path: Path, md_path: Path) -> None:
    data = {
        "mode": mode,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "workloads": {
            r.name: {
                "seconds": round(r.seconds, 1),
                "skipped": r.skipped,
                "error": r.error,
                "rows": [row.as_dict() for row in r.rows],
                "details": _strip(r.details),
            }
            for r in results
        },
    }
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    md_path.write_text(markdown(results, mode))


def _strip(obj):
    """Drop raw latency samples from the JSON (they are summarised)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k != "latencies"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj
