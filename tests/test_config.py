"""RunConfig: validation, serialisation round trips and the stable config hash."""

from __future__ import annotations

import hashlib
import json

import pytest

from implicit_reg.engine.config import BASE_METRICS, RunConfig, config_fields, parse_field_value


def test_defaults_are_valid_and_round_trip_through_dict_and_json():
    cfg = RunConfig()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_json(cfg.to_json()) == cfg
    json.dumps(cfg.to_dict(), allow_nan=False)  # strict JSON
    assert set(cfg.to_dict()) == set(config_fields())


def test_hash_is_sha256_of_canonical_json_of_non_default_fields():
    cfg = RunConfig(lr=0.5, width=16, probes=("lambda_max",))
    canon = json.dumps(
        {"lr": 0.5, "width": 16, "probes": ["lambda_max"]}, sort_keys=True, separators=(",", ":")
    )
    assert cfg.config_hash() == hashlib.sha256(canon.encode()).hexdigest()[:12]
    assert RunConfig().config_hash() == hashlib.sha256(b"{}").hexdigest()[:12]


def test_hash_identifies_the_run_not_the_spelling():
    a = RunConfig(lr=1, width=16, steps=10)
    b = RunConfig.from_dict({"steps": 10.0, "width": 16.0, "lr": 1.0})
    assert a == b and a.config_hash() == b.config_hash() and hash(a) == hash(b)
    assert isinstance(a.lr, float) and isinstance(a.width, int)
    # a field given at its default value is the same run as one left out
    assert RunConfig(lr=0.1, momentum=0.0).config_hash() == RunConfig().config_hash()
    # every field change changes the hash
    assert RunConfig(lr=0.2).config_hash() != RunConfig().config_hash()
    assert RunConfig(seed=1).config_hash() != RunConfig(data_seed=1).config_hash()
    assert RunConfig(probes=("trace", "lambda_max")).config_hash() != RunConfig().config_hash()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"model": "resnet"},
            "unknown model 'resnet'; choose one of cnn, cnn1d, mlp, rf_fourier, rf_relu",
        ),
        ({"dataset": "cifar"}, "unknown dataset 'cifar'"),
        ({"lr": -1.0}, "lr must be a finite number > 0"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"width": 0}, "width must be an integer >= 1"),
        ({"width": 2.5}, "width must be an integer"),
        (
            {"optimizer": "lamb"},
            "unknown optimizer 'lamb'; choose one of adam, asam, egr, gd, penalty, sam, sgd",
        ),
        ({"optimizer": "sgd"}, "optimizer 'sgd' needs batch_size"),
        ({"batch_size": 32}, "optimizer 'gd' is full batch"),
        ({"optimizer": "egr", "momentum": 0.9}, "optimizer 'egr' takes no momentum"),
        ({"momentum": 1.0}, "momentum must be in [0, 1)"),
        ({"nesterov": True}, "nesterov=True needs momentum > 0"),
        ({"label_noise": 1.0}, "label_noise must be in [0, 1)"),
        ({"steps": None}, "set steps and/or epochs"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"task": "regression"}, "task 'regression' needs loss 'mse'"),
        ({"probes": ("lambda_max", "sharpest")}, "unknown probe 'sharpest'"),
        ({"probes": ("trace", "trace")}, "probes are listed twice"),
        ({"probe_options": {"bogus": 1}}, "unknown probe option 'bogus'"),
        ({"dtype": "float16"}, "unknown dtype 'float16'"),
        ({"eval_every": 0}, "eval_every must be >= 1"),
        ({"max_loss": 0.0}, "max_loss must be > 0"),
        ({"device": "tpu"}, "device must look like cpu"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_bad_values_raise_value_error_saying_what_is_allowed(changes, message):
    with pytest.raises(ValueError) as err:
        RunConfig(**changes)
    assert message in str(err.value)


def test_unknown_fields_are_rejected_with_the_valid_list():
    with pytest.raises(
        ValueError, match="unknown config field.*learning_rate.*valid fields: model"
    ):
        RunConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="unknown config field"):
        RunConfig().replace(widht=3)


def test_parse_field_value_gives_the_declared_types():
    assert parse_field_value("lr", "0.05") == 0.05
    assert parse_field_value("width", "32") == 32
    assert parse_field_value("batch_size", "none") is None
    assert parse_field_value("nesterov", "yes") is True
    assert parse_field_value("checkpoint", "0") is False
    assert parse_field_value("probes", "lambda_max, trace") == ("lambda_max", "trace")
    assert parse_field_value("probes", "") == ()
    assert parse_field_value("probe_options", '{"trace_hvps": 60}') == {"trace_hvps": 60}
    with pytest.raises(ValueError, match="width must be an integer"):
        parse_field_value("width", "wide")
    with pytest.raises(ValueError, match="unknown config field 'colour'"):
        parse_field_value("colour", "red")


def test_from_file_reads_json_and_toml(tmp_path):
    cfg = RunConfig(lr=0.3, width=8, probes=())
    (tmp_path / "c.json").write_text(cfg.to_json())
    assert RunConfig.from_file(tmp_path / "c.json") == cfg
    (tmp_path / "c.toml").write_text("[run]\nlr = 0.3\nwidth = 8\nprobes = []\n")
    assert RunConfig.from_file(tmp_path / "c.toml") == cfg
    assert RunConfig.from_file(tmp_path / "c.toml", seed=3) == cfg.replace(seed=3)
    (tmp_path / "bad.toml").write_text("lr = [0.3\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        RunConfig.from_file(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="does not exist"):
        RunConfig.from_file(tmp_path / "missing.toml")


def test_specs_are_the_build_model_and_load_dataset_arguments():
    from implicit_reg.workloads.data import load_dataset
    from implicit_reg.workloads.models import build_model

    cfg = RunConfig(dataset="teacher", n_train=20, n_test=10, width=5, data_seed=2, seed=4)
    data_spec = cfg.dataset_spec()
    data = load_dataset(data_spec.pop("name"), **data_spec)
    spec = cfg.model_spec(data.input_dim, data.output_dim)
    model = build_model(spec.pop("name"), **spec)
    assert model(data.x_train).shape == (20, data.output_dim)
    assert set(BASE_METRICS) >= {"train_loss", "test_error", "grad_norm_sq", "weight_norm"}
