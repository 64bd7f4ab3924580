"""Which parameters a curvature operator measures: :func:`select_params`.

An operator measures θ_S, a subset of the trainable parameters; every other
parameter is held constant at its current value. The Hessian of the loss in
θ_S is then the principal submatrix H[S, S] of the full Hessian (and the same
for the Gauss–Newton matrix and the Fisher), which is what "the curvature of
layer 2" means in PyHessian and hessian-eigenthings.

A selection is one of

- None: every trainable parameter (``requires_grad=True``);
- a list of parameter tensors of the model (matched by identity);
- a predicate on parameter names, ``lambda name: name.startswith("0.")``;
- a string or list of strings, each a module name (``"0"``, ``"layers.2"``:
  all parameters of that submodule) or a glob on parameter names
  (``"layers.0.*"``, ``"*.bias"``; :func:`fnmatch.fnmatchcase`).

Frozen parameters (``requires_grad=False``) are never measured, even when a
selection names them: they are constants of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase

from torch import Tensor, nn

from ..core.objective import trainable_named_params

__all__ = ["Selection", "select_params", "module_groups"]

Selection = None | str | Sequence[str] | Sequence[Tensor] | Callable[[str], bool]


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatchcase(name, pattern)


def select_params(model: nn.Module, params: Selection = None) -> dict[str, Tensor]:
    """The measured parameters ``{name: tensor}`` in ``named_parameters()`` order.

    Raises ``ValueError`` when the selection is malformed, names a tensor that
    is not a trainable parameter of ``model``, or selects nothing.
    """
    named = trainable_named_params(model)
    if not named:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    if params is None:
        chosen = named
    elif callable(params) and not isinstance(params, nn.Module):
        chosen = {k: p for k, p in named.items() if params(k)}
    elif isinstance(params, str) or (
        isinstance(params, Sequence) and params and all(isinstance(s, str) for s in params)
    ):
        patterns = [params] if isinstance(params, str) else list(params)
        chosen = {k: p for k, p in named.items() if any(_matches(k, s) for s in patterns)}
        unused = [s for s in patterns if not any(_matches(k, s) for k in named)]
        if unused:
            raise ValueError(
                f"parameter selection {unused} matches no trainable parameter; "
                f"trainable: {', '.join(named)}"
            )
    elif isinstance(params, Sequence) and params and all(isinstance(t, Tensor) for t in params):
        ids = {id(t) for t in params}
        chosen = {k: p for k, p in named.items() if id(p) in ids}
        if len(chosen) != len(ids):
            raise ValueError(
                "every tensor in params must be a trainable parameter (requires_grad=True) "
                "of the model"
            )
    else:
        raise ValueError(
            "params must be None, a list of parameter tensors, a predicate on names, or "
            f"module names / globs (str or list of str), got {params!r}"
        )
    if not chosen:
        raise ValueError(f"the parameter selection is empty; trainable: {', '.join(named)}")
    return chosen


def module_groups(model: nn.Module, depth: int | None = None) -> dict[str, list[str]]:
    """Trainable parameter names grouped by the module that owns them directly.

    ``{"0": ["0.weight", "0.bias"], "2": [...], ...}`` in order. With ``depth``
    the module name is cut to its first ``depth`` dotted parts (``depth=1``:
    one group per top-level child).
    """
    groups: dict[str, list[str]] = {}
    for name in trainable_named_params(model):
        parts = name.split(".")[:-1]
        if depth is not None:
            parts = parts[:depth]
        groups.setdefault(".".join(parts) or "(root)", []).append(name)
    return groups
