#!/usr/bin/env python3
"""onionpost benchmark suite: one command, every workload with its baseline in the same run.

    python3 scripts/bench.py --quick          # smoke check, under 3 minutes (no Tor)
    python3 scripts/bench.py                  # full run, under 20 minutes (Tor included)
    python3 scripts/bench.py --quick --tor    # quick, plus the Tor workload
    python3 scripts/bench.py --only relay,crypto
    python3 scripts/bench.py --only defences  # opt-in, ~30 minutes: each defence against the linkage attack

Workloads (bench/ modules): relay (throughput and CPU per message vs a raw
aiohttp relay), stores (the same load on SQLite, PostgreSQL with 1 backend and
with 2: msgs/s, node and database CPU per message, scaling efficiency),
prosody (the same workload through Prosody), scale (memory per
queue, client and subscription; restart time), tor (latency over a private Tor
network), crypto (client-side crypto), daemon (the client daemon: CLI send vs
one-shot, an idle daemon with 50 contacts; its Tor figures only when Tor runs),
defences (opt-in, only with --only: the traffic-correlation defences' AUC
against a relay operator and their cost, docs/privacy.md).
Results go to a JSON file and a
Markdown table (``--out DIR``, default ./bench-results) and the table is
printed at the end. Figures are measurements, never pass/fail: the exit status
is non-zero only when a workload could not run (a bug or a broken setup), with
the reason printed. A workload that cannot run on this machine for an
external reason (e.g. Prosody cannot be installed) is reported as
"skipped: reason" and does not fail the run.

Everything listens on 127.0.0.1 on free ports; every process started is
stopped by its PID.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the workloads in bench/ are not installed; onionpost itself is

from bench import crypto, daemon, defences, prosody, relay, report, scale, stores, tor  # noqa: E402
from bench.common import Result, Skipped  # noqa: E402

WORKLOADS = {"relay": relay, "stores": stores, "prosody": prosody, "scale": scale, "tor": tor, "crypto": crypto,
             "daemon": daemon, "defences": defences}
OPT_IN = ("defences",)
"""Workloads that run only when named with --only (they take long)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke check: smaller sizes, shorter windows, no Tor (under 3 minutes)")
    parser.add_argument("--tor", action="store_true", help="with --quick: include the Tor workload anyway")
    parser.add_argument("--no-tor", action="store_true", help="full run without the Tor workload")
    parser.add_argument("--only", help="comma-separated workloads: " + ",".join(WORKLOADS))
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for results.json and results.md")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, data) and print its path")
    args = parser.parse_args(argv)

    names = [n for n in WORKLOADS if n not in OPT_IN]
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown:
            parser.error(f"unknown workload(s): {', '.join(unknown)}")
    elif (args.quick and not args.tor) or args.no_tor:
        names.remove("tor")
    mode = "quick" if args.quick else "full"
    with_tor = not args.no_tor and (args.tor or not args.quick)  # for workloads with a Tor part (TOR_PART)

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="onionpost-bench-")
    results: list[Result] = []
    started = time.perf_counter()
    try:
        for name in names:
            print(f"[bench] {name} ...", flush=True)
            t0 = time.perf_counter()
            workdir = Path(tmp) / name
            workdir.mkdir()
            try:
                module = WORKLOADS[name]
                extra = {"tor": with_tor} if getattr(module, "TOR_PART", False) else {}
                result = module.run(args.quick, workdir, **extra)
            except Skipped as exc:
                result = Result(name, skipped=str(exc))
            except Exception as exc:  # reported, and the run exits non-zero
                result = Result(name, error=f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
            result.seconds = time.perf_counter() - t0
            status = f"skipped: {result.skipped}" if result.skipped else (f"FAILED: {result.error}" if result.error else "ok")
            print(f"[bench] {name}: {status} ({result.seconds:.0f} s)", flush=True)
            results.append(result)
    finally:
        if args.keep:
            print(f"[bench] logs and data kept in {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    json_path, md_path = args.out / "results.json", args.out / "results.md"
    report.write(results, mode, json_path, md_path)
    print()
    print(report.markdown(results, mode))
    total = time.perf_counter() - started
    print(f"[bench] {mode} run took {total:.0f} s; results in {json_path} and {md_path}")
    failed = [r for r in results if r.error]
    if failed:
        for r in failed:
            print(f"[bench] error: workload {r.name} failed: {r.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
