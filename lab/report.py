"""``report.md`` from ``analysis``'s results: conditions, costs, then one table per variant and attack."""

from __future__ import annotations

from onionpost.lab.scenario import LabScenario


def _num(cell: dict | None, digits: int = 2) -> str:
    if not cell or cell.get("mean") is None:
        return "n/a"
    text = f"{cell['mean']:.{digits}f}"
    return text + (f" ± {cell['sd']:.{digits}f}" if cell.get("sd") is not None else "")


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f} s" if value < 0 else f"{value:.2f} s"


def render(scenario: LabScenario, results: dict, figures: dict[tuple, str]) -> str:
    runs = {v: s["runs"] for v, s in results["summary"].items()}
    conditions = results.get("conditions") or {}
    lines = [f"# Lab report: {scenario.name}", "", scenario.description, "",
             f"Seed {scenario.seed}, {scenario.repeat} run(s) per variant, each on a freshly started "
             f"{'private Tor network' if scenario.network.tor else 'loopback network'}; "
             f"{scenario.population.users} users, {scenario.traffic.duration:g} s of traffic. "
             "Values are mean ± sd over the runs (no sd for one run: a single run is not a sound result).", "",
             "## Network conditions", "",
             f"- added latency: {conditions.get('latency_ms', 0):g} ms, jitter {conditions.get('jitter_ms', 0):g} ms "
             f"(netem: {conditions.get('netem', 'not recorded')})",
             f"- TCP_NODELAY on tor's connections: {conditions.get('tcp_nodelay', 'not recorded')}",
             f"- wall time: {conditions.get('wall_seconds', 'n/a')} s", ""]
    lines += _capture_lines(results.get("runs", []))
    if results.get("skipped_plugins"):
        lines += ["Vantage points not available in this installation:", ""]
        lines += [f"- `{name}`: {why}" for name, why in results["skipped_plugins"].items()] + [""]
    lines += ["## Costs", "",
              "Bytes per real message: blocks through the relay (each command and its reply, each push) "
              "x 16 KiB, over the messages the script sent. Latency: send to receive.", "",
              "| variant | runs | messages | bytes per message | delivery p50 | p95 | added p50 | added p95 |",
              "|---|---|---|---|---|---|---|---|"]
    for variant, s in results["summary"].items():
        c = s["costs"]
        lines.append(f"| {variant} | {s['runs']} | {_num(c['messages_sent'], 0)} | {_num(c['bytes_per_message'], 0)} "
                     f"| {_num(c['delivery_p50'])} s | {_num(c['delivery_p95'])} s "
                     f"| {_seconds(c.get('added_delivery_p50'))} | {_seconds(c.get('added_delivery_p95'))} |")
    lines += ["", "## Attacks", ""]
    for name, attack in results["attacks"].items():
        lines.append(f"- **{name}** (vantage point: {attack['vantage']}): {attack['description']}")
    lines.append("")
    for variant, s in results["summary"].items():
        v = next((x for x in scenario.resolved_variants() if x.name == variant), None)
        setting = (f"isolation {v.client.isolation}; defences: " + ", ".join(
            f"{k}={getattr(v.defences, k):g}" for k in ("send_delay", "cover_rate", "reconnect_jitter", "batch")
        )) if v else "unknown variant"
        lines += [f"### {variant} ({setting}; {runs[variant]} run(s))", ""]
        for attack_name, attack in s["attacks"].items():
            if not attack["signals"]:
                lines += [f"{attack_name}: {'; '.join(sorted(set(attack['missing'])))}", ""]
                continue
            lines += [f"**{attack_name}** ({attack['vantage']})", "",
                      "| signal | question | AUC | TPR at 1 % FPR | TPR at 0.1 % FPR | pairs (pos/neg) |",
                      "|---|---|---|---|---|---|"]
            for signal, questions in attack["signals"].items():
                for question, m in questions.items():
                    lines.append(f"| {signal} | {question} | {_num(m['auc'])} | {_num(m['tpr_at_1pct_fpr'])} "
                                 f"| {_num(m['tpr_at_0.1pct_fpr'])} | {m['positive']}/{m['negative']} |")
            lines.append("")
            for question in sorted({q for qs in attack["signals"].values() for q in qs}):
                figure = figures.get((variant, attack_name, question))
                if figure:
                    lines.append(f"![{attack_name} {question} {variant}](roc/{figure})")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _capture_lines(runs: list[dict]) -> list[str]:
    """What each run's captures recorded: which source a vantage point used, and what failed."""
    rows = []
    for run in runs:
        for name, note in sorted((run.get("capture_notes") or {}).items()):
            if not note.get("captured"):
                what = note.get("note", "nothing captured")
            else:
                what = f"source: {note.get('source') or 'unknown'}"
                if note.get("flows") is not None:
                    what += f", {note['flows']} flows"
                if note.get("fallback_reasons"):
                    what += f" (fallback because: {'; '.join(note['fallback_reasons'])})"
            if note.get("failed"):
                what += "; failed for " + ", ".join(f"{who} ({why})" for who, why in sorted(note["failed"].items()))
            rows.append(f"| {run['variant']} | {run['run']} | {name} | {what} |")
    if not rows:
        return []
    return ["## Vantage points captured", "", "| variant | run | capture | what it recorded |", "|---|---|---|---|",
            *rows, ""]
