"""Ensembles at batched-matmul speed: the forward pass of M members as one ``baddbmm`` per layer.

The generic ensemble (:mod:`implicit_reg.ensemble.vectorized`) runs any module
under ``vmap(functional_call)``; that is general but pays per-call overhead
that dominates small models. For the model families the experiments use, this
module stacks member m's layer ``y = x Wᵀ + b`` as a slice of

    Y[m] = X[m] · Wt[m] + b[m],      Wt: [M, in, out],  b: [M, 1, out],

one ``torch.baddbmm`` for the whole ensemble (the "hand-written batched
matmul" of issue 19). The parameters are plain stacked leaf tensors, so the
optimizer update can run in place over them with ``torch._foreach_*``
(:mod:`implicit_reg.ensemble.batched`).

**Widths packed together.** Members of one family may differ in hidden width
(issue 19, part 3). Each is padded to the largest width of its pack: the
padded rows/columns of every weight and bias start at zero and each hidden
activation is multiplied by a 0/1 mask of the member's real units, so padded
units have zero output, contribute nothing forward and receive exactly zero
gradient (hence stay zero under SGD with momentum and weight decay). The real
entries are member m's own initialization (its own model built from its own
seed at its real fan-in), so a packed member computes its standalone run's
function; only the order of a BLAS kernel's summation may differ (padded zeros
are added), so packed runs equal their serial runs to rounding, not bit for bit.
The mask is skipped when the activation maps 0 to 0 (ReLU, tanh, GELU, …):
there zero padding alone keeps the padded units at exactly zero.

**Convolutions as one grouped convolution.** :class:`StackedCNN` puts member
m's feature maps in channels ``[m·c, (m+1)·c)`` of one tensor ``[n, M·c, H, W]``
and runs each layer ``Conv2d(c_in, c_out)`` of all members as one
``conv2d(groups=M)`` with weight ``[M·c_out, c_in, 3, 3]`` (a view of the stacked
``[M, c_out, c_in, 3, 3]``): group m sees only member m's input channels. BatchNorm,
ReLU and max-pooling act per channel, so on this layout they are already per
member: ``F.batch_norm`` over ``[n, M·c, H, W]`` normalizes each member's channel by
its own batch statistics, and updates each member's own running statistics.

**Batch statistics.** A model with BatchNorm couples the rows of a batch, so its
forward pass takes a ``stats`` mode, the three ways the serial engine runs it:
``"update"`` (train mode; running statistics updated: a training step, as a
plain torch loop), ``"batch"`` (train mode on copies of the running statistics,
which do not move: :func:`implicit_reg.core.objective.full_gradient`'s
‖∇L‖² at an evaluation) and ``"running"`` (eval mode: losses and errors).
Models without BatchNorm ignore it.

Supported: :class:`~implicit_reg.workloads.models.MLP` (any depth and
activation), :class:`~implicit_reg.workloads.models.RandomFeatures` and
:class:`~implicit_reg.workloads.models.CNN` (Nakkiran et al.'s family, one width
per pack: no padding of channels). A new family is a new :class:`StackedModel`
subclass registered in :data:`STACKERS`; :func:`stacked_model` returns None for
other modules, which stay on the generic path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..core.objective import trainable_named_params

__all__ = [
    "StackedModel",
    "StackedMLP",
    "StackedRandomFeatures",
    "StackedCNN",
    "STATS_MODES",
    "STACKERS",
    "stacked_model",
]

#: how a forward pass treats BatchNorm (see the module docstring)
STATS_MODES = ("update", "batch", "running")


def _check_members(models: Sequence[nn.Module]) -> None:
    if not models:
        raise ValueError("need at least one model")
    first = models[0]
    for m in models:
        if type(m) is not type(first):
            raise ValueError("all members must be of one model class")
        p, q = next(iter(m.parameters())), next(iter(first.parameters()))
        if p.dtype != q.dtype or p.device != q.device:
            raise ValueError("all members must share one dtype and device")


def _pad(t: Tensor, shape: Sequence[int]) -> Tensor:
    """``t`` in the top-left corner of a zero tensor of ``shape``."""
    out = t.new_zeros(shape)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


class StackedModel:
    """M members' forward pass over stacked parameters.

    Attributes:
        names: member m's trainable parameter names (``trainable_named_params``
            order); ``params[j]`` stacks parameter ``names[j]`` of every member.
        size: M.
    """

    names: tuple[str, ...]
    #: whether the rows of a batch are coupled (BatchNorm): then a batch must be chunked
    #: exactly as its serial run chunks it, and ``stats`` matters
    batch_coupled: bool = False

    def stack(self) -> tuple[Tensor, ...]:
        """The stacked (padded) parameters, fresh tensors."""
        raise NotImplementedError

    def forward(
        self, params: Sequence[Tensor], x: Tensor, *, x_batched: bool, stats: str = "update"
    ) -> Tensor:
        """Outputs ``[M, n, out]`` for inputs ``[n, …]`` shared or ``[M, n, …]`` per member;
        ``stats``: BatchNorm's mode (:data:`STATS_MODES`), ignored without BatchNorm."""
        raise NotImplementedError

    def buffers(self) -> dict[str, Tensor]:
        """The stacked buffers that training changes (BatchNorm running statistics) by
        member-module name, ``[M, …]``; empty for models without."""
        return {}

    def load_buffers(self, buffers: dict[str, Tensor]) -> None:
        """Replace :meth:`buffers` (a checkpoint's)."""
        if buffers:
            raise ValueError(f"{type(self).__name__} has no buffers to load")

    def member_buffers(self, i: int) -> dict[str, Tensor]:
        """Stack position i's buffers by name, in its module's own shapes."""
        return {}

    def member_state(self, params: Sequence[Tensor], i: int) -> dict[str, Tensor]:
        """Stack position i's parameters by name, in its module's own shapes (padding cut)."""
        raise NotImplementedError

    def select(self, keep: Tensor) -> StackedModel:
        """The stacked model of the members at stack positions ``keep``."""
        raise NotImplementedError


def _inputs(x: Tensor, size: int, x_batched: bool) -> Tensor:
    x = x.flatten(2) if x_batched else x.flatten(1)
    return x if x_batched else x.expand(size, *x.shape)


class StackedMLP(StackedModel):
    """:class:`~implicit_reg.workloads.models.MLP` members, widths padded to the largest."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        _check_members(models)
        self.models = list(models)
        linears = [[m for m in model.net if isinstance(m, nn.Linear)] for model in models]
        acts = [m for m in models[0].net if not isinstance(m, nn.Linear)]
        if any(len(ls) != len(linears[0]) for ls in linears):
            raise ValueError("packed MLP members must share one depth")
        kinds = {tuple(type(a) for a in model.net) for model in models}
        if len(kinds) != 1:
            raise ValueError("packed MLP members must share one layer sequence (activation)")
        self.act = acts[0] if acts else None
        self.depth = len(linears[0]) - 1
        self.widths = [ls[0].out_features if self.depth else 0 for ls in linears]
        self.width = max(self.widths)
        ref = linears[0][0].weight
        self.size = len(models)
        self.names = tuple(trainable_named_params(models[0]))
        # a hidden-unit mask only where padding exists and σ(0) ≠ 0
        padded = len(set(self.widths)) > 1
        zero_fixed = self.act is None or bool(
            (self.act(torch.zeros(1, dtype=ref.dtype)) == 0).all()
        )
        self.masks: Tensor | None = None
        if padded and not zero_fixed:
            rows = torch.arange(self.width, device=ref.device)
            w = torch.tensor(self.widths, device=ref.device)
            self.masks = (rows[None, :] < w[:, None]).to(ref.dtype)[:, None, :]  # [M, 1, W]
        self._linears = linears

    def _shapes(self) -> list[tuple[int, int]]:
        lin = self._linears[0]
        dims = [lin[0].in_features] + [self.width] * self.depth + [lin[-1].out_features]
        return list(zip(dims[:-1], dims[1:]))

    def stack(self) -> tuple[Tensor, ...]:
        out = []
        for j, (fan_in, fan_out) in enumerate(self._shapes()):
            out.append(
                torch.stack(
                    [_pad(ls[j].weight.detach().T, (fan_in, fan_out)) for ls in self._linears]
                )
            )
            if self._linears[0][j].bias is not None:
                out.append(
                    torch.stack(
                        [_pad(ls[j].bias.detach()[None], (1, fan_out)) for ls in self._linears]
                    )
                )
        return tuple(out)

    def forward(
        self, params: Sequence[Tensor], x: Tensor, *, x_batched: bool, stats: str = "update"
    ) -> Tensor:
        h = _inputs(x, self.size, x_batched)
        k = 0
        for j in range(self.depth + 1):
            if self._linears[0][j].bias is not None:
                h = torch.baddbmm(params[k + 1], h, params[k])
                k += 2
            else:
                h = torch.bmm(h, params[k])
                k += 1
            if j < self.depth:
                h = self.act(h)
                if self.masks is not None:
                    h = h * self.masks
        return h

    def member_state(self, params: Sequence[Tensor], i: int) -> dict[str, Tensor]:
        out, k = {}, 0
        for lin in self._linears[i]:
            out[self.names[k]] = (
                params[k][i, : lin.in_features, : lin.out_features].detach().T.clone()
            )
            k += 1
            if lin.bias is not None:
                out[self.names[k]] = params[k][i, 0, : lin.out_features].detach().clone()
                k += 1
        return out

    def select(self, keep: Tensor) -> StackedMLP:
        new = object.__new__(StackedMLP)
        new.__dict__.update(self.__dict__)
        idx = keep.tolist()
        new.models = [self.models[i] for i in idx]
        new._linears = [self._linears[i] for i in idx]
        new.widths = [self.widths[i] for i in idx]
        new.size = len(idx)
        new.masks = None if self.masks is None else self.masks[keep]
        return new


class StackedRandomFeatures(StackedModel):
    """:class:`~implicit_reg.workloads.models.RandomFeatures` members: the fixed features
    ``√(2/N)·σ(Wx + b)`` as one ``baddbmm``, then the trainable readout as another.
    Members of different N are padded: padded features are scaled by 0 (not by
    √(2/N)), so cos(0) = 1 on a padded feature contributes nothing."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        _check_members(models)
        self.models = list(models)
        if len({m.kind for m in models}) != 1 or len({m.input_dim for m in models}) != 1:
            raise ValueError("packed random-features members must share kind and input size")
        if len({m.readout.bias is None for m in models}) != 1:
            raise ValueError("packed random-features members must all have a readout bias or none")
        self.kind = models[0].kind
        self.size = len(models)
        self.widths = [m.num_features for m in models]
        self.width = max(self.widths)
        self.names = tuple(trainable_named_params(models[0]))
        if set(self.names) - {"readout.weight", "readout.bias"}:
            raise ValueError("only the readout of a random-features model may be trainable")
        w = self.width
        self.feature_weight = torch.stack(
            [_pad(m.feature_weight.detach().T, (m.input_dim, w)) for m in models]
        )  # [M, d, N]
        self.feature_bias = torch.stack(
            [_pad(m.feature_bias.detach()[None], (1, w)) for m in models]
        )
        ref = self.feature_weight
        # √(2/N_m) on member m's features, 0 on padding: the same float as the module's
        self.scale = torch.stack(
            [_pad(torch.full((1, n), math.sqrt(2.0 / n), dtype=ref.dtype, device=ref.device), (1, w))
             for n in self.widths]
        )  # fmt: skip

    def stack(self) -> tuple[Tensor, ...]:
        w, out = self.width, []
        k = self.models[0].readout.out_features
        out.append(torch.stack([_pad(m.readout.weight.detach().T, (w, k)) for m in self.models]))
        if self.models[0].readout.bias is not None:
            out.append(torch.stack([m.readout.bias.detach()[None].clone() for m in self.models]))
        return tuple(out)

    def forward(
        self, params: Sequence[Tensor], x: Tensor, *, x_batched: bool, stats: str = "update"
    ) -> Tensor:
        z = torch.baddbmm(self.feature_bias, _inputs(x, self.size, x_batched), self.feature_weight)
        phi = (torch.relu(z) if self.kind == "relu" else torch.cos(z)) * self.scale
        if len(params) == 2:
            return torch.baddbmm(params[1], phi, params[0])
        return torch.bmm(phi, params[0])

    def member_state(self, params: Sequence[Tensor], i: int) -> dict[str, Tensor]:
        out = {"readout.weight": params[0][i, : self.widths[i]].detach().T.clone()}
        if len(params) == 2:
            out["readout.bias"] = params[1][i, 0].detach().clone()
        return out

    def select(self, keep: Tensor) -> StackedRandomFeatures:
        new = object.__new__(StackedRandomFeatures)
        new.__dict__.update(self.__dict__)
        idx = keep.tolist()
        new.models = [self.models[i] for i in idx]
        new.widths = [self.widths[i] for i in idx]
        new.size = len(idx)
        for name in ("feature_weight", "feature_bias", "scale"):
            setattr(new, name, getattr(self, name)[keep])
        return new


class StackedCNN(StackedModel):
    """:class:`~implicit_reg.workloads.models.CNN` members of one width, as grouped
    convolutions over member-stacked channels (see the module docstring).

    Walks the member's ``features`` (``Conv2d``, ``BatchNorm2d``, the activation,
    ``MaxPool2d``, ``AdaptiveMaxPool2d``), then its linear ``readout`` as one
    ``baddbmm``. Stacked shapes: a conv weight ``[M, c_out, c_in, 3, 3]``, every
    per-channel vector (conv bias if any, BatchNorm weight and bias, running mean and
    variance) ``[M, c]``, the readout ``[M, 8k, classes]`` and ``[M, 1, classes]``.
    """

    batch_coupled = True

    def __init__(self, models: Sequence[nn.Module]) -> None:
        _check_members(models)
        self.models = list(models)
        first = models[0]
        if len({(m.side, m.readout.in_features) for m in models}) != 1:
            raise ValueError("stacked CNN members must share one width and input size")
        kinds = {tuple(type(layer) for layer in m.features) for m in models}
        if len(kinds) != 1:
            raise ValueError("stacked CNN members must share one layer sequence")
        for layer in first.features:
            if isinstance(layer, nn.Conv2d) and (
                layer.groups != 1 or layer.stride != (1, 1) or layer.dilation != (1, 1)
            ):
                raise ValueError("stacked CNN convolutions must be plain (stride 1, one group)")
            if isinstance(layer, nn.BatchNorm2d) and (
                not layer.track_running_stats or not layer.affine or layer.momentum is None
            ):
                raise ValueError("stacked CNN BatchNorm needs affine, running statistics, momentum")
        self.size = len(models)
        self.side = first.side
        self.names = tuple(trainable_named_params(first))
        if len(self.names) != len(list(first.parameters())):
            raise ValueError("every parameter of a stacked CNN must be trainable")
        ref = first.readout.weight
        self.layers = list(first.features)  # the module objects: shapes and hyperparameters
        self._bufs: dict[str, Tensor] = {}
        self._counts: dict[str, Tensor] = {}
        for j, layer in enumerate(self.layers):
            if isinstance(layer, nn.BatchNorm2d):
                for b in ("running_mean", "running_var"):
                    self._bufs[f"features.{j}.{b}"] = torch.stack(
                        [getattr(m.features[j], b).detach().clone() for m in models]
                    )
                self._counts[f"features.{j}.num_batches_tracked"] = torch.stack(
                    [m.features[j].num_batches_tracked.detach().clone() for m in models]
                ).to(ref.device)

    def stack(self) -> tuple[Tensor, ...]:
        named = [dict(m.named_parameters()) for m in self.models]
        out = []
        for name in self.names:
            t = torch.stack([p[name].detach() for p in named])
            if name == "readout.weight":
                t = t.transpose(1, 2).contiguous()  # [M, 8k, classes]
            elif name == "readout.bias":
                t = t[:, None]  # [M, 1, classes]
            out.append(t.contiguous())
        return tuple(out)

    def forward(
        self, params: Sequence[Tensor], x: Tensor, *, x_batched: bool, stats: str = "update"
    ) -> Tensor:
        if stats not in STATS_MODES:
            raise ValueError(f"stats must be one of {STATS_MODES}, got {stats!r}")
        s, m = self.side, self.size
        if x_batched:
            h = x.reshape(m, x.shape[1], s, s).transpose(0, 1)  # [n, M, s, s]
        else:
            h = x.reshape(len(x), 1, s, s).expand(len(x), m, s, s)
        h = h.contiguous()
        k = 0
        for j, layer in enumerate(self.layers):
            if isinstance(layer, nn.Conv2d):
                w, b = params[k], None
                if layer.bias is not None:
                    b = params[k + 1].reshape(-1)
                k += 1 if b is None else 2
                h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b, padding=layer.padding, groups=m)
            elif isinstance(layer, nn.BatchNorm2d):
                w, b = params[k], params[k + 1]
                k += 2
                mean = self._bufs[f"features.{j}.running_mean"]
                var = self._bufs[f"features.{j}.running_var"]
                if stats == "update":
                    self._counts[f"features.{j}.num_batches_tracked"].add_(1)
                use = stats != "batch"  # "batch": torch's train mode on copies, which never move
                h = F.batch_norm(
                    h, mean.view(-1) if use else None, var.view(-1) if use else None,
                    w.reshape(-1), b.reshape(-1), training=stats != "running",
                    momentum=layer.momentum, eps=layer.eps,
                )  # fmt: skip
            else:  # activation, max-pool, global max-pool: per channel, hence per member
                h = layer(h)
        h = h.reshape(len(h), m, -1).transpose(0, 1)  # [M, n, 8k]
        return torch.baddbmm(params[k + 1], h, params[k])

    def buffers(self) -> dict[str, Tensor]:
        return {**self._bufs, **self._counts}

    def load_buffers(self, buffers: dict[str, Tensor]) -> None:
        mine = self.buffers()
        if set(buffers) != set(mine):
            raise ValueError(f"buffers {sorted(buffers)} do not match {sorted(mine)}")
        for name, t in buffers.items():
            if t.shape != mine[name].shape:
                raise ValueError(
                    f"buffer {name} has shape {tuple(t.shape)}, not {mine[name].shape}"
                )
            mine[name].copy_(t)

    def member_state(self, params: Sequence[Tensor], i: int) -> dict[str, Tensor]:
        out = {}
        for name, p in zip(self.names, params):
            t = p[i].detach()
            if name == "readout.weight":
                t = t.T
            elif name == "readout.bias":
                t = t[0]
            out[name] = t.clone()
        return out

    def member_buffers(self, i: int) -> dict[str, Tensor]:
        return {name: t[i].clone() for name, t in self.buffers().items()}

    def select(self, keep: Tensor) -> StackedCNN:
        new = object.__new__(StackedCNN)
        new.__dict__.update(self.__dict__)
        idx = keep.tolist()
        new.models = [self.models[i] for i in idx]
        new.size = len(idx)
        new._bufs = {k: v[keep.to(v.device)] for k, v in self._bufs.items()}
        new._counts = {k: v[keep.to(v.device)] for k, v in self._counts.items()}
        return new


#: qualified model class name -> its stacked form. Keyed by name, not by class: the
#: models live in :mod:`implicit_reg.workloads`, a layer above this one.
STACKERS: dict[str, type[StackedModel]] = {
    "implicit_reg.workloads.models.MLP": StackedMLP,
    "implicit_reg.workloads.models.RandomFeatures": StackedRandomFeatures,
    "implicit_reg.workloads.models.CNN": StackedCNN,
}


def _qualname(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def stacked_model(models: Sequence[nn.Module]) -> StackedModel | None:
    """The batched-matmul form of ``models`` (one class, possibly different widths), or
    None when their class has no stacked form (the generic ``vmap`` path then applies)."""
    models = list(models)
    if not models:
        raise ValueError("need at least one model")
    cls = STACKERS.get(_qualname(models[0]))
    if cls is None or any(type(m) is not type(models[0]) for m in models):
        return None
    if any(m.training is False for m in models) and any(m.training for m in models):
        raise ValueError("members must all be in train mode or all in eval mode")
    return cls(models)
