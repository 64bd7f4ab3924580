"""Reports of reproduced results: the :class:`Report` of one experiment, its claims, scales and formatting.

A :class:`Report` collects an experiment's claims (the paper's next to
ours), text, tables, figures and data, and writes ``report.md`` last, so its
presence means the run finished. :func:`write_index` tabulates the reports
under one directory. The experiments themselves and their registry live in
:mod:`implicit_reg.experiments`; this module never imports them.

Scales: ``"smoke"`` finishes in seconds and runs in the test suite;
``"small"`` is the scale that shows the phenomena on two CPU cores;
``"full"`` is the paper-sized run. Some experiments also define ``"demo"``
(:data:`DEMO_SCALE`), a reduced setting that still shows the phenomenon,
run by ``make demo`` (:mod:`implicit_reg.experiments._showcase`); the CLI
offers the three main scales.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..engine.store import atomic_write_bytes, atomic_write_text

__all__ = [
    "SCALES",
    "DEMO_SCALE",
    "Claim",
    "Report",
    "check_scale",
    "select_scale",
    "reproduce_command",
    "write_index",
    "mean_std",
    "plot_band",
    "fmt",
    "markdown_table",
    "VERDICT_Z",
    "seed_effect",
    "judge",
    "effect_text",
    "judge_all",
    "bootstrap_ratio",
    "seed_trend",
]

SCALES = ("smoke", "small", "full")
#: the optional reduced scale of ``make demo``: only experiments that define it accept it
DEMO_SCALE = "demo"
REPORT_FILE = "report.md"

C = TypeVar("C")


# --------------------------------------------------------------------------- scales


def check_scale(scale: str) -> str:
    """Return ``scale`` if it is one of :data:`SCALES` or :data:`DEMO_SCALE`, else raise
    ``ValueError``."""
    if scale not in (*SCALES, DEMO_SCALE):
        raise ValueError(
            f"unknown scale {scale!r}; choose one of {', '.join(SCALES)} (or {DEMO_SCALE}, "
            "where an experiment defines it)"
        )
    return scale


def select_scale(configs: Mapping[str, C], scale: str) -> C:
    """The config of ``scale`` from an experiment's ``{scale: config}`` table.

    Every experiment defines :data:`SCALES`; :data:`DEMO_SCALE` is optional.
    """
    check_scale(scale)
    missing = [s for s in SCALES if s not in configs]
    if scale == DEMO_SCALE and scale not in configs:
        missing.append(DEMO_SCALE)
    if missing:
        raise ValueError(f"the experiment defines no config for scale(s) {', '.join(missing)}")
    return configs[scale]


def reproduce_command(name: str, scale: str, out: Path | str) -> str:
    """The command line that reruns one experiment into ``out``."""
    if scale == DEMO_SCALE:
        return f"python -m implicit_reg.experiments._showcase {name} --out {out}"
    return f"implicit-reg reproduce {name} --scale {scale} --out {out}"


INDEX_FILE = "README.md"
SUMMARY_FILE = "SUMMARY.md"
NOTES_FILE = "NOTES.md"


def write_index(root: Path) -> Path:
    """Write ``root/README.md``: a table of the reports in ``root/<name>/``.

    Reads each ``summary.json`` (written by :meth:`Report.write`); one row per
    experiment with its title, scale, how many claims reproduced, the wall
    time and the CPU time. A hand-written ``root/SUMMARY.md`` (the one-page
    summary of what the reports show), if there is one, goes first, and the
    table follows under its own heading; ``root/NOTES.md``, if there is one,
    goes after the table (footnotes to it).
    """
    root = Path(root)
    rows = []
    for path in sorted(root.glob("*/summary.json")):
        s = json.loads(path.read_text(encoding="utf-8"))
        verdicts = [c["reproduced"] for c in s["claims"]]
        yes, partly = sum(v is True for v in verdicts), sum(v is None for v in verdicts)
        claims = f"{yes}/{len(verdicts)}" + (f" ({partly} inconclusive)" if partly else "")
        rows.append({
            "experiment": f"[{s['name']}]({path.parent.name}/{REPORT_FILE})",
            "what": s["title"],
            "scale": s["scale"],
            "claims reproduced": claims,
            "wall time": f"{s['wall_time_s']:.0f} s" if s.get("wall_time_s") is not None else "?",
            "CPU time": f"{s['cpu_time_s']:.0f} s" if s.get("cpu_time_s") is not None else "?",
        })  # fmt: skip
    summary, notes = root / SUMMARY_FILE, root / NOTES_FILE
    head = summary.read_text(encoding="utf-8").rstrip() + "\n\n" if summary.exists() else ""
    tail = "\n" + notes.read_text(encoding="utf-8").strip() + "\n" if notes.exists() else ""
    text = (
        head
        + ("## Every report\n\n" if head else "# Reproduced results\n\n")
        + "Each report quotes our numbers next to the paper's claim, with its figures, the exact "
        "command, the config, the package version and the wall time. Regenerate them all with "
        f"`implicit-reg reproduce all --scale small --out {root}`. Wall times depend on what "
        "else the machine runs; the CPU time (all threads of the process) is the steadier "
        "measure of cost.\n\n" + markdown_table(rows) + tail
    )
    return atomic_write_text(root / INDEX_FILE, text)


# --------------------------------------------------------------------------- files


# --------------------------------------------------------------------------- formatting


def fmt(x: Any, digits: int = 4) -> str:
    """A number in ``digits`` significant digits (ints and strings as they are)."""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if not math.isfinite(x):
            return str(x)
        if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        if abs(x) >= 10**digits:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def mean_std(values: Sequence[float] | np.ndarray, digits: int = 3) -> str:
    """``mean ± std`` of seed replicates as text (std with ddof=0; one value: no band)."""
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return fmt(float(v[0]), digits)
    return f"{fmt(float(v.mean()), digits)} ± {fmt(float(v.std()), 2)}"


def plot_band(ax, x, ys, *, label: str, color=None, geometric: bool = False, **line_kw):
    """Plot the mean over seeds of ``ys`` (shape ``(seeds, len(x))``) with a ±1 std band.

    ``geometric=True`` takes mean and std of log10(ys), for quantities drawn
    on a log axis (the band is then a factor, never below zero).
    """
    ys = np.atleast_2d(np.asarray(ys, dtype=float))
    if geometric:
        logs = np.log10(ys)
        mid, lo, hi = (10 ** (logs.mean(0) + k * logs.std(0)) for k in (0, -1, 1))
    else:
        m, s = ys.mean(0), ys.std(0)
        mid, lo, hi = m, m - s, m + s
    (line,) = ax.plot(x, mid, label=label, color=color, **line_kw)
    if len(ys) > 1:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def _md_cell(x: Any) -> str:
    return fmt(x).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table from a list of dicts (columns: the first row's keys)."""
    if not rows:
        return "(no rows)\n"
    columns = list(rows[0]) if columns is None else list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- verdicts

#: how many standard errors an effect must exceed to count as reproduced (or as reversed)
VERDICT_Z = 2.0


def seed_effect(
    a: Sequence[float], b: Sequence[float] | None = None, *, paired: bool = False
) -> tuple[float, float]:
    """The effect ``mean(a) − mean(b)`` (or ``mean(a)`` alone) and its standard error over seeds.

    Unpaired: SE = sqrt(s_a²/n_a + s_b²/n_b) with sample standard deviations
    (ddof=1). ``paired=True`` takes the per-seed differences a_i − b_i (same
    seeds on both sides) and SE = s_d/sqrt(n). One seed gives SE = nan: no
    uncertainty can be claimed from one run.
    """
    a = np.asarray(a, dtype=float)
    if b is None:
        return float(a.mean()), _se(a)
    b = np.asarray(b, dtype=float)
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"paired effect needs equal shapes, got {a.shape} and {b.shape}")
        d = a - b
        return float(d.mean()), _se(d)
    return float(a.mean() - b.mean()), float(np.hypot(_se(a), _se(b)))


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def judge(effect: float, se: float, *, z: float = VERDICT_Z) -> bool | None:
    """The verdict of a claim that predicts ``effect > 0``, from the effect and its SE.

    True (reproduced) when effect > z·SE; False (not reproduced) when
    effect < −z·SE, the opposite beyond the noise; None (inconclusive) when
    |effect| ≤ z·SE or the SE is unknown (one seed, nan).
    """
    if not math.isfinite(effect):
        return False if math.isnan(effect) else effect > 0
    if not math.isfinite(se):
        return None
    if effect > z * se:
        return True
    if effect < -z * se:
        return False
    return None


def judge_all(*verdicts: bool | None) -> bool | None:
    """One verdict from several that must all hold: True if every one is True, False if
    any is False (reversed beyond the noise), else None (some inside the noise)."""
    if any(v is False for v in verdicts):
        return False
    return True if verdicts and all(v is True for v in verdicts) else None


def bootstrap_ratio(
    num_a: Sequence[float],
    num_b: Sequence[float],
    den_a: Sequence[float],
    den_b: Sequence[float],
    *,
    draws: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """A ratio of mean differences, (m(num_a) − m(num_b)) / (m(den_a) − m(den_b)), with a
    percentile bootstrap interval over seeds.

    Each of the four groups is resampled with replacement on its own (its
    seeds are independent replicates); "EGR closes 81% of the gap" is
    ``bootstrap_ratio(egr, lo, big, lo)``. Returns (ratio, low, high); the
    interval is nan when a group has one seed, and may be very wide (or
    unbounded in effect) when the denominator is inside its noise.
    """
    groups = [np.asarray(g, dtype=float) for g in (num_a, num_b, den_a, den_b)]
    if any(g.size == 0 for g in groups):
        raise ValueError("bootstrap_ratio needs at least one value in every group")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    means = [g.mean() for g in groups]
    den = means[2] - means[3]
    ratio = (means[0] - means[1]) / den if den != 0 else float("nan")
    if any(g.size < 2 for g in groups):
        return float(ratio), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    m = [g[rng.integers(0, g.size, size=(draws, g.size))].mean(1) for g in groups]
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = (m[0] - m[1]) / (m[2] - m[3])
    boot = boot[np.isfinite(boot)]
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]) if boot.size else (np.nan,) * 2
    return float(ratio), float(lo), float(hi)


def seed_trend(
    x: Sequence[float], ys: Sequence[Sequence[float]] | np.ndarray
) -> tuple[float, float]:
    """Kendall τ between ``x`` and each seed's curve ``ys[s]``, as mean and SE over seeds.

    A trend claim ("the measure falls with h") is then judged by
    :func:`judge` on (sign·mean τ, SE): the seeds are the replicates, not the
    points of one mean curve. Points where a seed has NaN are left out of that
    seed's τ.
    """
    from scipy.stats import kendalltau

    x = np.asarray(x, dtype=float)
    ys = np.atleast_2d(np.asarray(ys, dtype=float))
    if ys.shape[1] != x.size:
        raise ValueError(f"each curve needs {x.size} values, got shape {ys.shape}")
    taus = []
    for y in ys:
        ok = np.isfinite(y)
        if ok.sum() >= 2 and np.unique(y[ok]).size >= 2:
            taus.append(float(kendalltau(x[ok], y[ok]).statistic))
    if not taus:
        return float("nan"), float("nan")
    return seed_effect(taus)


def effect_text(effect: float, se: float, digits: int = 3) -> str:
    """``effect ± SE (k SE)`` as text, the numbers a verdict rests on."""
    if not math.isfinite(se):
        return f"{fmt(effect, digits)} (SE n/a)"
    if se == 0:
        return f"{fmt(effect, digits)} ± 0 SE (the same on every seed)"
    return f"{fmt(effect, digits)} ± {fmt(se, 2)} SE ({effect / se:+.1f} SE)"


# --------------------------------------------------------------------------- report


@dataclasses.dataclass(frozen=True)
class Claim:
    """One published claim next to our measurement.

    ``reproduced`` is True (the effect exceeds about two standard errors over
    seeds, :func:`judge`), False (the opposite holds beyond the noise) or None
    (inconclusive: inside the noise, or not a yes/no question; ``verdict``
    says what we found).
    """

    claim: str
    paper: str
    ours: str
    reproduced: bool | None
    verdict: str = ""

    def row(self) -> dict[str, str]:
        yes_no = {True: "yes", False: "**no**", None: "inconclusive"}[self.reproduced]
        verdict = f"{yes_no}: {self.verdict}" if self.verdict else yes_no
        return {"claim": self.claim, "paper": self.paper, "ours": self.ours, "reproduces?": verdict}


class Report:
    """A reproduction report under construction: ``report.md`` plus its files.

    Create it first thing in ``run`` (the wall time is measured from its
    creation to :meth:`write`), add claims, text, tables, figures and data in
    the order they should appear, then call :meth:`write`. Figures and data
    are written (atomically) into ``out`` as they are added; ``report.md``
    is written last, so its presence means the run finished.

    Args:
        name: the experiment's name (``NAME``).
        title: what is reproduced (``TITLE``).
        scale: one of :data:`SCALES`.
        out: the directory that receives the files.
        config: the resolved configuration (a dataclass or a mapping).
        paper: the citation of the reproduced result.
    """

    def __init__(
        self,
        name: str,
        title: str,
        scale: str,
        out: Path,
        config: Any,
        paper: str,
    ) -> None:
        self.name = name
        self.title = title
        self.scale = check_scale(scale)  # SCALES or DEMO_SCALE
        self.out = Path(out)
        self.config = (
            dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        )
        self.paper = paper
        self.claims: list[Claim] = []
        self.blocks: list[str] = []
        self.files: list[Path] = []
        self.command = reproduce_command(name, scale, out)
        self.wall_time_s: float | None = None
        self.cpu_time_s: float | None = None
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self.out.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        """Where ``report.md`` is (or will be) written."""
        return self.out / REPORT_FILE

    def add_claim(
        self, claim: str, paper: str, ours: str, reproduced: bool | None, verdict: str = ""
    ) -> Claim:
        """Add one row to the claim-vs-ours table at the top of the report."""
        c = Claim(claim, paper, ours, reproduced, verdict)
        self.claims.append(c)
        return c

    def add_text(self, text: str, heading: str | None = None) -> None:
        """A markdown paragraph, under a ``##`` heading if one is given."""
        block = (f"## {heading}\n\n" if heading else "") + text.strip() + "\n"
        self.blocks.append(block)

    def add_table(
        self,
        rows: Sequence[Mapping[str, Any]],
        heading: str | None = None,
        caption: str = "",
        columns: Sequence[str] | None = None,
    ) -> None:
        """A markdown table of ``rows`` (dicts)."""
        text = markdown_table(rows, columns)
        if caption:
            text = caption.strip() + "\n\n" + text
        self.add_text(text, heading)

    def add_figure(self, fig, filename: str, caption: str, dpi: int = 100) -> Path:
        """Save a matplotlib figure as PNG into ``out`` and link it here.

        The figure must have labelled axes and a title saying what was run.
        """
        if not filename.endswith(".png"):
            raise ValueError(f"figure file name must end in .png, got {filename!r}")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        path = atomic_write_bytes(self.out / filename, buf.getvalue())
        self.files.append(path)
        self.blocks.append(f"![{caption}]({filename})\n\n*{caption}*\n")
        return path

    def add_data(self, frame, filename: str) -> Path:
        """Save a results table (``pandas.DataFrame``) as CSV into ``out`` (8 significant digits)."""
        if not filename.endswith(".csv"):
            raise ValueError(f"data file name must end in .csv, got {filename!r}")
        path = atomic_write_text(
            self.out / filename, frame.to_csv(index=False, float_format="%.8g")
        )
        self.files.append(path)
        return path

    def render(self) -> str:
        """The markdown text of the report."""
        from .. import __version__

        wall = time.perf_counter() - self._t0 if self.wall_time_s is None else self.wall_time_s
        cpu = time.process_time() - self._cpu0 if self.cpu_time_s is None else self.cpu_time_s
        load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
        parts = [
            f"# {self.title}\n",
            f"Experiment `{self.name}` at scale `{self.scale}`. Reproduces: {self.paper}.\n",
        ]
        if self.claims:
            parts.append(
                "## Claims: the paper's and ours\n\n"
                + markdown_table([c.row() for c in self.claims])
            )
        parts += self.blocks
        data = [p.name for p in self.files if p.suffix == ".csv"]
        run = [
            "## Run\n",
            f"- Command: `{self.command}`",
            f"- Package version: implicit-reg {__version__}",
            f"- Wall time: {wall:.1f} s (CPU time of this process, all threads: {cpu:.1f} s{load})",
            f"- Environment: Python {platform.python_version()}, torch {torch.__version__}, "
            f"numpy {np.__version__}, {platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        ]
        if data:
            run.append("- Data: " + ", ".join(f"[{d}]({d})" for d in data))
        run += ["- Config:\n", "```json", json.dumps(self.config, indent=2, default=str), "```\n"]
        parts.append("\n".join(run))
        return "\n".join(parts)

    def summary(self) -> dict[str, Any]:
        """What an index of reports needs: name, title, scale, claims, times."""
        from .. import __version__

        return {
            "name": self.name,
            "title": self.title,
            "scale": self.scale,
            "command": self.command,
            "version": __version__,
            "wall_time_s": self.wall_time_s,
            "cpu_time_s": self.cpu_time_s,
            "claims": [
                {"claim": c.claim, "reproduced": c.reproduced, "ours": c.ours} for c in self.claims
            ],
        }

    def write(self) -> Report:
        """Stop the clock, write ``config.json``, ``summary.json`` and ``report.md``; return self."""
        self.wall_time_s = time.perf_counter() - self._t0
        self.cpu_time_s = time.process_time() - self._cpu0
        atomic_write_text(self.out / "summary.json", json.dumps(self.summary(), indent=2) + "\n")
        atomic_write_text(
            self.out / "config.json",
            json.dumps(
                {"name": self.name, "scale": self.scale, "config": self.config},
                indent=2,
                default=str,
            )
            + "\n",
        )
        atomic_write_text(self.path, self.render())
        return self
