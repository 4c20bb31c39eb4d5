"""``onionpost lab report DIR``: attacks over the captured runs, ``results.json``, ``report.md`` and ROC PNGs.

Every registered attack (``registry.ATTACKS``) scores every run under
``traces/``; an attack whose vantage point was not captured in a run is listed
as such. Per variant, attack, signal and question: AUC and TPR at 1 % and
0.1 % FPR as the mean and sample sd over the repeats (sd is null for one
run), and one ROC curve per signal over the repeats' pooled pairs. Each
variant's costs sit beside it: blocks through the relay per real message
sent, and delivery latency p50/p95 with what it adds to the scenario's first variant.
"""

from __future__ import annotations

import json
import statistics
import tomllib
from pathlib import Path

import numpy as np

from onionpost.lab import registry
from onionpost.lab.flows import relay_traces
from onionpost.lab.scenario import parse_scenario
from onionpost.proto import BLOCK_SIZE

FPR_KEYS = ("tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")


class ReportError(RuntimeError):
    """A DIR that holds no lab run."""


def _runs(out: Path) -> list[Path]:
    return sorted(p.parent for p in (out / "traces").glob("*/run*/run.json"))


def _mean_sd(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def run_costs(run_dir: Path) -> dict:
    """Blocks through the relay per real message, and the delivery latency, of one run."""
    run = json.loads((run_dir / "run.json").read_text())
    blocks = 0
    for path in relay_traces(run_dir).values():
        with open(path, encoding="utf-8") as trace:
            for event in map(json.loads, filter(str.strip, trace)):
                if run["observed_from"] <= event["t"] <= run["observed_until"] and event.get("via") != "forward":
                    # A command costs its block and the relay's reply; a push, one block.
                    blocks += 2 if event["ev"] == "cmd" else 1 if event["ev"] == "msg" else 0
    sent = run.get("messages_sent") or 0
    delivery = run.get("latency", {}).get("delivery", {})
    return {"messages_sent": sent, "relay_bytes": blocks * BLOCK_SIZE,
            "bytes_per_message": blocks * BLOCK_SIZE / sent if sent else None,
            "delivery_p50": delivery.get("p50"), "delivery_p95": delivery.get("p95")}


def analyse(out: Path) -> dict:
    """Rerun every attack on DIR's captured runs; write results.json, report.md and roc/*.png."""
    from onionpost.lab import linkage

    if not (out / "scenario.toml").is_file():
        raise ReportError(f"{out} holds no lab run (no scenario.toml)")
    scenario = parse_scenario(tomllib.loads((out / "scenario.toml").read_text()), origin=str(out / "scenario.toml"))
    runs = _runs(out)
    if not runs:
        raise ReportError(f"{out} holds no captured run (traces/<variant>/run<k>/run.json)")
    registry.load_plugins()
    variants = {v.name: v for v in scenario.resolved_variants()}
    # The scenario's order, so costs are "added" to its first variant (the defaults), not to the first name.
    order = {name: k for k, name in enumerate(variants)}
    runs = sorted(runs, key=lambda d: order.get(d.parent.name, len(order)))
    per_run: list[dict] = []
    pooled: dict[tuple, list] = {}
    for run_dir in runs:
        variant, repeat = run_dir.parent.name, run_dir.name
        entry = {"variant": variant, "run": repeat, "costs": run_costs(run_dir), "attacks": {},
                 "capture_notes": json.loads((run_dir / "run.json").read_text()).get("capture_notes", {})}
        for attack in registry.ATTACKS.values():
            try:
                scores = attack.score(run_dir)
            except FileNotFoundError as exc:
                entry["attacks"][attack.name] = {"vantage": attack.vantage, "missing": f"not captured ({exc.filename})"}
                continue
            metrics = {}
            for signal, questions in scores.items():
                metrics[signal] = {}
                for question, (labels, s) in questions.items():
                    metrics[signal][question] = linkage.roc_metrics(labels, s)
                    pooled.setdefault((variant, attack.name, question, signal), []).append((labels, s))
            entry["attacks"][attack.name] = {"vantage": attack.vantage, "signals": metrics}
        per_run.append(entry)
    summary = _summarise(per_run)
    results = {"scenario": scenario.name, "variants": list(variants), "runs": per_run, "summary": summary,
               "conditions": _read_json(out / "conditions.json"), "skipped_plugins": dict(registry.SKIPPED),
               "attacks": {a.name: {"vantage": a.vantage, "description": a.description}
                           for a in registry.ATTACKS.values()}}
    (out / "roc").mkdir(exist_ok=True)
    figures = _draw(out / "roc", pooled)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    from onionpost.lab.report import render

    (out / "report.md").write_text(render(scenario, results, figures), encoding="utf-8")
    return results


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _summarise(per_run: list[dict]) -> dict:
    by_variant: dict[str, list[dict]] = {}
    for entry in per_run:
        by_variant.setdefault(entry["variant"], []).append(entry)
    summary = {}
    first = next(iter(by_variant), None)
    for variant, entries in by_variant.items():
        costs = {key: _mean_sd([e["costs"][key] for e in entries])
                 for key in ("bytes_per_message", "delivery_p50", "delivery_p95", "messages_sent")}
        attacks: dict = {}
        for entry in entries:
            for name, result in entry["attacks"].items():
                slot = attacks.setdefault(name, {"vantage": result["vantage"], "signals": {}, "missing": []})
                if "missing" in result:
                    slot["missing"].append(result["missing"])
                    continue
                for signal, questions in result["signals"].items():
                    for question, m in questions.items():
                        cell = slot["signals"].setdefault(signal, {}).setdefault(question, {"runs": []})
                        cell["runs"].append(m)
        for slot in attacks.values():
            for questions in slot["signals"].values():
                for cell in questions.values():
                    ms = cell.pop("runs")
                    for key in ("auc", *FPR_KEYS):
                        cell[key] = _mean_sd([m[key] for m in ms])
                    cell["positive"], cell["negative"] = ms[0]["positive"], ms[0]["negative"]
        summary[variant] = {"runs": len(entries), "costs": costs, "attacks": attacks}
    if first is not None:
        base = summary[first]["costs"]
        for variant in summary.values():
            for key in ("delivery_p50", "delivery_p95"):
                here, there = variant["costs"][key]["mean"], base[key]["mean"]
                variant["costs"][f"added_{key}"] = None if here is None or there is None else here - there
    return summary


def _draw(folder: Path, pooled: dict[tuple, list]) -> dict[tuple, str]:
    """One PNG per (variant, attack, question), a curve per signal; returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from sklearn.metrics import roc_curve

    groups: dict[tuple, dict] = {}
    for (variant, attack, question, signal), parts in pooled.items():
        labels = np.concatenate([np.asarray(lab, dtype=bool) for lab, _ in parts])
        scores = np.concatenate([np.asarray(s, dtype=float) for _, s in parts])
        groups.setdefault((variant, attack, question), {})[signal] = (labels, scores)
    names = {}
    for (variant, attack, question), signals in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(5, 5))
        for signal, (labels, scores) in signals.items():
            if labels.all() or not labels.any():
                continue
            fpr, tpr, _ = roc_curve(labels, scores)
            ax.plot(fpr, tpr, label=signal)
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
        ax.set(xlabel="false positive rate", ylabel="true positive rate",
               title=f"{attack}: {question}\n{variant}", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7, loc="lower right")
        name = f"{variant}-{attack}-{question}.png"
        fig.savefig(folder / name, dpi=80)
        plt.close(fig)
        names[(variant, attack, question)] = name
    return names
