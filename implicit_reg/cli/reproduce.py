"""``implicit-reg reproduce NAME|all``: run published-result reproductions.

Before an experiment starts, the command prints what it cost when its committed
results were computed and an ETA from that (:data:`MEASURED`): there is no
blanket promise of "minutes per experiment"; the network sweeps at the MNIST-1D
paper's scale take hours of one thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import typer

from ..experiments import available_experiments
from ..experiments import reproduce as run_experiment
from ..report.report import SCALES, write_index
from . import app


@dataclass(frozen=True)
class Cost:
    """What one experiment cost at one scale when its committed results were computed.

    ``seconds`` are either ``"wall"``: the wall time of the reproducing process (its
    workers included; 2 of them), measured at load average 10–14 on a shared 2-core
    machine, so an upper bound, or end to end on an otherwise idle one (the network
    experiments, docs/results/NOTES.md); or ``"train"``: the training time its runs recorded, summed (one
    torch thread each), which ``workers`` processes share. ``source`` is the committed
    file that states it (relative to ``docs/results``) and ``cite`` the text there.
    """

    seconds: float
    kind: str  # "wall" or "train"
    source: str
    cite: str

    def wall(self, workers: int) -> float:
        """Expected wall seconds: the wall time, or the training time over the workers."""
        return self.seconds if self.kind == "wall" else self.seconds / max(1, workers)


def _w(name: str, seconds: float, cite: str) -> Cost:
    return Cost(seconds, "wall", f"{name}/report.md", cite)


def _t(seconds: float, cite: str, source: str = "NOTES.md") -> Cost:
    return Cost(seconds, "train", source, cite)


def _e(seconds: float, cite: str) -> Cost:
    """The wall time of an end-to-end run on an otherwise idle machine (2 workers),
    NOTES.md's third pass of issue 19."""
    return Cost(seconds, "wall", "NOTES.md", cite)


#: measured cost per scale and experiment (what the committed reports and
#: docs/results/NOTES.md say; ``tests/test_reproduce_costs.py`` checks each number
#: against its source). An experiment that is not listed has not been measured.
MEASURED: dict[str, dict[str, Cost]] = {
    "small": {
        "adam-betas": _t(2529, "2529 s in total", "adam-betas/report.md"),
        "adaptive-eos": _w("adaptive-eos", 255.5, "Wall time: 255.5 s"),
        "belkin-cause": _t(5703, "5703 s in total", "belkin-cause/report.md"),
        "belkin-network": _e(909, "| belkin-network | 87 | 909 s |"),
        "central-flow": _w("central-flow", 888.1, "Wall time: 888.1 s"),
        "cnn-digits": _t(6828, "6828 s in total", "cnn-digits/report.md"),
        "double-descent-epochs": _e(141, "| double-descent-epochs | 17 | 141 s |"),
        "double-descent-rf": _w("double-descent-rf", 998.8, "Wall time: 998.8 s"),
        "double-descent-width": _e(630, "| double-descent-width in all | 150 | 630 s |"),
        "edge-of-stability": _w("edge-of-stability", 311.1, "Wall time: 311.1 s"),
        "emc-across-n": _t(4709, "4709 s in total", "emc-across-n/report.md"),
        "epoch-wise-linear": _w("epoch-wise-linear", 842.7, "Wall time: 842.7 s"),
        "epoch-wise-network": _e(
            460,
            "| epoch-wise-network (trains in the reporting process, not on the engine) | — | 460 s |",
        ),
        "flat-optimizers": _w("flat-optimizers", 396.8, "Wall time: 396.8 s"),
        "generalization-measures": _t(803, "803 s in total", "generalization-measures/report.md"),
        "igr-order": _w("igr-order", 41.1, "Wall time: 41.1 s"),
        "igr-toy": _w("igr-toy", 86.6, "Wall time: 86.6 s"),
        "label-noise-dose": _t(6507, "6507 s in total", "label-noise-dose/report.md"),
        "lr-sweep": _e(261, "| lr-sweep (generalization-measures borrows its runs) | 27 | 261 s |"),
        "measures-vs-descent": _t(3726, "3726 s in total", "measures-vs-descent/report.md"),
        "modified-equations-order": _w("modified-equations-order", 65.7, "Wall time: 65.7 s"),
        "sample-wise": _e(53, "| sample-wise | 27 | 53 s |"),
        "sample-wise-linear": _w("sample-wise-linear", 33.3, "Wall time: 33.3 s"),
        "sgd-batch": _w("sgd-batch", 305.5, "Wall time: 305.5 s"),
    },
    "full": {
        "double-descent-width": _t(21733, "took 21,733 thread-seconds"),
        "belkin-network": _t(22015, "took 22,015\nthread-seconds"),
    },
}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_cost(name: str, scale: str) -> str:
    """One experiment's measured cost at ``scale`` in words ("not measured" if unknown)."""
    if scale == "smoke":
        return "seconds"
    cost = MEASURED.get(scale, {}).get(name)
    if cost is None:
        return "not measured"
    if cost.kind == "wall":
        return f"{_duration(cost.seconds)} wall"
    return f"{_duration(cost.seconds)} of one thread"


def estimate(names, scale: str, workers: int) -> float | None:
    """Expected wall seconds of ``names`` run one after another at ``scale`` on
    ``workers`` sweep workers; None when one of them has no measured cost."""
    if scale == "smoke":
        return 0.0
    table = MEASURED.get(scale, {})
    if any(n not in table for n in names):
        return None
    return sum(table[n].wall(workers) for n in names)


def eta_line(names, scale: str, workers: int, now: datetime | None = None) -> str:
    """The estimate printed before a run: expected duration and finishing time (UTC)."""
    seconds = estimate(names, scale, workers)
    if seconds is None:
        missing = [n for n in names if n not in MEASURED.get(scale, {})]
        return f"no measured cost at scale {scale} for {', '.join(missing)}: no ETA"
    if scale == "smoke":
        return "smoke scale: seconds per experiment"
    now = datetime.now(timezone.utc) if now is None else now
    end = (now + timedelta(seconds=seconds)).strftime("%H:%M UTC")
    return (
        f"expected about {_duration(seconds)} on {workers} worker(s), ETA {end} (from the "
        "committed results' measured cost, at load 4-14 on 2 shared cores; an idle machine "
        "is faster)"
    )


def _names_help() -> str:
    try:
        return "Experiment: all, " + ", ".join(available_experiments()) + "."
    except FileNotFoundError:
        return "Experiment name, or 'all'."


def _costs_help() -> str:
    try:
        names = list(available_experiments())
    except FileNotFoundError:
        return ""
    return (
        "Measured cost at small (the default scale; 'of one thread': training time summed "
        "over the runs, shared by the sweep's workers, 2 by default or IMPLICIT_REG_WORKERS): "
        + "; ".join(f"{n}: {describe_cost(n, 'small')}" for n in names)
        + "."
    )


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command(epilog=_costs_help())
def reproduce(
    name: str = typer.Argument(..., help=_names_help()),
    scale: str = typer.Option(
        "small",
        help="smoke (seconds), small (30 s to about 3 h of one thread per experiment: see "
        "below) or full (paper size).",
    ),
    out: Path = typer.Option(
        None,
        help="Directory for report.md and figures (default out/reproduce/NAME); "
        "with 'all', each experiment writes into OUT/NAME.",
    ),
) -> None:
    """Run one experiment (or all) and write report.md, PNG figures and CSV data.

    Example: implicit-reg reproduce igr-toy --scale small --out out/igr-toy
    """
    if scale not in SCALES:
        _fail(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    try:
        names = list(available_experiments())
    except FileNotFoundError as e:
        _fail(str(e))
    if name != "all" and name not in names:
        _fail(f"unknown experiment {name!r}; choose one of all, {', '.join(names)}")
    if name == "all":
        root = Path("out/reproduce") if out is None else out
        targets = {n: root / n for n in names}
    else:
        targets = {name: Path("out/reproduce") / name if out is None else out}
    from ..experiments._sweeps import workers_for

    workers = workers_for(scale)
    if len(targets) > 1:
        typer.echo(
            f"all {len(targets)} experiments at scale {scale}: "
            + eta_line(list(targets), scale, workers)
        )
    failed = []
    for n, target in targets.items():
        typer.echo(f"{n}: running at scale {scale} into {target}; {eta_line([n], scale, workers)}")
        try:
            report = run_experiment(n, scale, target)
        except Exception as e:
            if name != "all":
                if isinstance(e, ValueError):  # bad input: one line, no traceback
                    _fail(f"{n}: {e}")
                raise
            typer.echo(f"error: {n} failed: {type(e).__name__}: {e}", err=True)
            failed.append(n)
            continue
        typer.echo(f"{n}: wrote {report.path} in {report.wall_time_s:.1f} s")
    if name == "all":
        typer.echo(f"index: {write_index(root)}")
    if failed:
        typer.echo(f"error: {len(failed)} of {len(targets)} failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)
