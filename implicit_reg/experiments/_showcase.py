"""The science part of ``make demo``: the cheap, clear reproductions at their ``demo`` scale.

Runs, one after another, the experiments that show a phenomenon within about
five minutes on two cores (:data:`SHOWCASE`), each at
:data:`~implicit_reg.report.report.DEMO_SCALE` (a reduced setting that each
of them defines), writes their reports and figures into ``OUT/<name>/`` and
the index ``OUT/README.md``, and prints every claim with its verdict. The
other experiments (network double descent, SGD, the learning-rate sweep) need
their ``small`` or ``full`` scale; their committed results are in
``docs/results/``.

Usage::

    python -m implicit_reg.experiments._showcase [NAME ...] [--out out/demo]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..report.report import DEMO_SCALE, Report, write_index
from . import reproduce

__all__ = ["SHOWCASE", "showcase", "summary_lines", "main"]

#: the experiments of the demo, in the order they run
SHOWCASE = (
    "double-descent-rf",
    "sample-wise-linear",
    "epoch-wise-linear",
    "igr-toy",
    "igr-order",
    "edge-of-stability",
)
VERDICT = {True: "yes ", False: "NO  ", None: "n.c."}  # n.c.: inconclusive


def summary_lines(report: Report) -> list[str]:
    """The report in a few lines: claims reproduced, wall time, one line per claim."""
    yes = sum(c.reproduced is True for c in report.claims)
    lines = [
        f"{report.name}: {yes}/{len(report.claims)} claims reproduced in "
        f"{report.wall_time_s:.0f} s -> {report.path}"
    ]
    lines += [f"  {VERDICT[c.reproduced]} {c.claim}" for c in report.claims]
    return lines


def showcase(out: Path, names: tuple[str, ...] = SHOWCASE, echo=print) -> list[Report]:
    """Run ``names`` at the demo scale into ``out/<name>`` and write ``out/README.md``."""
    unknown = [n for n in names if n not in SHOWCASE]
    if unknown:
        raise ValueError(
            f"not in the showcase: {', '.join(unknown)}; choose from {', '.join(SHOWCASE)}"
        )
    out = Path(out)
    reports, failed, t0 = [], [], time.perf_counter()
    for name in names:
        try:
            report = reproduce(name, DEMO_SCALE, out / name)
        except Exception as e:  # one broken experiment does not hide the others
            echo(f"{name}: FAILED: {type(e).__name__}: {e}")
            failed.append(name)
            continue
        reports.append(report)
        for line in summary_lines(report):
            echo(line)
    index = write_index(out)
    echo(f"All {len(reports)} in {time.perf_counter() - t0:.0f} s; index: {index}")
    echo("Figures: " + ", ".join(str(p) for r in reports for p in r.files if p.suffix == ".png"))
    echo(
        "Network double descent (model-, epoch- and sample-wise), SGD and the learning-rate "
        "sweep need --scale small or full: committed results in docs/results/README.md"
    )
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(names)} demo experiments failed: {', '.join(failed)}"
        )
    return reports


def main(argv: list[str] | None = None) -> list[Report]:
    parser = argparse.ArgumentParser(
        prog="python -m implicit_reg.experiments._showcase", description=__doc__.split("\n")[0]
    )
    parser.add_argument("names", nargs="*", default=list(SHOWCASE), help="experiments to run")
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    args = parser.parse_args(argv)
    return showcase(args.out, tuple(args.names))


if __name__ == "__main__":
    main()
