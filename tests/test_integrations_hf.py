"""The Hugging Face ``Trainer``: CurvatureCallback on a tiny BERT built from a config (never
downloaded) logs the package's probe of the model's own loss through ``trainer.log`` and leaves
the run bit for bit as it was; ClosureTrainer's EGR (exact and finite-difference) and SAM steps
equal steps computed by hand with torch.func. Skipped without the ``hf`` extra."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import functional_call, grad, jvp

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from implicit_reg.core.optim import EGR, SGD  # noqa: E402
from implicit_reg.core.sam import SAM  # noqa: E402
from implicit_reg.integrations.huggingface import (  # noqa: E402
    ClosureTrainer,
    CurvatureCallback,
    model_loss,
)
from implicit_reg.probes import (  # noqa: E402
    HessianOperator,
    preconditioned_sharpness,
    run_probes,
)

F64 = torch.float64
N, SEQ = 8, 6


def _bert(dropout=0.0):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=2,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        attn_implementation="eager",  # sdpa's CPU kernel has no second derivative
    )  # fmt: skip
    return BertForSequenceClassification(config).to(F64)


def _tokens():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 50, (N, SEQ), generator=g), torch.randint(0, 2, (N,), generator=g)


class Rows(torch.utils.data.Dataset):
    def __init__(self):
        self.x, self.y = _tokens()

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


def _args(tmp_path, steps, batch=N, **kw):
    return TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=batch,
        report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
        lr_scheduler_type="constant", seed=3, data_seed=3, **kw,
    )  # fmt: skip


def test_the_callback_logs_the_package_probe_and_leaves_the_run_alone(tmp_path):
    x, y = _tokens()
    probe = {"input_ids": x[:4], "labels": y[:4]}
    model, start = _bert(dropout=0.1), None
    start = copy.deepcopy(model)
    trainer = Trainer(model=model, args=_args(tmp_path, 2, batch=4, learning_rate=0.05),
                      train_dataset=Rows())  # fmt: skip
    callback = CurvatureCallback(probe, every=2, budget=None, measures=["loss", "lambda_max"])
    callback.attach(trainer)
    trainer.train()

    logged = {h["step"]: h for h in trainer.state.log_history if "curvature/lambda_max" in h}
    assert sorted(logged) == [0, 2]
    for step, weights in ((0, start), (2, model)):
        ref = run_probes(["loss", "lambda_max"], weights, None, [probe], batch_loss=model_loss)
        assert logged[step]["curvature/lambda_max"] == pytest.approx(ref["lambda_max"], rel=1e-7)
        assert logged[step]["curvature/loss"] == pytest.approx(ref["loss"], rel=1e-12)
        assert logged[step]["curvature/lambda_max_converged"] == 1.0

    plain = _bert(dropout=0.1)  # the same run without the callback: the same weights
    Trainer(model=plain, args=_args(tmp_path, 2, batch=4, learning_rate=0.05),
            train_dataset=Rows()).train()  # fmt: skip
    for (k, a), b in zip(plain.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def _hand_step(model, kind, h, rho=0.05):
    """One step on the whole data set from torch.func: EGR θ − h(g + (h/2)Hg), Hg
    forward-over-reverse (EGR itself differentiates twice in reverse); SAM θ − h∇L(θ + ρg/‖g‖).
    Returns it and the plain GD step θ − hg."""
    x, y = _tokens()
    theta = {k: p.detach().clone() for k, p in model.named_parameters()}

    def loss(t):
        logits = functional_call(model, t, (), {"input_ids": x}).logits
        return torch.nn.functional.cross_entropy(logits, y)

    g = grad(loss)(theta)
    if kind == "sam":
        norm = torch.sqrt(sum((v**2).sum() for v in g.values()))
        g_adv = grad(loss)({k: theta[k] + rho * g[k] / norm for k in theta})
        step = {k: theta[k] - h * g_adv[k] for k in theta}
    else:
        hg = jvp(grad(loss), (theta,), (g,))[1]
        step = {k: theta[k] - h * (g[k] + (h / 2) * hg[k]) for k in theta}
    return step, {k: theta[k] - h * g[k] for k in theta}


@pytest.mark.parametrize("kind", ["egr_exact", "egr_fd", "sam"])
def test_closure_trainer_steps_equal_hand_computed_steps(tmp_path, kind):
    h = 0.5
    model = _bert()
    expected, gd = _hand_step(copy.deepcopy(model), "sam" if kind == "sam" else "egr", h)
    if kind == "sam":
        opt = SAM(model.parameters(), SGD, rho=0.05, lr=h)
    else:
        method = "exact" if kind == "egr_exact" else "finite_difference"
        opt = EGR(model.parameters(), lr=h, method=method)
    trainer = ClosureTrainer(model=model, args=_args(tmp_path, 1, max_grad_norm=0.0),
                             train_dataset=Rows(), optimizers=(opt, None))  # fmt: skip
    trainer.train()
    got = {k: p.detach() for k, p in model.named_parameters()}
    err = max(float((got[k] - v).abs().max()) for k, v in expected.items())
    gd_gap = max(float((got[k] - v).abs().max()) for k, v in gd.items())
    tol = 1e-6 if kind == "egr_fd" else 1e-12  # the forward difference's O(r) error
    assert err < tol, (kind, err)
    assert gd_gap > 1e3 * tol, (kind, gd_gap)  # the regularizer's part of the step is resolved
    assert trainer.state.global_step == 1
    assert trainer.state.log_history[-1]["train_loss"] == pytest.approx(
        float(
            run_probes(
                ["loss"],
                _bert(),
                None,
                [dict(zip(("input_ids", "labels"), _tokens()))],
                batch_loss=model_loss,
            )["loss"]
        ),
        rel=1e-6,
    )  # fmt: skip  (the Trainer sums its logged loss in float32)


@pytest.mark.parametrize(
    "kw, message",
    [({"max_grad_norm": 1.0}, "max_grad_norm=0"), ({"gradient_accumulation_steps": 2}, "accum")],
)
def test_closure_trainer_refuses_what_a_closure_step_cannot_honour(tmp_path, kw, message):
    kw = {"max_grad_norm": 0.0, **kw}
    model = _bert()
    with pytest.raises(ValueError, match=message):
        ClosureTrainer(model=model, args=_args(tmp_path, 1, **kw), train_dataset=Rows(),
                       optimizers=(EGR(model.parameters(), lr=0.1), None))  # fmt: skip


def test_the_callback_rejects_probe_data_that_is_not_dict_batches():
    with pytest.raises(ValueError, match="dict batch"):
        CurvatureCallback([(torch.zeros(2, 3), torch.zeros(2))])
    with pytest.raises(ValueError, match="returned no loss"):
        model_loss(_bert(), {"input_ids": _tokens()[0]})


def test_the_callback_reads_the_trainers_adamw_for_the_preconditioned_sharpness(tmp_path):
    x, y = _tokens()
    probe = {"input_ids": x[:4], "labels": y[:4]}
    model = _bert()
    trainer = Trainer(
        model=model, args=_args(tmp_path, 1, batch=4, learning_rate=0.01), train_dataset=Rows()
    )  # fmt: skip  (the Trainer's default: AdamW)
    callback = CurvatureCallback(
        probe, every=1, budget=None, measures=["preconditioned_lambda_max"]
    ).attach(trainer)  # the optimizer comes from the Trainer, unwrapped from accelerate's
    trainer.train()
    adamw = trainer.optimizer.optimizer  # inside accelerate's wrapper
    assert isinstance(adamw, torch.optim.AdamW)
    rows = callback.rows
    assert [r["step"] for r in rows] == [0, 1] and math.isnan(rows[0]["preconditioned_lambda_max"])
    op = HessianOperator(model, None, [probe], batch_loss=model_loss)
    ref = float(preconditioned_sharpness(op, adamw).eigenvalues[0])
    assert rows[1]["preconditioned_lambda_max"] == pytest.approx(ref, rel=1e-7)
