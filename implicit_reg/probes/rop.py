"""Hessian products of a multilayer perceptron in closed form, a block of vectors at once.

The product ``"rop"`` of :class:`implicit_reg.probes.operator.HessianOperator`.
For an MLP (an ``nn.Sequential`` of ``nn.Linear`` layers and elementwise
activations) with

    z_l = a_{l-1} W_lᵀ + b_l,   a_l = σ_l(z_l),   a_0 = x,   f = z_L,   loss ℓ(f, y),

the product H v of the chunk loss with a direction v = (V_l, c_l) is
Pearlmutter's (1994, "Fast exact multiplication by the Hessian") R-operator
R{·} = d/dr (·)(θ + r·v) at r = 0 applied to the forward and backward passes:

    forward:   R z_l = R a_{l-1} W_lᵀ + a_{l-1} V_lᵀ + c_l,   R a_l = σ'(z_l) ⊙ R z_l,   R a_0 = 0
    output:    g_L = ∇_f ℓ,   R g_L = ∇²_f ℓ · R f
    backward:  (H v)_{W_l} = R g_lᵀ a_{l-1} + g_lᵀ R a_{l-1},   (H v)_{b_l} = Σ_rows R g_l
               R g_{l-1} = (R g_l W_l + g_l V_l) ⊙ σ'(z_{l-1}) + (g_l W_l) ⊙ σ''(z_{l-1}) ⊙ R z_{l-1}

For a block of b directions every line is one matrix product over the stacked
block (the shared factor — a_{l-1}, g_l or W_l — against the b directions side
by side), not b small ones: on a 10→32→32→4 MLP this is what makes a
Hutch++ block cheaper than b second backwards through autograd
(``benchmarks/bench_probes_batched.py``). The floating-point operations are not
those of autograd's double backward, so the result equals the looped product
to rounding, not bit for bit (``tests/test_probes_rop.py`` checks both against
an explicit ``torch.func.hessian`` in float64).

σ' and σ'' are the activation's own derivatives (closed forms for tanh, sigmoid
and ReLU, whose σ'' is 0 as in autograd; autograd for the others). g_L is the
autograd gradient of the chunk's loss of the outputs, and ∇²_f ℓ·R f is closed
form for cross-entropy and squared losses (:func:`output_hessian_form`: then a
chunk may also be taken in row parts that fit the cache) and otherwise one more
backward per direction through the loss alone, over the whole chunk: any
``loss_fn`` works. Only parameters in the measured set get directions; the others
stay fixed, as everywhere in the operator.

The trace estimators need only quadratic forms vᵀHv for most of their probes;
:func:`rop_quadratic_forms` gives them from the forward R-pass and one shared
gradient, about half the products of H v.

Which models qualify (:func:`mlp_plan`): an ``nn.Sequential``, or a module whose
class names its sequential body in ``rop_sequential`` (the attribute's value) and
whose forward is ``body(x.flatten(1))`` (as :class:`implicit_reg.workloads.models.MLP`),
made of ``nn.Linear``, the activations in :data:`ELEMENTWISE`, ``nn.Identity``,
``nn.Flatten`` (default dimensions) and, in ``mode="eval"``, ``nn.Dropout``, each of
exactly that class (a subclass may override ``forward``). Any other module, a module
used twice, tuple/dict inputs or a ``batch_loss`` do not qualify; the operator's other
products take them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CACHE_BYTES", "ELEMENTWISE", "MLPPlan", "mlp_plan", "output_hessian_form",
    "rop_block_product", "rop_quadratic_forms",
]  # fmt: skip

#: bytes one stacked activation of a block may take: the rows of a chunk go through the
#: product in parts this small, so that its elementwise steps run in cache, but never
#: fewer than twice the widest layer, since each part adds a parameter-sized block to
#: the result (at 15 rows a part the 40→256→256→10 MLP's product took 3× the loop's;
#: at 2·256 rows, 1.2×, and its quadratic forms 0.6×; one thread, float64).
CACHE_BYTES = 2**20

#: activations applied elementwise, whose σ' and σ'' the product takes by autograd (tanh,
#: sigmoid and ReLU in closed form).
ELEMENTWISE = (
    nn.CELU, nn.ELU, nn.GELU, nn.LeakyReLU, nn.LogSigmoid, nn.Mish, nn.ReLU, nn.SELU,
    nn.SiLU, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Tanh, nn.Tanhshrink,
)  # fmt: skip


@dataclass(frozen=True)
class MLPPlan:
    """An MLP as a flat list of steps: ``("linear", weight name, bias name or None)``,
    ``("act", module)`` or ``("flatten",)``; ``flatten_input``: the model flattens its
    input before the body."""

    steps: tuple
    flatten_input: bool


def mlp_plan(model: nn.Module, mode: str) -> MLPPlan | str:
    """The model as an :class:`MLPPlan`, or a sentence saying why it does not qualify."""
    attr = getattr(type(model), "rop_sequential", None)
    if type(model) is nn.Sequential:
        body, prefix, flatten_input = model, "", False
    elif isinstance(attr, str) and type(getattr(model, attr, None)) is nn.Sequential:
        body, prefix, flatten_input = getattr(model, attr), attr + ".", True
    else:
        return f"{type(model).__name__} is not an nn.Sequential (nor names one in rop_sequential)"
    steps, seen = [], set()
    for name, m in _leaves(body, prefix):
        if id(m) in seen:
            return f"module {name} is used twice"
        seen.add(id(m))
        if type(m) is nn.Linear:
            bias = f"{name}.bias" if m.bias is not None else None
            steps.append(("linear", f"{name}.weight", bias))
        elif type(m) in ELEMENTWISE:
            steps.append(("act", m))
        elif type(m) is nn.Identity or (type(m) is nn.Dropout and mode == "eval"):
            continue
        elif type(m) is nn.Flatten and (m.start_dim, m.end_dim) == (1, -1):
            steps.append(("flatten",))
        else:
            return f"module {name} ({type(m).__name__}) is not a linear layer or an elementwise activation"
    if not any(s[0] == "linear" for s in steps):
        return "the model has no linear layer"
    return MLPPlan(tuple(steps), flatten_input)


def _leaves(body: nn.Sequential, prefix: str):
    """(qualified name, module) of the body's modules in call order, nested Sequentials
    flattened."""
    for name, m in body._modules.items():  # named_children() would skip a repeated module
        if type(m) is nn.Sequential:
            yield from _leaves(m, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", m


def _derivatives(act: nn.Module, z: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """σ(z), σ'(z) and σ''(z) (None where it is 0) of an elementwise activation: tanh
    (σ' = 1 − σ², σ'' = −2σσ'), the logistic sigmoid (σ' = σ(1 − σ), σ'' = σ'(1 − 2σ)) and
    ReLU (σ' = [z > 0], σ'' = 0) in closed form, the others by autograd (an elementwise
    σ has ∇Σσ(z) = σ'(z), and ∇Σσ'(z) = σ''(z))."""
    if type(act) is nn.Tanh:
        a = torch.tanh(z)
        d1 = 1 - a * a
        return a, d1, -2 * a * d1
    if type(act) is nn.Sigmoid:
        a = torch.sigmoid(z)
        d1 = a * (1 - a)
        return a, d1, d1 * (1 - 2 * a)
    if type(act) is nn.ReLU:
        d1 = (z > 0).to(z.dtype)
        return z * d1, d1, None
    with torch.enable_grad():  # elementwise: the gradient of Σσ(z) is σ'(z), twice over
        leaf = z.detach().requires_grad_(True)
        a = act(leaf.clone())  # a clone: an in-place activation must not write into the leaf
        (d1,) = torch.autograd.grad(a.sum(), leaf, create_graph=True)
        (d2,) = (
            torch.autograd.grad(d1.sum(), leaf, allow_unused=True) if d1.requires_grad else (None,)
        )
    return a.detach(), d1.detach(), None if d2 is None else d2.detach()


def rop_block_product(
    plan: MLPPlan, term, params, vs, rows: int | None = None
) -> tuple[Tensor, ...]:
    """Σ over the chunk ``term``: H v_j of the weighted chunk loss n_c·L_c for each row j
    of the block ``vs`` (one ``(b, *shape)`` tensor per measured parameter, in the order
    of ``term.names``), by the R-operator equations of the module docstring.

    The chunk is taken ``rows`` samples at a time (default: as many as keep one stacked
    activation of the block within :data:`CACHE_BYTES`, at least twice the widest layer),
    so the elementwise steps run in cache; the loss is a mean over samples, so the
    sub-chunks' products add up.
    """
    where = {name: i for i, name in enumerate(term.names)}
    out: list[Tensor | None] = [None] * len(vs)
    for part, state, dirs, form in _parts(plan, term, params, vs, rows):
        f, rf, tape = _forward(plan, part, state, dirs)
        for name, h in _backward_product(part, f, rf, tape, dirs, form):
            j = where[name]
            out[j] = h if out[j] is None else out[j].add_(h)
    return tuple(torch.zeros_like(v) if o is None else o for o, v in zip(out, vs))


def rop_quadratic_forms(plan: MLPPlan, term, params, vs, rows: int | None = None) -> Tensor:
    """Σ over the chunk ``term``: v_jᵀ ∇²(n_c·L_c) v_j for each row j of the block ``vs``,
    the second derivative along each line θ + r·v_j, without forming H v_j:

        vᵀHv = Σ_rows R fᵀ ∇²_f ℓ R f + Σ_l 2·⟨V_l, g_{z_l}ᵀ R a_{l-1}⟩ + Σ_l ⟨g_{a_l} ⊙ σ''(z_l), (R z_l)²⟩

    (g_{z_l}, g_{a_l}: the gradient of the loss at z_l and a_l, one backward pass shared by
    the block). It is the forward second-order pass z''_l = a''_{l-1} W_lᵀ + 2 a'_{l-1} V_lᵀ,
    a''_l = σ' z''_l + σ'' (z'_l)², ℓ'' = f'ᵀ∇²_f ℓ f' + g_f·f'', with g_f·f'' unrolled
    through the layers by the adjoint (the gradient): per hidden layer three matrix products
    against the R-product's six, and none shaped like the parameters.
    """
    total = None
    for part, state, dirs, form in _parts(plan, term, params, vs, rows):
        f, rf, tape = _forward(plan, part, state, dirs)
        q = _backward_quadratic(part, f, rf, tape, dirs, form)
        total = q if total is None else total.add_(q)
    return total


def _parts(plan: MLPPlan, term, params, vs, rows):
    """The chunk's sub-chunks of ``rows`` samples, each with the parameters (``state``),
    the directions by name (``dirs``) and the loss's output-Hessian form."""
    state = term.state(params)
    b = vs[0].shape[0]
    dirs = {name: v for name, v in zip(term.names, vs)}
    x, y = term.inputs, term.targets
    form = _checked_form(term.loss_fn, y, len(x))
    if rows is None:
        widest = max(max(state[s[1]].shape) for s in plan.steps if s[0] == "linear")
        rows = max(CACHE_BYTES // (b * widest * vs[0].element_size()), 2 * widest)
    if form is None or not isinstance(y, Tensor) or len(y) != len(x):
        rows = len(x)  # an unknown loss may couple the rows: the chunk in one piece
    with torch.no_grad():
        for i in range(0, len(x), rows):
            part = term
            if rows < len(x):
                xs, ys = x[i : i + rows], y[i : i + rows]
                part = replace(term, size=len(xs), inputs=xs, targets=ys)
            yield part, state, dirs, form


def _forward(plan: MLPPlan, term, state, dirs):
    """The forward pass and its R-forward for all b directions: (f, R f, tape), the tape
    holding what the backward passes need, per step. R-tensors are laid out
    ``(n, b, d)``, sample-major, so that every product with a shared factor is one
    matrix product on a contiguous ``(n·b, d)`` or ``(n, b·d)`` view."""
    b = next(iter(dirs.values())).shape[0]
    a = term.inputs.flatten(1) if plan.flatten_input else term.inputs
    ra = None  # R a of the current activations, (n, b, d); None: zero
    tape = []
    for step in plan.steps:
        if step[0] == "linear":
            _, wname, bname = step
            weight = state[wname]
            bias = state[bname] if bname is not None else None
            vw, vb = dirs.get(wname), dirs.get(bname)
            tape.append((step, a, ra, weight, vw))
            z = F.linear(a, weight, bias)
            n, out = z.shape
            rz = None
            if vw is not None:  # a V_lᵀ for all b directions: [n, in] × [in, b·out]
                rz = (a @ vw.permute(2, 0, 1).reshape(vw.shape[2], b * out)).view(n, b, out)
            if ra is not None:  # + R a W_lᵀ: [n·b, in] × [in, out]
                prod = (ra.reshape(n * b, -1) @ weight.T).view(n, b, out)
                rz = prod if rz is None else rz.add_(prod)
            if vb is not None:
                rz = vb.expand(n, b, out).clone() if rz is None else rz.add_(vb)
            a, ra = z, rz
        elif step[0] == "act":
            z, rz = a, ra
            a, d1, d2 = _derivatives(step[1], z)
            ra = None if rz is None else rz * d1[:, None]
            tape.append((step, d1, d2, rz))
        else:  # flatten
            tape.append((step, a.shape, None, None))
            a = a.flatten(1)
            ra = None if ra is None else ra.flatten(2)
    if ra is None:
        ra = a.new_zeros(len(a), b, *a.shape[1:])
    return a, ra, tape


def _back(tape):
    """The tape from the output back to the first linear layer (nothing before it has
    parameters), each step with a flag that is True at that layer."""
    first = next(i for i, t in enumerate(tape) if t[0][0] == "linear")
    for i in range(len(tape) - 1, first - 1, -1):
        yield i == first, tape[i]


def _backward_product(term, f, rf, tape, dirs, form):
    """(name, Σ over the rows of (H v_j)_name) for each measured parameter: the backward
    pass and its R-backward."""
    b = rf.shape[1]
    g, rg = _output_grad_and_hvp(term, f, rf, form)
    for first, entry in _back(tape):
        kind = entry[0][0]
        if kind == "act":
            _, d1, d2, rz = entry
            rg = rg * d1[:, None]
            if rz is not None and d2 is not None:
                rg.addcmul_((g * d2)[:, None], rz)
            g = g * d1
        elif kind == "flatten":
            shape = entry[1]
            g, rg = g.view(shape), rg.view(shape[0], b, *shape[1:])
        else:
            (_, wname, bname), a_in, ra_in, weight, vw = entry
            n, out = g.shape
            if wname in dirs:  # R gᵀ a + gᵀ R a, summed over the rows
                hw = (rg.view(n, b * out).T @ a_in).view(b, out, -1)
                if ra_in is not None:
                    ga = (g.T @ ra_in.reshape(n, -1)).view(out, b, -1)
                    hw.add_(ga.transpose(0, 1))
                yield wname, hw
            if bname is not None and bname in dirs:
                yield bname, rg.sum(0)
            if first:
                break
            rg = (rg.reshape(n * b, out) @ weight).view(n, b, -1)
            if vw is not None:  # + g V_l for all b directions: [n, out] × [out, b·in]
                rg.add_((g @ vw.transpose(0, 1).reshape(out, -1)).view(n, b, -1))
            g = g @ weight


def _backward_quadratic(term, f, rf, tape, dirs, form) -> Tensor:
    """Σ over the rows of v_jᵀ∇²v_j for each direction (see :func:`rop_quadratic_forms`)."""
    b = rf.shape[1]
    g, q = _output_grad_and_quadratic(term, f, rf, form)
    for first, entry in _back(tape):
        kind = entry[0][0]
        if kind == "act":  # g_a ⊙ σ'' against (R z)²
            _, d1, d2, rz = entry
            if rz is not None and d2 is not None:
                q += (rz * (g * d2)[:, None]).mul_(rz).sum((0, 2))
            g = g * d1
        elif kind == "flatten":
            g = g.view(entry[1])
        else:
            _, _, ra_in, weight, vw = entry
            n, out = g.shape
            if vw is not None and ra_in is not None:  # 2·⟨V_l, g_zᵀ R a_{l-1}⟩ per direction
                m = (g.T @ ra_in.reshape(n, -1)).view(out, b, -1)  # [out, b, in]
                q += 2 * (m * vw.transpose(0, 1)).sum((0, 2))
            if first:
                break
            g = g @ weight
    return q


def output_hessian_form(loss_fn) -> tuple[str, float] | None:
    """How ∇²_f of the weighted chunk loss n_c·ℓ(f, y) acts, when ``loss_fn`` is known to
    be a mean over samples of a per-sample loss with a closed-form output Hessian:
    ``("softmax", 1)`` for cross-entropy (per row diag(p) − p pᵀ, p = softmax(f), whatever
    the targets' rows if they sum to 1), ``("scaled_mean", κ)`` for a squared loss averaged
    over the C outputs too ((κ/C)·I), ``("scaled", κ)`` for one summed over them (κ·I), or
    None: unknown, differentiated column by column over the whole chunk.

    Recognized: ``F.cross_entropy``, ``F.mse_loss``, ``nn.CrossEntropyLoss`` and
    ``nn.MSELoss`` with their defaults (no class weights, no ignored label, mean
    reduction), and a loss that declares ``rop_output_hessian`` (the package's losses)."""
    declared = getattr(loss_fn, "rop_output_hessian", None)
    if declared is not None:
        return declared
    if loss_fn is F.cross_entropy or (
        type(loss_fn) is nn.CrossEntropyLoss and loss_fn.weight is None
        and loss_fn.reduction == "mean"
    ):  # fmt: skip
        return ("softmax", 1.0)
    if loss_fn is F.mse_loss or (type(loss_fn) is nn.MSELoss and loss_fn.reduction == "mean"):
        return ("scaled_mean", 2.0)
    return None


def _checked_form(loss_fn, y, n: int):
    """:func:`output_hessian_form` of ``loss_fn`` where the targets allow it: a recognized
    cross-entropy needs class indices (no ignored label), a recognized ``mse_loss``
    targets of the outputs' size; a declared form is the loss's own promise."""
    form = output_hessian_form(loss_fn)
    if form is None or getattr(loss_fn, "rop_output_hessian", None) is not None:
        return form
    if not isinstance(y, Tensor) or len(y) != n:
        return None
    if form[0] == "softmax" and (y.is_floating_point() or y.dim() != 1 or bool((y < 0).any())):
        return None
    return form


def _output_grad_and_quadratic(term, f: Tensor, rf: Tensor, form) -> tuple[Tensor, Tensor]:
    """g = ∇_f of the weighted chunk loss and Σ_rows R fᵀ∇²_f R f for each of the b
    directions of ``rf`` (n, b, C): in closed form when ``form`` says how, else from the
    product."""
    if form is not None and form[0] == "softmax":
        g = _output_grad(term, f)
        p = torch.softmax(f, dim=-1)[:, None]
        pr = rf * p  # rᵀ(diag p − p pᵀ)r = Σ p r² − (Σ p r)², per row
        return g, (pr * rf).sum((0, 2)) - pr.sum(-1).square().sum(0)
    g, hr = _output_grad_and_hvp(term, f, rf, form)
    return g, (rf * hr).sum((0, 2))


def _output_grad(term, f: Tensor, create_graph: bool = False):
    """∇_f of the weighted chunk loss n_c·ℓ(f, y) by autograd, and the leaf it is taken at."""
    with torch.enable_grad():
        leaf = f.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(term.output_loss(leaf), leaf, create_graph=create_graph)
    return (g, leaf) if create_graph else g


def _output_grad_and_hvp(term, f: Tensor, rf: Tensor, form) -> tuple[Tensor, Tensor]:
    """g = ∇_f and ∇²_f·R f of the weighted chunk loss n_c·ℓ(f, y), for each of the b
    directions of ``rf`` (n, b, C): g by autograd, the product in closed form when
    ``form`` says how, else by one more backward per direction."""
    if form is None:
        g, leaf = _output_grad(term, f, create_graph=True)
        with torch.enable_grad():
            cols = [torch.autograd.grad(g, leaf, rf[:, j], retain_graph=j + 1 < rf.shape[1])[0]
                    for j in range(rf.shape[1])]  # fmt: skip
        return g.detach(), torch.stack(cols, dim=1)
    g = _output_grad(term, f)
    kind, kappa = form
    if kind == "softmax":
        p = torch.softmax(f, dim=-1)[:, None]
        pr = p * rf
        return g, pr - p * pr.sum(-1, keepdim=True)
    if kind == "scaled_mean":  # n·mean over n×C entries: ∇² = (κ/C)·I
        return g, rf * (kappa / f[0].numel())
    return g, rf * kappa
