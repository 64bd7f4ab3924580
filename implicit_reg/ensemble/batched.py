"""The fast ensemble: M runs of one model family trained as stacked tensors at batched-matmul speed.

One step for all live members (issue 19, part 1):

1. the minibatch indices of every member at once, ``idx`` of shape ``[M, B]``
   (:class:`StackedOrder`): row m is exactly the batch member m's serial run
   draws, one ``torch.randperm(N, generator=Generator().manual_seed(seed_m))``
   per epoch cut into consecutive batches
   (:class:`~implicit_reg.ensemble.vectorized.MinibatchOrder`);
2. the inputs ``x[idx]`` and targets, one gather;
3. the forward pass, one ``baddbmm`` (or, for the CNN, one grouped convolution) per
   layer (:mod:`implicit_reg.ensemble.stacked`), and one loss over the stacked outputs, giving (L_m(θ_m))_m of shape ``[M]``;
4. one backward pass of 𝓛 = Σ_m L_m, which gives every member its own ∇L_m
   (members share no parameters);
5. the update, in place over the stacked tensors with ``torch._foreach_*``:
   ``torch.optim.SGD``'s rule (Sutskever et al. 2013, in torch's form),

       d = g + λθ;   b ← d (first step), b ← β·b + (1 − τ)·d;
       d = d + β·b (Nesterov) or b;   θ ← θ − h·d,

   with h, β, λ per member (scalars when the members share them) and no copy
   of the parameters; GD is the case β = λ = 0. Or ``torch.optim.Adam``'s rule
   (Kingma & Ba 2015, torch's form with ε outside the root), at step t ≥ 1:

       d = g + λθ;   m ← β₁m + (1 − β₁)d;   v ← β₂v + (1 − β₂)d²;
       θ ← θ − h·(m / (1 − β₁ᵗ)) / (√v / √(1 − β₂ᵗ) + ε),

   with h and λ per member and β₁, β₂, ε shared.

The per-member losses stay on the device; :meth:`BatchedEnsemble.step`
returns them as a tensor and the caller decides when to read them (the
engine's loop reads them every step for its divergence rule: one copy of M
numbers, negligible on CPU).

Members of different widths of one family are packed (zero padding and masks,
see :mod:`implicit_reg.ensemble.stacked`; not the CNN); each member's numbers equal its
serial run's to rounding (``tests/test_batched.py``, ``tests/test_stacked_cnn.py``:
float64, 1e-10 relative).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap
from torch.nn import functional as F

from ..core.objective import load_trainable_params
from .stacked import StackedModel, stacked_model

__all__ = ["FAST_RULES", "StackedOrder", "stacked_loss", "BatchedEnsemble"]

#: the update rules the fast ensemble applies (EGR and the sharpness optimizers use
#: the generic :class:`~implicit_reg.ensemble.vectorized.VectorizedEnsemble`)
FAST_RULES = ("gd", "sgd", "adam")


class StackedOrder:
    """Minibatch indices of M members at once: ``next()`` is an ``[M, B]`` index tensor
    whose row m is the next batch of :class:`~implicit_reg.ensemble.vectorized.MinibatchOrder`
    with member m's generator (each epoch ``torch.randperm(n, generator=g_m)`` cut
    into batches of ``batch_size``; the last batch of an epoch may be smaller)."""

    def __init__(self, n: int, batch_size: int, seeds: Sequence[int], device=None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if n < 1:
            raise ValueError("the data set is empty")
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self._pending: list[Tensor] = []

    def __next__(self) -> Tensor:
        if not self._pending:
            perms = torch.stack([torch.randperm(self.n, generator=g) for g in self.generators])
            perms = perms.to(self.device)
            self._pending = list(perms.split(self.batch_size, dim=1))
        return self._pending.pop(0)

    def select(self, keep: list[int]) -> None:
        """Keep members at stack positions ``keep`` (in that order)."""
        self.generators = [self.generators[i] for i in keep]
        idx = torch.tensor(keep, dtype=torch.long)
        self._pending = [b[idx.to(b.device)] for b in self._pending]

    def state_dict(self) -> dict[str, Any]:
        return {
            "generators": [g.get_state() for g in self.generators],
            "pending": [b.cpu().clone() for b in self._pending],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["generators"]) != len(self.generators):
            raise ValueError("the saved order has a different number of members")
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)
        self._pending = [b.to(self.device).clone() for b in state["pending"]]


def _plain_cross_entropy(loss_fn: nn.Module) -> bool:
    return (
        type(loss_fn) is nn.CrossEntropyLoss
        and loss_fn.weight is None
        and loss_fn.reduction == "mean"
        and loss_fn.label_smoothing == 0.0
    )


def stacked_loss(loss_fn) -> Any:
    """``(outputs [M, n, k], targets [M, n, …]) -> [M]``, member m's mean loss.

    Cross-entropy (the default ``nn.CrossEntropyLoss``) is one call over the
    ``M·n`` rows, ``F.cross_entropy(reduction="none")`` averaged per member;
    any other mean-reduced loss runs under ``vmap``."""
    if _plain_cross_entropy(loss_fn):
        ignore = loss_fn.ignore_index

        def ce(out: Tensor, y: Tensor) -> Tensor:
            if y.is_floating_point():  # probabilities: torch's mean over rows
                per = F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none")
                return per.view(out.shape[:2]).mean(1)
            per = F.cross_entropy(
                out.flatten(0, 1), y.flatten(), reduction="none", ignore_index=ignore
            )
            return per.view(out.shape[:2]).mean(1)

        return ce
    return vmap(loss_fn)


def _per_member(name: str, values, size: int, *, minimum: float = 0.0) -> list[float]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values] * size
    values = [float(v) for v in values]
    if len(values) != size:
        raise ValueError(f"need one {name} per member ({size}), got {len(values)}")
    for v in values:
        if not math.isfinite(v) or v < minimum:
            raise ValueError(f"{name} must be finite numbers >= {minimum}, got {v!r}")
    return values


class _Hyper:
    """One hyperparameter of all members: a Python float when they share it (foreach with
    a scalar), else per-member views ``[M, 1, 1]`` for each stacked parameter."""

    def __init__(self, values: list[float], params: Sequence[Tensor]) -> None:
        self.values = values
        self.shared = len(set(values)) == 1
        self.scalar = values[0] if self.shared else None
        ref = params[0]
        t = torch.tensor(values, dtype=ref.dtype, device=ref.device)
        self.views = [t.view(-1, *([1] * (p.dim() - 1))) for p in params]

    @property
    def zero(self) -> bool:
        return self.shared and self.scalar == 0.0

    def select(self, keep: list[int], params: Sequence[Tensor]) -> _Hyper:
        return _Hyper([self.values[i] for i in keep], params)


class BatchedEnsemble:
    """M members of one model family (:func:`~implicit_reg.ensemble.stacked.stacked_model`),
    trained by GD or SGD as stacked tensors; see the module docstring.

    Member m has its own initialization (its model), step ``lr[m]``, momentum
    ``momentum[m]``, weight decay ``weight_decay[m]``, targets ``y[m]`` (its
    label-noise draw), inputs ``x[m]`` (with ``x_per_member``) and minibatch order
    (``seeds[m]``; full batch when ``batch_size`` is None). Dampening and
    Nesterov are shared. :meth:`step` never drops a member: divergence is the
    caller's rule; :meth:`retire` takes members out of the computation.

    Raises ``ValueError`` when the models have no stacked form (use
    :class:`~implicit_reg.ensemble.vectorized.VectorizedEnsemble`).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        loss_fn,
        x: Tensor,
        y: Tensor,
        *,
        optimizer: str = "sgd",
        lr: float | Sequence[float],
        momentum: float | Sequence[float] = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float | Sequence[float] = 0.0,
        batch_size: int | None = None,
        seeds: Sequence[int] | None = None,
        x_per_member: bool = False,
        y_per_member: bool = False,
        chunk_size: int | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if optimizer not in FAST_RULES:
            raise ValueError(
                f"the fast ensemble applies {', '.join(FAST_RULES)}, not {optimizer!r}; "
                "use VectorizedEnsemble"
            )
        models = list(models)
        stacked = stacked_model(models)
        if stacked is None:
            raise ValueError(
                f"{type(models[0]).__name__} has no stacked (batched-matmul) form; "
                "use VectorizedEnsemble"
            )
        for model in models:
            for name, p in model.named_parameters():
                if p.requires_grad != (name in stacked.names):
                    raise ValueError("members must share which parameters are trainable")
        size = len(models)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        if not math.isfinite(dampening) or dampening < 0:
            raise ValueError(f"dampening must be a finite number >= 0, got {dampening!r}")
        lrs = _per_member("lr", lr, size)
        moms = _per_member("momentum", momentum, size)
        wds = _per_member("weight_decay", weight_decay, size)
        if optimizer == "gd" and (any(moms) or any(wds)):
            raise ValueError("gd has no momentum or weight decay; use optimizer='sgd'")
        if optimizer == "adam":
            if any(moms) or nesterov or dampening:
                raise ValueError(
                    "adam takes no momentum, nesterov or dampening (its β₁ is betas[0])"
                )
            b1, b2 = (float(b) for b in betas)
            if not (0 <= b1 < 1 and 0 <= b2 < 1) or not (math.isfinite(eps) and eps >= 0):
                raise ValueError(f"adam needs betas in [0, 1) and eps >= 0, got {betas}, {eps}")
        if nesterov and (min(moms) <= 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 for every member and dampening = 0")
        if dampening != 0 and any(m == 0 for m in moms) and any(moms):
            raise ValueError(
                "with dampening, members without momentum cannot share an ensemble with "
                "members with momentum (torch applies no dampening without a buffer)"
            )
        for t, per, what in ((x, x_per_member, "x"), (y, y_per_member, "y")):
            if per and t.shape[0] != size:
                raise ValueError(
                    f"{what} is per member but has {t.shape[0]} rows for {size} members"
                )
        n = x.shape[1] if x_per_member else x.shape[0]
        if (y.shape[1] if y_per_member else y.shape[0]) != n:
            raise ValueError("inputs and targets differ in length")
        if n == 0:
            raise ValueError("the data set is empty")
        self.stacked: StackedModel = stacked
        self.loss_fn, self._loss = loss_fn, stacked_loss(loss_fn)
        self.x, self.y = x, (y if y_per_member else y.expand(size, *y.shape))
        self.x_per_member = x_per_member
        self.n, self.batch_size, self.chunk_size = n, batch_size, chunk_size
        self.dampening, self.nesterov = float(dampening), bool(nesterov)
        self.params = tuple(p.requires_grad_(True) for p in stacked.stack())
        self.lr = _Hyper(lrs, self.params)
        self.momentum = _Hyper(moms, self.params)
        self.weight_decay = _Hyper(wds, self.params)
        self.optimizer, self.betas, self.eps = optimizer, tuple(float(b) for b in betas), float(eps)
        self.bufs: list[Tensor] | None = None  # SGD's momentum buffers, or Adam's (m, v)
        self.order = None
        if batch_size is not None:
            if seeds is None or len(seeds) != size:
                raise ValueError("minibatch training needs one seed per member (seeds)")
            self.order = StackedOrder(n, batch_size, seeds, device=x.device)
        self.live = list(range(size))
        self.final: list[dict[str, Tensor] | None] = [None] * size
        self._final_buffers: dict[int, dict[str, Tensor]] = {}
        self.steps_done = 0
        self._rows = torch.arange(size, device=x.device)[:, None]

    @property
    def size(self) -> int:
        """M, the number of members (those no longer training included)."""
        return len(self.final)

    # ----------------------------------------------------------- the step
    def _batch(self) -> tuple[Tensor, Tensor, bool]:
        if self.order is None:
            return self.x, self.y, self.x_per_member
        idx = next(self.order)  # [M, B]
        xb = self.x[self._rows, idx] if self.x_per_member else self.x[idx]
        yb = self.y[self._rows.to(self.y.device), idx.to(self.y.device)]
        return xb, yb, True

    def gradient(
        self,
        x: Tensor,
        y: Tensor,
        *,
        x_batched: bool,
        chunk_size: int | None = None,
        stats: str = "batch",
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Per-member mean losses ``[M]`` and gradients ∇L_m over (x, y), accumulated over
        chunks of ``chunk_size`` rows weighted n_c/N (independent of the chunk size).

        With BatchNorm (``stacked.batch_coupled``) the batch is chunked by the
        ensemble's own ``chunk_size``, as its serial runs chunk it (the result then
        depends on the chunking, as theirs does), and ``stats`` says what happens to
        the running statistics: ``"update"`` moves them, as the serial run's training
        step does, only when the batch is one chunk (the serial chunked path runs on
        copies); ``"batch"`` leaves them (an evaluation's ‖∇L‖²)."""
        n = x.shape[1] if x_batched else x.shape[0]
        if self.stacked.batch_coupled:
            chunk_size = self.chunk_size
        step = n if chunk_size is None else chunk_size
        if step < n and stats == "update":
            stats = "batch"
        losses, grads = None, None
        for i in range(0, n, step):
            xc = x[:, i : i + step] if x_batched else x[i : i + step]
            yc = y[:, i : i + step]
            with torch.enable_grad():
                out = self.stacked.forward(self.params, xc, x_batched=x_batched, stats=stats)
                lc = self._loss(out, yc)
                if step < n:
                    lc = lc * (xc.shape[1 if x_batched else 0] / n)
                gs = torch.autograd.grad(lc.sum(), self.params)
            losses = lc.detach() if losses is None else losses + lc.detach()
            grads = gs if grads is None else torch._foreach_add(grads, gs)
        return losses, tuple(grads)

    def step(self) -> Tensor:
        """One update of every live member; returns the batch losses L_m(θ_t) ``[live]``
        at the iterate before the update (on the device, unread)."""
        if not self.live:
            raise ValueError("no member is training any more")
        x, y, xb = self._batch()
        losses, grads = self.gradient(
            x, y, x_batched=xb, chunk_size=self.chunk_size, stats="update"
        )
        with torch.no_grad():
            if self.optimizer == "adam":
                self._adam(list(grads))
            else:
                self._update(list(grads))
        self.steps_done += 1
        return losses

    def _update(self, d: list[Tensor]) -> None:
        """torch.optim.SGD's update (GD: β = λ = 0), in place; see the module docstring."""
        params = list(self.params)
        wd, mom, lr = self.weight_decay, self.momentum, self.lr
        if not wd.zero:
            if wd.shared:
                d = torch._foreach_add(d, params, alpha=wd.scalar)
            else:
                d = [torch.addcmul(g, p, v) for g, p, v in zip(d, params, wd.views)]
        if not mom.zero:
            if self.bufs is None:
                self.bufs = [t.detach().clone() for t in d]
            else:
                if mom.shared:
                    torch._foreach_mul_(self.bufs, mom.scalar)
                else:
                    for b, v in zip(self.bufs, mom.views):
                        b.mul_(v)
                torch._foreach_add_(self.bufs, d, alpha=1 - self.dampening)
            if self.nesterov:
                if mom.shared:
                    d = torch._foreach_add(d, self.bufs, alpha=mom.scalar)
                else:
                    d = [torch.addcmul(g, b, v) for g, b, v in zip(d, self.bufs, mom.views)]
            else:
                d = self.bufs
        if lr.shared:
            torch._foreach_add_(params, d, alpha=-lr.scalar)
        else:
            for p, g, v in zip(params, d, lr.views):
                p.addcmul_(g, v, value=-1)

    def _adam(self, d: list[Tensor]) -> None:
        """torch.optim.Adam's update (foreach form, ε outside the root), in place; the step
        count t is shared: members train in lockstep (see the module docstring)."""
        params = list(self.params)
        wd, lr = self.weight_decay, self.lr
        b1, b2 = self.betas
        if not wd.zero:
            if wd.shared:
                d = torch._foreach_add(d, params, alpha=wd.scalar)
            else:
                d = [torch.addcmul(g, p, v) for g, p, v in zip(d, params, wd.views)]
        if self.bufs is None:
            self.bufs = [torch.zeros_like(p) for p in params + params]
        m, v = self.bufs[: len(params)], self.bufs[len(params) :]
        t = self.steps_done + 1
        torch._foreach_lerp_(m, d, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, d, d, 1 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(1 - b2**t))
        torch._foreach_add_(denom, self.eps)
        if lr.shared:
            torch._foreach_addcdiv_(params, m, denom, -lr.scalar / (1 - b1**t))
        else:
            for p, mi, di, h in zip(params, m, denom, lr.views):
                p.addcdiv_(mi * (h / (1 - b1**t)), di, value=-1)

    # ------------------------------------------------------ members in and out
    def outputs(self, x: Tensor, *, x_batched: bool) -> Tensor:
        """Every live member's outputs ``[M, n, k]``, without autograd (BatchNorm in eval
        mode: running statistics)."""
        with torch.no_grad():
            return self.stacked.forward(self.params, x, x_batched=x_batched, stats="running")

    def retire(self, members: Iterable[int]) -> None:
        """Stop training ``members`` (they keep their current parameters)."""
        members = set(members)
        unknown = members - set(self.live)
        if unknown:
            raise ValueError(f"members {sorted(unknown)} are not training; live: {self.live}")
        if not members:
            return
        for m in members:
            self.final[m] = self.stacked.member_state(self.params, self.live.index(m))
            self._final_buffers[m] = self.stacked.member_buffers(self.live.index(m))
        keep_pos = [i for i, m in enumerate(self.live) if m not in members]
        self._select(keep_pos)
        self.live = [self.live[i] for i in keep_pos]

    def _select(self, keep_pos: list[int]) -> None:
        keep = torch.tensor(keep_pos, dtype=torch.long, device=self.params[0].device)
        self.stacked = self.stacked.select(keep)
        self.params = tuple(p.detach()[keep].requires_grad_(True) for p in self.params)
        if self.bufs is not None:
            self.bufs = [b[keep] for b in self.bufs]
        self.lr = self.lr.select(keep_pos, self.params)
        self.momentum = self.momentum.select(keep_pos, self.params)
        self.weight_decay = self.weight_decay.select(keep_pos, self.params)
        if self.x_per_member:
            self.x = self.x[keep.to(self.x.device)]
        self.y = self.y[keep.to(self.y.device)]
        if self.order is not None:
            self.order.select(keep_pos)
        self._rows = torch.arange(len(keep_pos), device=self.x.device)[:, None]

    def member_params(self, m: int) -> dict[str, Tensor]:
        """Member ``m``'s trainable parameters by name, in its own shapes (its last iterate)."""
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < self.size:
            raise ValueError(f"no member {m!r}; members are 0..{self.size - 1}")
        if self.final[m] is not None:
            return dict(self.final[m])
        return self.stacked.member_state(self.params, self.live.index(m))

    def member_buffers(self, m: int) -> dict[str, Tensor]:
        """Member ``m``'s trained buffers (BatchNorm running statistics) by name; empty
        for models without."""
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m < self.size:
            raise ValueError(f"no member {m!r}; members are 0..{self.size - 1}")
        if self.final[m] is not None:
            return dict(self._final_buffers.get(m, {}))
        return self.stacked.member_buffers(self.live.index(m))

    def load_member(self, m: int, model: nn.Module) -> nn.Module:
        """Copy member ``m``'s parameters (and trained buffers) into ``model`` (its
        architecture); returns it."""
        model = load_trainable_params(model, self.member_params(m))
        bufs = self.member_buffers(m)
        if bufs:
            own = dict(model.named_buffers())
            with torch.no_grad():
                for name, t in bufs.items():
                    own[name].copy_(t)
        return model

    def state_dict(self) -> dict[str, Any]:
        """The live members' stacked parameters and momentum buffers, their data order, the
        retired members' last parameters and the step count (for checkpoints)."""
        return {
            "live": list(self.live),
            "params": [p.detach().clone() for p in self.params],
            "bufs": None if self.bufs is None else [b.clone() for b in self.bufs],
            "order": None if self.order is None else self.order.state_dict(),
            "final": [None if f is None else dict(f) for f in self.final],
            "final_buffers": {m: dict(b) for m, b in self._final_buffers.items()},
            "buffers": {k: v.clone() for k, v in self.stacked.buffers().items()},
            "steps_done": self.steps_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into an ensemble built with the same arguments."""
        if len(state["final"]) != self.size or self.live != list(range(self.size)):
            raise ValueError("load_state_dict needs a freshly built ensemble of the same members")
        keep_pos = [m for m in range(self.size) if m in set(state["live"])]
        if keep_pos != list(state["live"]):
            raise ValueError("the saved live members are not in member order")
        self._select(keep_pos)
        self.live = list(keep_pos)
        like = self.params[0]
        self.params = tuple(p.to(like.device).requires_grad_(True) for p in state["params"])
        self.bufs = None if state["bufs"] is None else [b.to(like.device) for b in state["bufs"]]
        if self.order is not None:
            self.order.load_state_dict(state["order"])
        self.final = [None if f is None else dict(f) for f in state["final"]]
        self._final_buffers = {int(m): dict(b) for m, b in state.get("final_buffers", {}).items()}
        if state.get("buffers"):
            self.stacked.load_buffers(state["buffers"])
        self.steps_done = int(state["steps_done"])
