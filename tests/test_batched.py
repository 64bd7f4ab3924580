"""The fast (stacked, batched-matmul) ensemble against the serial engine, in float64.

Oracle: each member's own serial run, :class:`implicit_reg.engine.steppers.SerialStepper`
(the engine's model + ``implicit_reg.core.optim.SGD``/``GD``, itself tested against
``torch.optim.SGD``), and ``torch.optim.SGD`` directly for dampening. Members of
different widths are packed into one ensemble; each must still equal its own run.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from implicit_reg.engine.config import RunConfig
from implicit_reg.engine.steppers import SerialStepper
from implicit_reg.engine.workload import build_run_model, load_run_data, run_loss
from implicit_reg.ensemble.batched import BatchedEnsemble, StackedOrder
from implicit_reg.ensemble.stacked import stacked_model
from implicit_reg.ensemble.vectorized import MinibatchOrder
from implicit_reg.workloads.models import MLP, build_model

HORIZON = 300  # optimizer steps compared (3 epochs of 100 minibatches of the 400-sample set)
REL = 1e-10


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def _configs(members, **base) -> list[RunConfig]:
    common = dict(
        model="mlp", depth=2, dataset="mnist1d", n_train=400, n_test=50, label_noise=0.15,
        loss="cross_entropy", optimizer="sgd", lr=0.01, momentum=0.9, batch_size=100,
        epochs=3, dtype="float64",
    )  # fmt: skip
    common.update(base)
    return [RunConfig(**{**common, **m}) for m in members]


def _train_both(configs: list[RunConfig], steps: int = HORIZON):
    """Train the configs as one BatchedEnsemble and one by one through SerialStepper; return
    (ensemble losses [steps, M], serial losses, ensemble params, serial params)."""
    datas = [load_run_data(c) for c in configs]
    models = [build_run_model(c, d) for c, d in zip(configs, datas)]
    loss_fn = run_loss(configs[0], datas[0])
    ens = BatchedEnsemble(
        models, loss_fn, datas[0].x_train, torch.stack([d.y_train for d in datas]),
        optimizer="gd" if configs[0].optimizer == "gd" and not configs[0].momentum else "sgd",
        lr=[c.lr for c in configs], momentum=[c.momentum for c in configs],
        weight_decay=[c.weight_decay for c in configs], nesterov=configs[0].nesterov,
        batch_size=configs[0].batch_size, seeds=[c.seed for c in configs], y_per_member=True,
    )  # fmt: skip
    got = torch.stack([ens.step() for _ in range(steps)])
    ref, ref_params = [], []
    for c, d in zip(configs, datas):
        model = build_run_model(c, d)
        stepper = SerialStepper(c, d, model, loss_fn)
        ref.append([float(stepper.step()[0]) for _ in range(steps)])
        ref_params.append({k: p.detach() for k, p in model.named_parameters()})
    return (
        got,
        torch.tensor(ref, dtype=torch.float64).T,
        [ens.member_params(m) for m in range(len(configs))],
        ref_params,
    )


CASES = {
    # the MNIST-1D sweep's recipe, three seeds of one width and two other widths packed in
    "sgd-momentum, packed widths": (
        [dict(width=3, seed=0), dict(width=13, seed=1), dict(width=13, seed=2), dict(width=30, seed=3)],
        {},
    ),
    "per-member lr, momentum, weight decay": (
        [dict(width=8, seed=0, lr=0.01, momentum=0.9, weight_decay=0.0),
         dict(width=8, seed=1, lr=0.05, momentum=0.5, weight_decay=1e-3),
         dict(width=20, seed=2, lr=0.02, momentum=0.0, weight_decay=1e-2)],
        {},
    ),
    "nesterov, shared weight decay": (
        [dict(width=6, seed=0), dict(width=17, seed=1)], dict(nesterov=True, weight_decay=5e-4),
    ),
    "gd full batch": (
        [dict(width=5, seed=0, lr=0.1), dict(width=9, seed=1, lr=0.2)],
        dict(optimizer="gd", momentum=0.0, batch_size=None, epochs=60),
    ),
    # sigmoid(0) = 0.5: the padded units are held at zero by the mask, not by zero weights
    "sigmoid, masked padding": (
        [dict(width=4, seed=0), dict(width=11, seed=1)], dict(activation="sigmoid", lr=0.1),
    ),
    "depth 1, mse loss": ([dict(width=7, seed=0), dict(width=15, seed=1)], dict(depth=1, loss="mse")),
    "random features (cos), packed": (
        [dict(width=16, seed=0), dict(width=50, seed=1)],
        dict(model="rf_fourier", loss="mse", lr=0.5, momentum=0.0),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_fast_ensemble_equals_serial_engine_in_float64(case):
    members, base = CASES[case]
    configs = _configs(members, **base)
    steps = HORIZON if configs[0].batch_size is not None else 60
    got, ref, params, ref_params = _train_both(configs, steps)
    assert got.shape == ref.shape
    loss_err = float(((got - ref).abs() / ref.abs()).max())
    assert loss_err < REL, f"{case}: losses differ by {loss_err:.2e} relative over {steps} steps"
    for m, (p, q) in enumerate(zip(params, ref_params)):
        assert p.keys() == q.keys()
        for k in q:
            assert p[k].shape == q[k].shape, (case, m, k)
            err = _rel(p[k], q[k])
            assert err < REL, f"{case}: member {m} {k} differs by {err:.2e} after {steps} steps"
    assert float((ref[0] - ref[-1]).abs().max()) > 1e-3, "the runs did not move: a vacuous test"


@pytest.mark.parametrize(
    "name, options",
    [("mlp", {}), ("mlp", {"activation": "tanh", "depth": 3}), ("mlp", {"depth": 0}),
     ("rf_relu", {}), ("rf_fourier", {"bias": False})],
)  # fmt: skip
def test_stacked_forward_equals_each_module(name, options):
    widths = [2, 9, 9, 31]
    extra = {k: v for k, v in options.items() if k == "bias"}
    kw = {k: v for k, v in options.items() if k != "bias"}
    models = [
        build_model(name, input_dim=12, output_dim=4, width=w, seed=s, **kw, **extra).double()
        for s, w in enumerate(widths)
    ]
    stacked = stacked_model(models)
    x = torch.randn(25, 12, dtype=torch.float64)
    out = stacked.forward(stacked.stack(), x, x_batched=False)
    for m, model in enumerate(models):
        assert _rel(out[m], model(x).detach()) < 1e-13, (name, m)
    xs = torch.randn(len(models), 7, 12, dtype=torch.float64)
    out = stacked.forward(stacked.stack(), xs, x_batched=True)
    for m, model in enumerate(models):
        assert _rel(out[m], model(xs[m]).detach()) < 1e-13, (name, m)
    for m, model in enumerate(models):  # unstacking gives back each member's own tensors
        state = stacked.member_state(stacked.stack(), m)
        for k, p in model.named_parameters():
            if p.requires_grad:
                assert torch.equal(state[k], p.detach()), (name, m, k)


def test_padded_units_stay_exactly_zero():
    for activation in ("relu", "sigmoid"):
        models = [
            build_model("mlp", input_dim=6, output_dim=3, width=w, seed=w, activation=activation)
            for w in (2, 10)
        ]
        x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
        ens = BatchedEnsemble(
            models, nn.CrossEntropyLoss(), x, y, optimizer="sgd", lr=0.5, momentum=0.9,
            weight_decay=0.01, batch_size=8, seeds=[0, 1],
        )  # fmt: skip
        for _ in range(30):
            ens.step()
        w1, b1, w2, b2, w3, _ = ens.params
        assert w1[0, :, 2:].abs().max() == 0 and b1[0, :, 2:].abs().max() == 0
        assert w2[0, 2:].abs().max() == 0 and w2[0, :, 2:].abs().max() == 0
        assert w3[0, 2:].abs().max() == 0
        assert w1[1].abs().min() >= 0 and w1[0, :, :2].abs().max() > 0


def test_stacked_order_rows_are_each_members_minibatch_order():
    seeds = [3, 0, 11]
    order = StackedOrder(23, 5, seeds)
    alone = [MinibatchOrder(23, 5, torch.Generator().manual_seed(s)) for s in seeds]
    for _ in range(14):  # three epochs, the last batch of each 3 rows
        idx = next(order)
        for m, o in enumerate(alone):
            assert torch.equal(idx[m], next(o))


def test_dampening_matches_torch_optim_sgd():
    mlps = []
    for s in range(2):
        torch.manual_seed(s)
        mlps.append(MLP(5, 2, 4, depth=1, activation="tanh").double())
    x, y = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 2, (30,))
    kw = dict(lr=0.3, momentum=0.8, dampening=0.3, weight_decay=0.01)
    ens = BatchedEnsemble(mlps, nn.CrossEntropyLoss(), x, y, optimizer="sgd", **kw)
    for _ in range(40):
        ens.step()
    for m, model in enumerate(mlps):
        ref = MLP(5, 2, 4, depth=1, activation="tanh").double()
        ref.load_state_dict(model.state_dict())  # the member's own initial state
        opt = torch.optim.SGD(ref.parameters(), **kw)
        for _ in range(40):
            opt.zero_grad()
            nn.functional.cross_entropy(ref(x), y).backward()
            opt.step()
        for k, p in ens.member_params(m).items():
            assert _rel(p, dict(ref.named_parameters())[k].detach()) < REL


def test_state_dict_round_trip_and_retire():
    models = [build_model("mlp", input_dim=6, output_dim=3, width=w, seed=w) for w in (3, 5, 8)]
    x, y = torch.randn(40, 6), torch.randint(0, 3, (3, 40))
    kw = dict(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=16, seeds=[0, 1, 2],
              y_per_member=True)  # fmt: skip
    a = BatchedEnsemble(models, nn.CrossEntropyLoss(), x, y, **kw)
    for _ in range(4):
        a.step()
    a.retire([1])
    state = a.state_dict()
    b = BatchedEnsemble(models, nn.CrossEntropyLoss(), x, y, **kw)
    b.load_state_dict(state)
    for _ in range(5):
        assert torch.equal(a.step(), b.step())
    assert a.live == b.live == [0, 2]
    for m in range(3):
        for k, p in a.member_params(m).items():
            assert torch.equal(p, b.member_params(m)[k])


def test_bad_input_raises():
    models = [build_model("mlp", input_dim=6, output_dim=3, width=4, seed=s) for s in range(2)]
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="fast ensemble applies"):
        BatchedEnsemble(models, loss, x, y, optimizer="egr", lr=0.1)
    with pytest.raises(ValueError, match="one seed per member"):
        BatchedEnsemble(models, loss, x, y, lr=0.1, batch_size=2)
    with pytest.raises(ValueError, match="one lr per member"):
        BatchedEnsemble(models, loss, x, y, lr=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="nesterov"):
        BatchedEnsemble(models, loss, x, y, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="no stacked"):
        BatchedEnsemble([nn.Linear(6, 3), nn.Linear(6, 3)], loss, x, y, lr=0.1)
    assert stacked_model([nn.Linear(6, 3)]) is None


def test_every_fast_model_name_has_a_stacked_form():
    from implicit_reg.engine.plan import FAST_MODELS

    for name in FAST_MODELS:
        model = build_model(name, input_dim=16 if name == "cnn" else 5, output_dim=3, width=4)
        assert stacked_model([model, model]) is not None, name
    assert stacked_model([build_model("cnn1d", input_dim=8, output_dim=3, width=4)]) is None
