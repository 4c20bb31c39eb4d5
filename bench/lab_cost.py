"""What a simulated lab user costs: run ``onionpost lab run`` and sample its process tree.

    python3 -m bench.lab_cost smoke /tmp/lab-smoke

Every second, the RSS and CPU time of every descendant of the run, split by
kind (a user's daemon, a tor, the relay node, the rest). Prints the wall time,
the peak RSS per user (one daemon and its tor) and CPU seconds per user over
the run, as JSON; docs/lab.md quotes the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(root: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of every process below ``root``."""
    parents = _children()
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == pid]
        found += [(kid, pid) for kid in kids]
        frontier += kids
    return found


def _sample(pid: int) -> tuple[str, int, float] | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = int(fields[21]) * PAGE
        cpu = (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None
    kind = "daemon" if " daemon " in cmd + " " else "tor" if "tor" in cmd.split(" ")[0] else \
        "node" if " node run" in cmd else "other"
    return kind, rss, cpu


def main(scenario: str, out: str) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "onionpost", "lab", "run", scenario, "--out", out])
    start = time.monotonic()
    peak: dict[str, int] = {}
    cpu: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        totals: dict[str, int] = {}
        kinds: dict[int, str] = {}
        for pid, parent in descendants(proc.pid):
            sample = _sample(pid)
            if sample:
                kind, rss, seconds = sample
                if kind == "tor" and kinds.get(parent) == "daemon":
                    kind = "user-tor"  # the network's own tors are the runner's children
                kinds[pid] = kind
                totals[kind] = totals.get(kind, 0) + rss
                cpu[pid] = (kind, seconds)
        for kind, rss in totals.items():
            peak[kind] = max(peak.get(kind, 0), rss)
        time.sleep(1.0)
    wall = time.monotonic() - start
    from onionpost.lab.scenario import load_scenario

    s = load_scenario(scenario)
    users = s.population.users
    runs = len(s.resolved_variants()) * s.repeat
    cpu_by_kind: dict[str, float] = {}
    for kind, seconds in cpu.values():
        cpu_by_kind[kind] = cpu_by_kind.get(kind, 0.0) + seconds
    per_user = ("daemon", "user-tor")
    result = {"scenario": scenario, "exit": proc.returncode, "wall_seconds": round(wall, 1), "users": users,
              "runs": runs, "peak_rss_mib": {k: round(v / 2**20, 1) for k, v in peak.items()},
              "cpu_seconds": {k: round(v, 1) for k, v in cpu_by_kind.items()},
              "peak_rss_mib_per_user": round(sum(peak.get(k, 0) for k in per_user) / users / 2**20, 1),
              "cpu_seconds_per_user_per_run": round(sum(cpu_by_kind.get(k, 0.0) for k in per_user) / users / runs, 1)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
