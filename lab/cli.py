"""``onionpost lab``: the traffic-correlation lab (docs/lab.md).

Mounted by ``onionpost/cli.py``. The lab's modules (numpy, scikit-learn,
matplotlib) are imported inside the commands, so ``onionpost --help`` stays
fast and works without the ``lab`` extra. Errors are one line on stderr and
exit status 1; Ctrl-C stops every process the run started, then exits 130.
"""

import importlib
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
                  help="Measure traffic-correlation attacks on scripted users over a private Tor network.")

EXTRA = ("numpy", "sklearn", "matplotlib")


def _fail(message: str) -> NoReturn:
    typer.echo("error: " + " ".join(message.split()), err=True)
    raise typer.Exit(1)


def _need_extra() -> None:
    missing = []
    for name in EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        _fail(f"the lab needs the 'lab' extra (pip install 'onionpost[lab]'); missing: {', '.join(missing)}")


def _progress(message: str, percent: float) -> None:
    from onionpost.torconfig.progress import print_progress

    print_progress(message, percent, label="lab")


@app.command("list")
def list_scenarios() -> None:
    """List the built-in scenarios."""
    from onionpost.lab.scenario import BUILTINS

    width = max(map(len, BUILTINS))
    for name, scenario in BUILTINS.items():
        typer.echo(f"{name:<{width}}  {scenario.description}")


@app.command()
def run(
    scenario: Annotated[str, typer.Argument(help="A built-in name ('onionpost lab list') or a scenario TOML file.",
                                            show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="New or empty directory for everything the run writes.",
                                      show_default=False)],
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed (default: the scenario's).")] = None,
    repeat: Annotated[Optional[int], typer.Option("--repeat", min=1,
                                                  help="Runs per variant, each on a fresh network.")] = None,
) -> None:
    """Run a scenario: network, relay, users, schedule, captures, attacks, report."""
    from onionpost.lab.scenario import ScenarioError, load_scenario

    try:
        loaded = load_scenario(scenario)
    except ScenarioError as exc:
        _fail(str(exc))
    _need_extra()
    from onionpost.lab.runner import LabError, check_out_dir, run as run_lab

    try:
        check_out_dir(out)
        results = run_lab(loaded, out, seed=seed, repeat=repeat, progress=_progress)
    except KeyboardInterrupt:
        typer.echo("interrupted: every process of the run was stopped", err=True)
        raise typer.Exit(130) from None
    except LabError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a run that fails says why in one line; its logs are in DIR/traces
        _fail(f"the run failed: {exc or type(exc).__name__} (logs: {out / 'traces'})")
    typer.echo(f"report: {out / 'report.md'} ({len(results['runs'])} run(s))")


@app.command()
def report(out: Annotated[Path, typer.Argument(help="A directory 'onionpost lab run' wrote.", show_default=False)]) -> None:
    """Rerun the attacks on DIR's captured data and rewrite results.json, report.md and the ROC curves."""
    _need_extra()
    from onionpost.lab.analysis import ReportError, analyse
    from onionpost.lab.scenario import ScenarioError

    try:
        results = analyse(out)
    except (ReportError, ScenarioError, OSError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"report: {out / 'report.md'} ({len(results['runs'])} run(s))")


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="A directory 'onionpost lab run' wrote.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="espresso, deepcoffea (inflow/ and outflow/ folders) or jsonl.",
                                     show_default=False)],
) -> None:
    """Write DIR's flows for published attacks, into DIR/export/FORMAT/."""
    from onionpost.lab.export import ExportError, export as write

    try:
        dest = write(out, fmt)
    except (ExportError, OSError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"exported: {dest}")
