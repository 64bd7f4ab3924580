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
    "why_section",
    "write_index",
    "headline_rows",
    "mean_std",
    "plot_band",
    "fmt",
    "markdown_table",
    "NOT_TESTED",
    "VERDICTS",
    "tally",
    "tally_text",
    "brief",
    "Untested",
    "attempt",
]

#: the scales every experiment runs at: a seconds-long check, two CPU cores, the paper's setting
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
#: Declares the questions the index answers first (see :func:`why_section`).
WHY_FILE = "WHY.toml"


def _summary_tally(s: Mapping[str, Any]) -> str:
    """The tally of one ``summary.json``; summaries written before claims carried a verdict
    (``reproduced`` True/False/None only) are marked as judged by the old rule."""
    claims = s["claims"]
    if claims and all("verdict" in c for c in claims):
        return tally_text(tally(claims))
    old = {True: "reproduced", False: "not reproduced", None: "inconclusive"}
    counts = tally([{"claim": c["claim"], "verdict": old[c["reproduced"]]} for c in claims])
    return tally_text(counts) + " (old rule: effect > 2 SE, not re-judged)"


def headline_rows(root: Path) -> list[dict[str, str]]:
    """One row per experiment with a headline claim (``summary.json`` under ``root``): its
    first figure, the claim's verdict and a short sentence with the effect and its interval."""
    rows = []
    for path in sorted(Path(root).glob("*/summary.json")):
        s = json.loads(path.read_text(encoding="utf-8"))
        heads = [c for c in s["claims"] if c.get("headline")]
        if not heads:
            continue
        c, name = heads[0], path.parent.name
        figure = (s.get("figures") or [""])[0]
        rows.append({
            "phenomenon": f"[{s['title'].split(':')[0]}]({name}/{REPORT_FILE})",
            "figure": f'<img src="{name}/{figure}" width="200">' if figure else "",
            "verdict": {"not reproduced": "**not reproduced**"}.get(c["verdict"], c["verdict"]),
            "what we measured": c.get("short") or c["claim"],
        })  # fmt: skip
    return rows


def why_section(root: Path) -> str:
    """The "What explains double descent here" section, generated from the reports' claims.

    ``root/WHY.toml`` declares, per question, which experiments' claims answer
    it (``[[question]]`` tables with ``ask`` and ``claims = [{experiment,
    claim}]``; ``claim`` is the claim's exact text). Each answer line is that
    claim's verdict and its ``short`` sentence (the effect and its 90%
    interval) read from the experiment's ``summary.json``, with a link to the
    report, so no sentence of the section is written by hand and a rerun that
    changes a verdict changes the page. A declared claim that no report makes
    is a ValueError naming it (a renamed claim must not vanish silently).
    Returns "" when there is no ``WHY.toml``.
    """
    import tomllib

    root = Path(root)
    path = root / WHY_FILE
    if not path.exists():
        return ""
    spec = tomllib.loads(path.read_text(encoding="utf-8"))
    lines = ["## " + spec.get("title", "What explains double descent here"), ""]
    if spec.get("intro"):
        lines += [spec["intro"].strip(), ""]
    for q in spec.get("question", []):
        lines += [f"**{q['ask']}**", ""]
        for ref in q["claims"]:
            name, text = ref["experiment"], ref["claim"]
            summary = root / name / "summary.json"
            if not summary.exists():
                raise ValueError(f"{path}: experiment {name!r} has no {summary}")
            claims = json.loads(summary.read_text(encoding="utf-8"))["claims"]
            found = [c for c in claims if c["claim"] == text]
            if not found:
                raise ValueError(f"{path}: {name} makes no claim {text!r}")
            c = found[0]
            verdict = {"not reproduced": "**not reproduced**"}.get(c["verdict"], c["verdict"])
            lines.append(f"- [{name}]({name}/{REPORT_FILE}), {verdict}: {c.get('short') or text}")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_index(root: Path) -> Path:
    """Write ``root/README.md``: the headline claims, then a table of every report.

    Reads each ``summary.json`` (written by :meth:`Report.write`). The page
    opens with one row per experiment that marks a headline claim
    (:func:`headline_rows`: figure, verdict, one sentence with the effect and
    its interval), generated from the claims, after the section that
    ``root/WHY.toml`` declares (:func:`why_section`). A hand-written
    ``root/SUMMARY.md`` (what the reports show, in prose), if there is one,
    follows; then one row per experiment with its title, scale, how many
    distinct effects reproduced (:func:`tally`), the wall time and the CPU
    time; ``root/NOTES.md``, if there is one, goes last (footnotes).
    """
    root = Path(root)
    rows = []
    for path in sorted(root.glob("*/summary.json")):
        s = json.loads(path.read_text(encoding="utf-8"))
        rows.append({
            "experiment": f"[{s['name']}]({path.parent.name}/{REPORT_FILE})",
            "what": s["title"],
            "scale": s["scale"],
            "effects reproduced": _summary_tally(s),
            "wall time": f"{s['wall_time_s']:.0f} s" if s.get("wall_time_s") is not None else "?",
            "CPU time": f"{s['cpu_time_s']:.0f} s" if s.get("cpu_time_s") is not None else "?",
        })  # fmt: skip
    heads = headline_rows(root)
    summary, notes = root / SUMMARY_FILE, root / NOTES_FILE
    glance = (
        "# What the reproductions show\n\nOne row per experiment, generated from its report's "
        "headline claim: the effect and, in brackets, its 90% confidence interval (a ratio "
        "×r for effects on a log scale). " + RULE_TEXT + "\n\n" + markdown_table(heads) + "\n"
        if heads
        else ""
    )
    head = summary.read_text(encoding="utf-8").rstrip() + "\n\n" if summary.exists() else ""
    why = why_section(root)
    if why:
        glance = (glance.split("\n\n", 1)[0] + "\n\n" + why + "\n" + glance.split("\n\n", 1)[1]
                  if glance else why + "\n")  # fmt: skip
    tail = "\n" + notes.read_text(encoding="utf-8").strip() + "\n" if notes.exists() else ""
    text = (
        glance
        + head
        + ("## Every report\n\n" if head or glance else "# Reproduced results\n\n")
        + "Each report quotes our numbers next to the paper's claim, with its figures, the exact "
        "command, the config, the package version and the wall time. Regenerate them all with "
        f"`implicit-reg reproduce all --scale small --out {root}`. Wall times depend on what "
        "else the machine runs; the CPU time (all threads of the process) is the steadier "
        "measure of cost. One measured effect is one claim, however many sentences cite it.\n\n"
        + markdown_table(rows)
        + tail
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


# --------------------------------------------------------------------------- claims

#: how the verdicts were decided, stated under every claims table
RULE_TEXT = (
    "Every verdict is a test of `implicit_reg.stats` (one-sided, α = 0.05, t quantiles for "
    "the seeds' degrees of freedom; peaks located before they are tested; equivalence by TOST "
    "with a stated margin; heavy-tailed quantities on a log scale). An inconclusive verdict "
    "gives the smallest effect the design could have detected."
)

#: the verdict of a claim the runs cannot test (its reason is given)
NOT_TESTED = "not tested"
VERDICTS = ("reproduced", "inconclusive", "not reproduced", NOT_TESTED)


@dataclasses.dataclass(frozen=True)
class Untested:
    """A test the runs could not make, and why (e.g. one seed: no variance to test against)."""

    reason: str
    verdict: str = NOT_TESTED

    def sentence(self) -> str:
        return f"not tested: {self.reason}"


def attempt(test: Any, *args: Any, **kwargs: Any) -> Any:
    """``test(*args, **kwargs)`` (a test of :mod:`implicit_reg.stats`), or :class:`Untested`
    with its message when the runs cannot support it (``ValueError``: too few seeds or
    points, a non-finite value)."""
    try:
        return test(*args, **kwargs)
    except ValueError as e:
        return Untested(str(e))


def _verdict_of(result: Any) -> str:
    verdict = getattr(result, "verdict", None)
    if verdict not in VERDICTS:
        raise TypeError(
            f"a claim's test must be a result of implicit_reg.stats with a verdict, got {result!r}"
        )
    return verdict


@dataclasses.dataclass(frozen=True)
class Claim:
    """One published claim, the test that decides it, and what the test found.

    A claim is declared, not narrated: ``statement`` and ``paper`` say what is
    claimed and where; ``tests`` are results of :mod:`implicit_reg.stats`
    (``paired_test``, ``peak_test``, ``trend_test``, ``equivalence_test``, ...)
    whose verdicts, combined by :func:`implicit_reg.stats.all_of`, are the
    claim's verdict, and whose sentences (effect, SE, interval, degrees of
    freedom, and for an inconclusive the effect the design could have
    detected) are the claim's numbers. Changing the rule in
    :mod:`implicit_reg.stats` changes every report the same way.

    ``context`` adds measured numbers that are not part of the test (what the
    curve looks like); it never decides anything. A claim with no ``tests``
    is "not tested" and ``untested`` gives the reason. ``effect`` names the
    measured effect: claims that rest on the same number share it, and
    :meth:`Report.tally` counts each effect once. ``headline`` marks the claim
    that stands for the experiment in the summary of all reports.
    """

    statement: str
    paper: str
    tests: tuple = ()
    context: str = ""
    untested: str = ""
    effect: str = ""
    headline: bool = False

    def __post_init__(self) -> None:
        if not self.tests and not self.untested:
            raise ValueError(f"claim {self.statement!r}: give its tests or why it is not tested")
        if self.tests and self.untested:
            raise ValueError(f"claim {self.statement!r} is tested; drop `untested`")
        for t in self.tests:
            _verdict_of(t)

    @property
    def verdict(self) -> str:
        """One of :data:`VERDICTS`: every test's verdict combined by ``stats.all_of``."""
        if not self.tests or any(t.verdict == NOT_TESTED for t in self.tests):
            return NOT_TESTED
        from ..stats import all_of

        return all_of(*self.tests)

    @property
    def reproduced(self) -> bool | None:
        """The verdict as True (reproduced), False (not reproduced) or None (else)."""
        return {"reproduced": True, "not reproduced": False}.get(self.verdict)

    @property
    def claim(self) -> str:  # the name older callers read
        return self.statement

    @property
    def ours(self) -> str:
        """The numbers: the context, then each test's sentence (or the reason it is untested)."""
        parts = [self.context] if self.context else []
        parts += [t.sentence() for t in self.tests] if self.tests else [self.untested]
        return "; ".join(p.strip().rstrip(".") for p in parts if p) + "."

    def row(self) -> dict[str, str]:
        shown = {"not reproduced": "**not reproduced**"}.get(self.verdict, self.verdict)
        return {"claim": self.statement, "paper": self.paper, "ours": self.ours,
                "reproduces?": shown}  # fmt: skip

    def record(self) -> dict[str, Any]:
        """The claim as ``summary.json`` stores it."""
        return {
            "claim": self.statement,
            "paper": self.paper,
            "verdict": self.verdict,
            "reproduced": self.reproduced,
            "effect": self.effect or self.statement,
            "headline": self.headline,
            "short": self.short,
            "ours": self.ours,
        }

    @property
    def short(self) -> str:
        """The statement, the verdict and each test's effect with its interval, in one line
        (the summary of all reports quotes it)."""
        if not self.tests:
            return f"{self.statement}: not tested ({self.untested})"
        return f"{self.statement}: " + "; ".join(brief(t) for t in self.tests)


def brief(result: Any) -> str:
    """A result of :mod:`implicit_reg.stats` as ``effect [low, high]`` (its confidence
    interval); a peak as its rise and fall; a ratio as its estimate and interval."""
    rise, fall = getattr(result, "rise", None), getattr(result, "fall", None)
    if rise is not None and fall is not None:
        return f"rise {brief(rise)}, fall {brief(fall)}"
    if isinstance(result, Untested):
        return result.sentence()
    effect = getattr(result, "effect", getattr(result, "ratio", None))
    ci = getattr(result, "ci", None)
    log = getattr(result, "scale", "") == "log"
    if effect is None:
        return result.verdict
    text = ("×" if log else "") + fmt(float(np.exp(effect) if log else effect), 3)
    if ci is not None and all(np.isfinite(ci)):
        lo, hi = np.exp(ci) if log else ci
        text += f" [{fmt(float(lo), 3)}, {fmt(float(hi), 3)}]"
    return text


def tally(claims: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Count distinct effects by verdict: claims with the same ``effect`` count once
    (the first claim's verdict stands for it). ``claims`` are :meth:`Claim.record` dicts."""
    seen: dict[str, str] = {}
    for c in claims:
        seen.setdefault(c.get("effect") or c["claim"], c["verdict"])
    counts = {v: 0 for v in VERDICTS}
    for v in seen.values():
        counts[v] += 1
    counts["effects"] = len(seen)
    return counts


def tally_text(counts: Mapping[str, int]) -> str:
    """``"3/5 (1 inconclusive, 1 not tested)"``: reproduced of the distinct tested-or-not effects."""
    rest = [f"{counts[v]} {v}" for v in ("inconclusive", "not reproduced", NOT_TESTED) if counts[v]]
    return f"{counts['reproduced']}/{counts['effects']}" + (f" ({', '.join(rest)})" if rest else "")


def _today() -> str:
    """Today's date (UTC), for a store-only report's note."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


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
        #: a store-only report (re-judged, nothing computed): the cost of the report that
        #: computed the results, ``{"wall_time_s", "cpu_time_s"}`` (None each when no report
        #: measured it: runs trained outside one), which ``summary.json`` keeps; this
        #: report's own time is stored beside it as ``regenerated_store_only``
        self.computed_cost: dict[str, float | None] | None = None
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self.out.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        """Where ``report.md`` is (or will be) written."""
        return self.out / REPORT_FILE

    def add_claim(
        self,
        statement: str,
        paper: str,
        *tests: Any,
        context: str = "",
        untested: str = "",
        effect: str = "",
        headline: bool = False,
    ) -> Claim:
        """Add one claim, decided by ``tests`` (results of :mod:`implicit_reg.stats`), to the
        table at the top of the report; with no tests, ``untested`` says why (see :class:`Claim`)."""
        c = Claim(statement, paper, tuple(tests), context, untested, effect, headline)
        self.claims.append(c)
        return c

    def tally(self) -> dict[str, int]:
        """Distinct effects by verdict (:func:`tally`)."""
        return tally([c.record() for c in self.claims])

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
        timing = (
            f"- Wall time: {wall:.1f} s (CPU time of this process, all threads: {cpu:.1f} s{load})"
        )
        if self.computed_cost is not None:
            c = self.computed_cost
            regenerated = (
                f"regenerated store-only on {_today()} in {wall:.1f} s (CPU {cpu:.1f} s{load})"
            )
            timing = (
                f"- Wall time: {c['wall_time_s']:.1f} s (CPU time of that process, all threads: "
                f"{c['cpu_time_s']:.1f} s), as the report that computed the results measured "
                f"it; {regenerated}"
                if c["wall_time_s"] is not None
                else "- Wall time: not measured by a report (the results were computed outside "
                f"one; the compute note gives what the runs recorded); {regenerated}"
            )
        parts = [
            f"# {self.title}\n",
            f"Experiment `{self.name}` at scale `{self.scale}`. Reproduces: {self.paper}.\n",
        ]
        if self.claims:
            parts.append(
                "## Claims: the paper's and ours\n\n"
                + markdown_table([c.row() for c in self.claims])
                + f"\n{RULE_TEXT} Distinct effects reproduced: {tally_text(self.tally())}.\n"
            )
        parts += self.blocks
        data = [p.name for p in self.files if p.suffix == ".csv"]
        run = [
            "## Run\n",
            f"- Command: `{self.command}`",
            f"- Package version: implicit-reg {__version__}",
            timing,
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
            "claims": [c.record() for c in self.claims],
            "figures": [p.name for p in self.files if p.suffix == ".png"],
        } | (
            {}
            if self.computed_cost is None
            else {
                **self.computed_cost,
                "regenerated_store_only": {
                    "on": _today(),
                    "wall_time_s": self.wall_time_s,
                    "cpu_time_s": self.cpu_time_s,
                },
            }
        )

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
