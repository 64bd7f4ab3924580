"""``implicit-reg summary``: the tidy table of a sweep and the Kendall ranking of measures."""

from __future__ import annotations

import pandas as pd
import typer

from . import app
from .train import bad_input


def summarize(
    sweep_dir: str,
    *,
    metrics: list[str] | None = None,
    csv: str | None = None,
    parquet: str | None = None,
    history: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(table, ranking)`` for a sweep; optionally exports the full summaries
    (``csv``/``parquet``) and the long history (``history``, .csv or .parquet).
    ``ranking`` is None when the runs have no train/test errors."""
    from ..report.results import (
        export_table,
        kendall_ranking,
        load_histories,
        load_summaries,
        summary_table,
    )

    summaries = load_summaries(sweep_dir)
    if summaries.empty:
        raise ValueError(f"no complete runs in {sweep_dir!r}")
    if csv:
        export_table(summaries, csv)
    if parquet:
        export_table(summaries, parquet)
    if history:
        export_table(load_histories(sweep_dir), history)
    ranking = kendall_ranking(summaries) if "gen_gap" in summaries else None
    return summary_table(summaries, metrics), ranking


def format_frame(df: pd.DataFrame) -> str:
    return df.to_string(index=False, float_format=lambda x: f"{x:.4g}")


@app.command("summary")
def summary(
    sweep_dir: str = typer.Argument(..., help="A sweep directory (or a store root of runs)."),
    metrics: str | None = typer.Option(
        None, "--metrics", help="Comma-separated final metrics to show."
    ),
    csv: str | None = typer.Option(None, "--csv", help="Write all summaries to this CSV."),
    parquet: str | None = typer.Option(
        None, "--parquet", help="Write all summaries to Parquet (needs pyarrow)."
    ),
    history: str | None = typer.Option(
        None, "--history", help="Write the long history (.csv/.parquet)."
    ),
) -> None:
    """Print one row per run and Kendall's tau of each measure with the generalization gap.

    tau > 0: runs with a larger measure have a larger gap (test - train error);
    psi is the granulated tau of Jiang et al. (2019), averaged over the swept
    hyperparameters.

    Examples:

      implicit-reg summary sweeps/lr-width

      implicit-reg summary sweeps/lr-width --metrics test_error,lambda_max --csv runs.csv
    """
    with bad_input():
        names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
        table, ranking = summarize(
            sweep_dir, metrics=names, csv=csv, parquet=parquet, history=history
        )
    typer.echo(format_frame(table))
    if ranking is not None and not ranking.empty:
        typer.echo("\nKendall rank correlation with the generalization gap (test - train error):")
        typer.echo(format_frame(ranking))
