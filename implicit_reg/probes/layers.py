"""Curvature per layer in one call: :func:`layer_table`.

For each module that owns trainable parameters directly (``"0"``, ``"2"`` of
an ``nn.Sequential``; ``"layers.1.attn"``; or the groups given), the named
probes are run on that module's parameters alone, the rest of the model held
constant (:mod:`implicit_reg.probes.selection`). λ_max of a layer is that of
the principal submatrix H[S, S], not a share of λ_max(H); the traces of the
layers add up to tr(H).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ..core.objective import Data
from .registry import run_probes
from .selection import module_groups, select_params

__all__ = ["layer_table", "format_table"]


def layer_table(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None,
    data: Data,
    *,
    probes: Sequence[str] = ("lambda_max", "trace"),
    modules: Sequence[str] | None = None,
    depth: int | None = None,
    chunk_size: int | None = None,
    seed: int = 0,
    **options,
) -> list[dict[str, object]]:
    """One row per module: ``{"module", "n_params", <probe>: value, ...}``.

    Args:
        model, loss_fn, data: as for :func:`implicit_reg.probes.run_probes`.
        probes: probe names run on each module's parameters.
        modules: module names or globs (each a selection); None: every module
            that owns trainable parameters (:func:`module_groups` with ``depth``).
        depth: group parameters by the first ``depth`` parts of their module name.
        chunk_size, seed, **options: passed to :func:`run_probes` (not ``params``).
    """
    if "params" in options:
        raise ValueError("layer_table chooses the parameters itself; pass modules=... instead")
    groups = list(module_groups(model, depth)) if modules is None else list(modules)
    rows = []
    for name in groups:
        sel = module_groups(model, depth)[name] if modules is None else name
        n_params = sum(p.numel() for p in select_params(model, sel).values())
        values = run_probes(
            list(probes),
            model,
            loss_fn,
            data,
            chunk_size=chunk_size,
            seed=seed,
            params=sel,
            **options,
        )
        rows.append({"module": name, "n_params": n_params, **values})
    return rows


def format_table(rows: Sequence[dict[str, object]], digits: int = 4) -> str:
    """A Markdown table of :func:`layer_table` rows."""
    if not rows:
        return ""
    cols = list(rows[0])
    fmt = lambda v: f"{v:.{digits}g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
