"""``implicit-reg landscape``: the loss surface around a trained model, as a table and figures.

A thin wrapper around :func:`landscape_of_checkpoint` (model, data and loss from a
training checkpoint, then :func:`implicit_reg.probes.landscape.loss_landscape`) and
:func:`write_landscape` (tidy CSV, contour and surface figures), which Python users
and tests call directly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
import typer

from ..probes.landscape import DEFAULT_MEMORY_BUDGET, DIRECTIONS, Landscape, loss_landscape
from . import app
from .train import bad_input

__all__ = ["landscape_of_checkpoint", "write_landscape", "plot_landscape"]

_STEP = re.compile(r"step_(\d+)\.pt$")


def _resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoint.pt``."""
    p = Path(path)
    if p.is_dir():
        if not (p / "checkpoint.pt").is_file():
            raise ValueError(f"{p} is a directory without a checkpoint.pt")
        return p / "checkpoint.pt"
    if not p.exists():
        raise ValueError(f"checkpoint not found: {p}")
    return p


def _trajectory_files(items: list[str] | None, final: Path) -> list[Path]:
    """Checkpoint files of a trajectory: given files and folders (their ``step_*.pt`` and
    ``*.pt`` files, in step/name order), or else the run's own ``checkpoints/`` folder."""
    sources = [Path(s) for s in items] if items else [final.parent / "checkpoints"]
    files: list[Path] = []
    for s in sources:
        if s.is_dir():
            found = sorted(
                s.glob("*.pt"),
                key=lambda p: (
                    (int(m.group(1)), "") if (m := _STEP.search(p.name)) else (-1, p.name)
                ),
            )
            files.extend(found)
        elif s.is_file():
            files.append(s)
        elif items:
            raise ValueError(f"trajectory checkpoint not found: {s}")
    return files


def landscape_of_checkpoint(
    checkpoint: str | Path,
    *,
    directions: str = "random",
    dims: int = 2,
    points: int | None = None,
    span: float | None = None,
    trajectory: list[str] | None = None,
    split: str = "train",
    accuracy: bool | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    batched: bool = True,
) -> tuple[Landscape, dict]:
    """The landscape of the model in ``checkpoint`` on its own data and loss.

    ``span``: the grid is [−span, span] per axis (default 1; for ``"pca"`` the
    trajectory's extent). ``trajectory`` (``"pca"``): checkpoint files or folders
    of the same model; default the run's ``checkpoints/`` folder. ``accuracy``:
    None computes it for classification data. Returns the landscape and a
    JSON-ready description (specs, options, timing).
    """
    import time

    from ..engine.checkpoint import load_checkpoint, read_checkpoint
    from ..probes.selection import select_params
    from ..workloads.data import load_dataset
    from ..workloads.losses import make_loss

    if directions not in DIRECTIONS:
        raise ValueError(
            f"unknown directions {directions!r}; choose one of {', '.join(DIRECTIONS)}"
        )
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if span is not None and not (span > 0 and np.isfinite(span)):
        raise ValueError(f"span must be a positive number, got {span!r}")
    path = _resolve(checkpoint)
    model, model_spec, dataset_spec, loss_name, _ = load_checkpoint(path)
    dtype = next(model.parameters()).dtype
    data = load_dataset(**dataset_spec).to(dtype=dtype)
    loss_fn = make_loss(loss_name, num_classes=data.num_classes)
    if accuracy is None:
        accuracy = data.num_classes is not None
    traj = None
    if directions == "pca":
        files = _trajectory_files(trajectory, path)
        if not files:
            raise ValueError(
                "directions 'pca' needs a trajectory: pass --trajectory with checkpoint files "
                "or a folder of them (the run's checkpoints/ folder is empty or missing)"
            )
        names = list(select_params(model))
        traj = []
        for f in files:
            ck = read_checkpoint(f, what="trajectory checkpoint")
            if dict(ck["model_spec"]) != model_spec:
                raise ValueError(f"trajectory checkpoint {f} holds another model than {path}")
            traj.append(torch.cat([ck["state_dict"][k].reshape(-1).to(dtype) for k in names]))
    grid = {}
    if span is not None:
        n = points or (51 if dims == 1 else 21)
        grid["alphas"] = np.linspace(-span, span, n)
        if dims == 2:
            grid["betas"] = np.linspace(-span, span, n)
    started = time.perf_counter()
    land = loss_landscape(
        model, loss_fn, data.train if split == "train" else data.test, directions, dims=dims,
        points=points, seed=seed, trajectory=traj, accuracy=accuracy, chunk_size=chunk_size,
        memory_budget=memory_budget, batched=batched, **grid,
    )  # fmt: skip
    meta = {
        "checkpoint": str(path),
        "model_spec": model_spec,
        "dataset_spec": dataset_spec,
        "loss": loss_name,
        "split": split,
        "directions": directions,
        "dims": dims,
        "seed": seed,
        "dtype": str(dtype).removeprefix("torch."),
        "points": int(land.loss.size),
        "seconds": time.perf_counter() - started,
        "trajectory": [str(f) for f in files] if traj is not None else None,
    }
    if land.eigenvalues is not None:
        meta["eigenvalues"] = [float(v) for v in land.eigenvalues]
    if land.explained_variance_ratio is not None:
        meta["explained_variance_ratio"] = [float(v) for v in land.explained_variance_ratio]
    return land, meta


def _axis_names(land: Landscape) -> tuple[str, str]:
    if land.kind == "pca" and land.explained_variance_ratio is not None:
        r = land.explained_variance_ratio
        return (
            f"α (PC1, {100 * r[0]:.1f}% var.)",
            f"β (PC2, {100 * r[1]:.1f}% var.)" if len(r) > 1 else "β",
        )
    if land.kind == "hessian" and land.eigenvalues is not None:
        e = land.eigenvalues
        return (f"α (v₁, λ₁ = {e[0]:.3g})", f"β (v₂, λ₂ = {e[1]:.3g})" if len(e) > 1 else "β")
    if land.kind == "random":
        return ("α (filter-normalized d₁)", "β (filter-normalized d₂)")
    return ("α", "β")


def plot_landscape(land: Landscape, out_dir: str | Path, *, title: str = "") -> list[Path]:
    """Figures of a landscape: ``landscape_1d.png`` (loss, accuracy on a second axis) or
    ``landscape_contour.png`` (filled contours, the trajectory for PCA) and
    ``landscape_surface.png`` (3-D surface)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from ..report.plots import save_figure

    out = Path(out_dir)
    xa, ya = _axis_names(land)
    paths = []
    with sns.axes_style("whitegrid"):
        if land.dims == 1:
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            ax.plot(land.alphas, land.loss, color="C0", label="loss")
            ax.set_xlabel(xa)
            ax.set_ylabel("loss", color="C0")
            if land.accuracy is not None:
                ax2 = ax.twinx()
                ax2.plot(land.alphas, land.accuracy, color="C1", ls="--", label="accuracy")
                ax2.set_ylabel("accuracy", color="C1")
                ax2.grid(False)
            ax.set_title(title)
            fig.tight_layout()
            paths.append(save_figure(fig, out / "landscape_1d.png"))
            plt.close(fig)
            return paths
        A, B = np.meshgrid(land.alphas, land.betas)
        Z = land.loss
        finite = Z[np.isfinite(Z)]
        zmax = float(np.quantile(finite, 0.95)) if finite.size else 1.0
        zmin = float(finite.min()) if finite.size else 0.0
        levels = np.linspace(zmin, max(zmax, zmin + 1e-12), 25)
        fig, ax = plt.subplots(figsize=(5.5, 4.6))
        cs = ax.contourf(A, B, np.clip(Z, None, zmax), levels=levels, cmap="viridis")
        ax.contour(A, B, Z, levels=levels[::3], colors="white", linewidths=0.5, alpha=0.7)
        fig.colorbar(cs, ax=ax, label="loss")
        if land.trajectory is not None and land.trajectory.shape[1] >= 2:
            t = land.trajectory
            ax.plot(t[:, 0], t[:, 1], "o-", color="C3", ms=3, lw=1, label="trajectory")
            ax.legend(loc="upper left")
        ax.plot([0], [0], "*", color="white", mec="black", ms=11)
        ax.set_xlabel(xa)
        ax.set_ylabel(ya)
        ax.set_title(title)
        fig.tight_layout()
        paths.append(save_figure(fig, out / "landscape_contour.png"))
        plt.close(fig)
    fig = plt.figure(figsize=(6, 4.8))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(A, B, np.clip(Z, None, zmax), cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel(xa)
    ax.set_ylabel(ya)
    ax.set_zlabel("loss")
    ax.set_title(title)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "landscape_surface.png"))
    plt.close(fig)
    return paths


def write_landscape(
    land: Landscape, out_dir: str | Path, meta: dict | None = None, *, figures: bool = True
) -> list[Path]:
    """``landscape.csv`` (tidy: alpha, [beta], loss, [accuracy]), ``landscape.json`` (the
    description) and the figures of :func:`plot_landscape`, in ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot write into {out}: it is a file")
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "landscape.csv"
    land.table().to_csv(csv, index=False, float_format="%.17g")
    paths = [csv]
    if meta is not None:
        (out / "landscape.json").write_text(json.dumps(meta, indent=2) + "\n")
        paths.append(out / "landscape.json")
    if figures:
        spec = (meta or {}).get("model_spec") or {}
        title = f"{spec.get('name', '')} width {spec.get('width', '')}".strip() if spec else ""
        paths.extend(plot_landscape(land, out, title=title))
    return paths


@app.command("landscape")
def landscape(
    checkpoint: str = typer.Argument(
        ..., help="A training checkpoint (checkpoint.pt) or a run directory holding one."
    ),
    directions: str = typer.Option(
        "random", help="random (filter-normalized), hessian (top eigenvectors) or pca."
    ),
    dims: int = typer.Option(2, help="1 (a line) or 2 (a plane)."),
    points: int | None = typer.Option(
        None, help="Grid points per axis (default 51 in 1-D, 21 in 2-D)."
    ),
    span: float | None = typer.Option(
        None, help="Each axis runs over [-span, span] (default 1; pca: the trajectory's extent)."
    ),
    trajectory: list[str] = typer.Option(
        [], "--trajectory", help="pca: checkpoint files or folders of the run (repeatable)."
    ),
    split: str = typer.Option("train", help="Evaluate on the train or test split."),
    accuracy: bool | None = typer.Option(
        None, "--accuracy/--no-accuracy", help="Also the accuracy (default: for classification)."
    ),
    seed: int = typer.Option(0, help="Seed of the random directions (and of Lanczos)."),
    chunk_size: int | None = typer.Option(None, help="Rows per data chunk (default: by memory)."),
    memory_mb: int = typer.Option(
        32, help="Memory budget of one batched pass, MiB (raise it on a GPU)."
    ),
    figures: bool = typer.Option(
        True, "--figures/--no-figures", help="Also draw the figures (else the CSV and JSON only)."
    ),
    loop: bool = typer.Option(
        False, "--loop", help="One grid point at a time instead of vmap blocks (same numbers)."
    ),
    out: str | None = typer.Option(
        None, help="Output folder (default: landscape/ next to the checkpoint)."
    ),
) -> None:
    """Loss (and accuracy) on a line or plane through a trained model: CSV + figures.

    Examples:
      implicit-reg landscape runs/ab12cd34ef56/checkpoint.pt
      implicit-reg landscape runs/ab12cd34ef56 --directions hessian --span 0.5
      implicit-reg landscape final.pt --directions pca --trajectory runs/ab12cd34ef56/checkpoints
    """
    with bad_input():
        if memory_mb < 1:
            raise ValueError(f"memory-mb must be >= 1, got {memory_mb}")
        land, meta = landscape_of_checkpoint(
            checkpoint, directions=directions, dims=dims, points=points, span=span,
            trajectory=trajectory or None, split=split, accuracy=accuracy, seed=seed,
            chunk_size=chunk_size, memory_budget=memory_mb * 2**20, batched=not loop,
        )  # fmt: skip
        folder = Path(out) if out is not None else _resolve(checkpoint).parent / "landscape"
        paths = write_landscape(land, folder, meta, figures=figures)
    i = np.unravel_index(np.nanargmin(land.loss), land.loss.shape)
    typer.echo(
        f"{meta['points']} points in {meta['seconds']:.2f} s; loss at the centre "
        f"{_centre(land):.6g}, min {np.nanmin(land.loss):.6g} at index {tuple(int(j) for j in i)}"
    )
    for p in paths:
        typer.echo(f"wrote {p}")


def _centre(land: Landscape) -> float:
    """The loss at the grid point nearest (0, 0)."""
    ia = int(np.argmin(np.abs(land.alphas)))
    if land.betas is None:
        return float(land.loss[ia])
    return float(land.loss[int(np.argmin(np.abs(land.betas))), ia])
