"""One training run, described by a frozen, JSON-serialisable dataclass.

A :class:`RunConfig` holds everything needed to redo a run: model, data,
loss, optimizer, stopping rule, probe schedule, seed and runtime. Two equal
configs give identical metrics on CPU (every random draw is seeded from
``seed`` and ``data_seed``), and :meth:`RunConfig.config_hash` names the run's
directory on disk, so a sweep can tell which runs are already done.

Hash convention: the SHA-256 of the canonical JSON of the fields that differ
from their defaults (keys sorted, floats as Python's shortest repr), first
12 hex characters. Leaving defaults out means a field added later with a
default does not change the hashes of existing runs; the price is that a
default's meaning must never change. :data:`RUNTIME_FIELDS` (how often to
checkpoint) never change a run's numbers and are left out of the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.modified_gradient import EGR_METHODS
from ..workloads.data import TASKS
from ..workloads.losses import LOSSES

__all__ = [
    "RunConfig",
    "LOSSES",
    "OPTIMIZERS",
    "SHARPNESS_OPTIMIZERS",
    "ADAM_FIELDS",
    "DTYPES",
    "TASKS",
    "EGR_METHODS",
    "BASE_METRICS",
    "RUNTIME_FIELDS",
    "config_fields",
    "load_toml",
    "parse_field_value",
]

#: the sharpness-aware optimizers (two gradients per step; config field ``rho`` required)
SHARPNESS_OPTIMIZERS = ("sam", "asam", "penalty")
#: the optimizer names a config may use (built by engine.optimizers.build_optimizer)
OPTIMIZERS = ("gd", "sgd", "egr", *SHARPNESS_OPTIMIZERS, "adam")
#: Adam's settings (config fields); a non-default one needs optimizer "adam"
ADAM_FIELDS = ("adam_beta1", "adam_beta2", "adam_eps", "adam_bias_correction", "adam_eps_placement")
DTYPES = ("float32", "float64")
#: fields that change how a run is executed, never its numbers: not part of the hash,
#: so a sweep that adds checkpoints finds its finished runs where they were
RUNTIME_FIELDS = ("checkpoint_every", "keep_checkpoints", "save_params")
# Logged at every evaluation step, whatever the probe schedule.
BASE_METRICS = (
    "train_loss",
    "train_error",
    "test_loss",
    "test_error",
    "grad_norm_sq",
    "weight_norm",
    "dist_from_init",
)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run (nanoGPT-style commented defaults)."""

    # --- model (implicit_reg.workloads.models.build_model) ---
    model: str = "mlp"  # "mlp", "cnn1d", "rf_relu", "rf_fourier"
    width: int = 64  # hidden units / channels / random features N
    depth: int = 2  # hidden layers (mlp, cnn1d)
    activation: str = "relu"
    # extra keyword arguments of build_model (e.g. {"readout_init": "zero"}); part of the hash
    model_options: dict[str, Any] | None = None
    # a run's checkpoint file (checkpoint.pt): its weights initialize this model; a smaller
    # tensor fills the leading block of the new one, the rest keeps this model's seeded
    # init (Belkin et al. 2019's weight reuse across widths)
    init_from: str | None = None
    # with init_from: the entries of each weight matrix outside the copied leading block
    # (a new unit's incoming and outgoing weights) drawn from N(0, init_from_noise²) instead
    # of this model's init; biases keep it. Belkin et al. 2019 (SI) draw a larger network's
    # weights not taken from the smaller one from a normal with mean 0 and variance 0.01
    init_from_noise: float | None = None
    # --- data (implicit_reg.workloads.data.load_dataset) ---
    dataset: str = "mnist1d"  # "mnist1d", "teacher", "mnist"
    n_train: int | None = None  # None: the data set's default size
    n_test: int | None = None
    label_noise: float = 0.0  # fraction of training labels flipped, in [0, 1)
    task: str = "classification"  # "regression": real targets (teacher) or one-hot floats
    data_seed: int = 0  # subset, label noise (and the teacher); fixed while `seed` varies
    # --- loss ---
    loss: str = "cross_entropy"  # a name of implicit_reg.workloads.losses.LOSSES
    # --- optimizer ---
    optimizer: str = "gd"  # "gd" full batch, "sgd" minibatch, "egr" GD on L + mu*|grad L|^2
    lr: float = 0.1  # step size h
    # step decay: every lr_decay_every steps each parameter group's lr is multiplied by
    # lr_decay_factor (EGR's default mu = h/4 follows the decayed h); None: constant lr
    lr_decay_every: int | None = None
    lr_decay_factor: float = 1.0
    momentum: float = 0.0  # heavy ball beta (gd, sgd)
    nesterov: bool = False
    weight_decay: float = 0.0
    egr_coeff: float | None = None  # mu; None: h/4, the IGR modified loss
    egr_method: str = "exact"  # or "finite_difference"
    batch_size: int | None = None  # None: full batch (gd, egr); required for sgd
    # egr only: the penalty is the mean of mu*|grad L_j|^2 over micro-batches of this size
    # inside each batch (Smith et al. 2021's explicit SGD regularizer); None: the whole batch
    egr_micro_batch: int | None = None
    # sam/asam/penalty only (required there): radius rho (r of the penalty); None elsewhere.
    # A non-default rho keeps these runs serial in the vectorized planner.
    rho: float | None = None
    sam_alpha: float | None = None  # penalty only: alpha = lambda/r; None: 0.8
    asam_eta: float | None = None  # asam only: eta of T = |theta| + eta; None: 0.01
    # adam only (core.optim.Adam; torch.optim.Adam's defaults): full batch, or minibatches
    # with batch_size; weight_decay is torch's L2 term; trained serially (no ensemble step)
    adam_beta1: float = 0.9  # beta1, the first-moment EMA (Adam's momentum)
    adam_beta2: float = 0.999  # beta2, the second-moment EMA
    adam_eps: float = 1e-8  # epsilon of the denominator
    adam_bias_correction: bool = True  # divide the moments by 1 - beta_i^t
    # "outside": sqrt(v) + eps (torch); "inside": sqrt(v + eps) (Cattaneo et al. 2024)
    adam_eps_placement: str = "outside"
    # --- stopping rule: the first of these budgets that is reached ends the run ---
    steps: int | None = 1000  # optimizer steps
    epochs: int | None = None  # passes over the training set (1 epoch = 1 step at full batch)
    target_train_loss: float | None = None  # stop once the full train loss is <= this
    max_loss: float = 1e6  # divergence bound: a loss above it (or NaN/inf) ends the run
    # --- logging and probes ---
    eval_every: int = 50  # steps between evaluations of BASE_METRICS (also at 0 and at the end)
    eval_at: tuple[int, ...] = ()  # further steps to evaluate at (e.g. log-spaced epochs)
    # steps between light evaluations in between: the losses and error rates alone (forward
    # passes; no gradient, norms or distance), for curves that need only those (None: none)
    error_every: int | None = None
    probes: tuple[str, ...] = ("lambda_max", "trace")  # implicit_reg.probes names
    probe_every: int = 0  # steps between probe evaluations; 0: only at the end
    probe_options: dict[str, Any] | None = None  # run_probes options, e.g. {"trace_hvps": 60}
    # --- runtime ---
    seed: int = 0  # initialization, minibatch order, probes
    device: str = "cpu"
    dtype: str = "float32"
    chunk_size: int | None = None  # rows per forward pass for full-data losses; None: all
    checkpoint: bool = False  # save model + optimizer state at the end
    # write the final and the initial model state to params.pt (engine.store.PARAMS_FILE)
    # at the end of a complete run, for measures computed afterwards; serial and ensemble
    save_params: bool = False
    # save the whole training state every K steps (atomically) so that a killed run
    # resumes from there and ends bit-identical to an uninterrupted one; None: never
    checkpoint_every: int | None = None
    keep_checkpoints: int = 1  # mid-run checkpoints kept once the run has ended (0: none)

    def __post_init__(self) -> None:
        self._normalise()
        self.validate()

    # ------------------------------------------------------------------ checks
    def _normalise(self) -> None:
        """Coerce JSON/TOML values to the declared types, so equal configs hash equally."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(f.name, _FIELD_TYPES[f.name], value))

    def validate(self) -> None:
        """Raise ``ValueError`` saying what is wrong and what is allowed."""
        from ..workloads.data import DATASETS
        from ..workloads.models import MODELS

        _choice("model", self.model, MODELS)
        _choice("dataset", self.dataset, DATASETS)
        _choice("loss", self.loss, LOSSES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("dtype", self.dtype, DTYPES)
        _choice("task", self.task, TASKS)
        _choice("egr_method", self.egr_method, EGR_METHODS)
        _positive_int("width", self.width)
        _positive_int("depth", self.depth)
        for name in (
            "n_train", "n_test", "batch_size", "egr_micro_batch", "steps", "epochs", "chunk_size",
            "lr_decay_every", "checkpoint_every",
        ):  # fmt: skip
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        _finite("lr", self.lr, lower=0.0, strict=True)
        _finite("momentum", self.momentum, lower=0.0)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        _finite("weight_decay", self.weight_decay, lower=0.0)
        _finite("lr_decay_factor", self.lr_decay_factor, lower=0.0, strict=True)
        if self.lr_decay_factor != 1.0 and self.lr_decay_every is None:
            raise ValueError(
                f"lr_decay_factor={self.lr_decay_factor} needs lr_decay_every (steps between decays)"
            )
        if self.model_options:
            reserved = sorted(set(self.model_options) & set(_MODEL_SPEC_KEYS))
            if reserved:
                raise ValueError(
                    f"model_options may not set {', '.join(reserved)}: they are config fields "
                    "of their own (model, width, depth, activation, seed)"
                )
        if self.init_from is not None and not self.init_from.strip():
            raise ValueError("init_from must be a checkpoint path or None, got ''")
        if self.init_from_noise is not None:
            _finite("init_from_noise", self.init_from_noise, lower=0.0)
            if self.init_from is None:
                raise ValueError("init_from_noise needs init_from (a checkpoint to reuse)")
        _finite("label_noise", self.label_noise, lower=0.0)
        if self.label_noise >= 1:
            raise ValueError(f"label_noise must be in [0, 1), got {self.label_noise}")
        if self.egr_coeff is not None:
            _finite("egr_coeff", self.egr_coeff, lower=0.0)
        if self.target_train_loss is not None:
            _finite("target_train_loss", self.target_train_loss, lower=0.0)
        if not (self.max_loss > 0):  # inf is allowed: no bound
            raise ValueError(f"max_loss must be > 0 (inf: no bound), got {self.max_loss}")
        if self.keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        if any(s < 1 for s in self.eval_at) or list(self.eval_at) != sorted(set(self.eval_at)):
            raise ValueError(f"eval_at must be increasing steps >= 1, got {list(self.eval_at)}")
        if self.error_every is not None and (
            isinstance(self.error_every, bool)
            or not isinstance(self.error_every, int)
            or self.error_every < 1
        ):
            raise ValueError(f"error_every must be an int >= 1 or None, got {self.error_every!r}")
        if self.probe_every < 0:
            raise ValueError(
                f"probe_every must be >= 0 (0: only at the end), got {self.probe_every}"
            )
        for name in ("seed", "data_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.steps is None and self.epochs is None:
            raise ValueError("set steps and/or epochs: a run needs a budget")
        if self.optimizer == "sgd" and self.batch_size is None:
            raise ValueError("optimizer 'sgd' needs batch_size; use optimizer 'gd' for full batch")
        if self.optimizer == "gd" and self.batch_size is not None:
            raise ValueError(
                "optimizer 'gd' is full batch, so batch_size must be None; use 'sgd' for minibatches"
            )
        if self.optimizer == "egr" and (self.momentum or self.nesterov or self.weight_decay):
            raise ValueError("optimizer 'egr' takes no momentum, nesterov or weight_decay")
        if self.egr_micro_batch is not None and (
            self.optimizer != "egr" or self.egr_method != "exact"
        ):
            raise ValueError(
                "egr_micro_batch needs optimizer 'egr' with egr_method 'exact', got "
                f"optimizer {self.optimizer!r}, egr_method {self.egr_method!r}"
            )
        sharp = self.optimizer in SHARPNESS_OPTIMIZERS
        if sharp and self.rho is None:
            raise ValueError(
                f"optimizer {self.optimizer!r} needs rho, the radius of its ascent step "
                "(e.g. rho=0.05)"
            )
        if not sharp and self.rho is not None:
            raise ValueError(
                f"rho applies only to optimizers {', '.join(SHARPNESS_OPTIMIZERS)}; got "
                f"optimizer {self.optimizer!r} with rho={self.rho!r}"
            )
        if self.rho is not None:
            _finite("rho", self.rho, lower=0.0)
        for name, owner in (("sam_alpha", "penalty"), ("asam_eta", "asam")):
            value = getattr(self, name)
            if value is not None and self.optimizer != owner:
                raise ValueError(f"{name} needs optimizer {owner!r}, got {self.optimizer!r}")
            if value is not None:
                _finite(name, value, lower=0.0)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self._validate_adam()
        if self.loss == "cross_entropy" and self.task == "regression":
            raise ValueError("task 'regression' needs loss 'mse'")
        if self.device.split(":")[0] not in ("cpu", "cuda", "mps", "xpu"):
            raise ValueError(f"device must look like cpu, cuda, cuda:1 or mps, got {self.device!r}")
        if self.probes:
            from ..probes import PROBES

            for name in self.probes:
                _choice("probe", name, PROBES)
        if self.probe_options:
            from ..probes import DEFAULT_OPTIONS

            for key in self.probe_options:
                _choice("probe option", key, DEFAULT_OPTIONS)
        if len(set(self.probes)) != len(self.probes):
            raise ValueError(f"probes are listed twice: {list(self.probes)}")

    def _validate_adam(self) -> None:
        """Adam's settings: in range, and set only for optimizer 'adam'."""
        from ..core.updates import EPS_PLACEMENTS

        if self.optimizer != "adam":
            changed = [k for k in ADAM_FIELDS if getattr(self, k) != _DEFAULTS[k]]
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} need optimizer 'adam', got {self.optimizer!r}"
                )
            return
        for name in ("adam_beta1", "adam_beta2"):
            _finite(name, getattr(self, name), lower=0.0)
            if getattr(self, name) >= 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        _finite("adam_eps", self.adam_eps, lower=0.0)
        _choice("adam_eps_placement", self.adam_eps_placement, EPS_PLACEMENTS)
        if self.momentum or self.nesterov:
            raise ValueError(
                "optimizer 'adam' takes no momentum or nesterov: its momentum is adam_beta1"
            )

    # ----------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-ready values (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["probes"] = list(self.probes)
        out["eval_at"] = list(self.eval_at)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a dict such as :meth:`to_dict`'s; unknown keys raise ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"a run config must be a table/dict, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELD_TYPES))
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(_FIELD_TYPES)}"
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> RunConfig:
        """Read a config from JSON (``config.json`` of a run) or TOML (top-level
        fields, or a ``[run]`` table); ``overrides`` replace fields."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON: {err}") from None
        elif path.suffix.lower() == ".toml":
            try:
                data = load_toml(text)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
            if isinstance(data.get("run"), dict) and len(data) == 1:
                data = data["run"]
        else:
            raise ValueError(
                f"{path}: unknown config file type {path.suffix!r}; use .toml or .json"
            )
        try:
            return cls.from_dict({**data, **overrides})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - set(_FIELD_TYPES))
        if unknown:
            raise ValueError(
                f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(_FIELD_TYPES)}"
            )
        return dataclasses.replace(self, **changes)

    def __hash__(self) -> int:  # probe_options is a dict: hash the canonical form instead
        return hash(self.config_hash())

    def config_hash(self) -> str:
        """First 12 hex characters of SHA-256 over the canonical JSON of non-default fields
        (:data:`RUNTIME_FIELDS`, which never change the numbers, left out)."""
        defaults = _DEFAULTS
        diff = {
            k: v for k, v in self.to_dict().items() if v != defaults[k] and k not in RUNTIME_FIELDS
        }
        canon = json.dumps(diff, sort_keys=True, separators=(",", ":"), allow_nan=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    # ------------------------------------------------------------- derived
    def model_spec(self, input_dim: int, output_dim: int) -> dict[str, Any]:
        """Keyword arguments of ``implicit_reg.workloads.models.build_model`` (with ``name``),
        ``model_options`` included."""
        return {
            "name": self.model,
            "input_dim": int(input_dim),
            "output_dim": int(output_dim),
            "width": self.width,
            "depth": self.depth,
            "activation": self.activation,
            "seed": self.seed,
            **(self.model_options or {}),
        }

    def dataset_spec(self) -> dict[str, Any]:
        """Keyword arguments of ``implicit_reg.workloads.data.load_dataset`` (with ``name``)."""
        return {
            "name": self.dataset,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "label_noise": self.label_noise,
            "seed": self.data_seed,
            "task": self.task,
        }


# ---------------------------------------------------------------- field types
#: build_model arguments that come from fields of their own, not from model_options
_MODEL_SPEC_KEYS = ("name", "input_dim", "output_dim", "width", "depth", "activation", "seed")
_FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in dataclasses.fields(RunConfig)}
_DEFAULTS: dict[str, Any] = {}  # filled below, once the class exists


def load_toml(text: str) -> dict[str, Any]:
    """Parse TOML text (``tomllib``, or ``tomli`` on Python 3.10); ``ValueError`` if malformed."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"not valid TOML: {err}") from None


def config_fields() -> dict[str, str]:
    """Field name -> declared type (as written in the class), in declaration order."""
    return dict(_FIELD_TYPES)


def _coerce(name: str, typ: str, value: Any) -> Any:
    optional = typ.endswith("| None")
    base = typ.replace("| None", "").strip()
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} must not be None (expected {base})")
    if base == "int":
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or float(value) != int(value)
        ):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if base == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if base == "str":
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    if base == "dict[str, Any]":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{name} must be a table of options, got {value!r}")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must hold JSON values (numbers, strings), got {value!r}"
            ) from None
        return dict(sorted(value.items())) or None
    if base == "tuple[int, ...]":
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        try:
            return tuple(_coerce(name, "int", int(v) if isinstance(v, str) else v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a list of integers, got {value!r}") from None
    if base == "tuple[str, ...]":
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of strings, got {value!r}")
        return tuple(value)
    raise TypeError(f"no coercion for field {name} of type {typ}")  # pragma: no cover


def parse_field_value(name: str, text: str) -> Any:
    """Parse a command-line string for field ``name`` into its declared type.

    ``"none"`` gives None for optional fields; booleans accept true/false/1/0/yes/no;
    tuple fields take comma-separated names.
    """
    if name not in _FIELD_TYPES:
        raise ValueError(f"unknown config field {name!r}; valid fields: {', '.join(_FIELD_TYPES)}")
    typ = _FIELD_TYPES[name]
    base = typ.replace("| None", "").strip()
    t = text.strip()
    if typ.endswith("| None") and t.lower() in ("none", "null", ""):
        return None
    try:
        if base == "int":
            return int(t)
        if base == "float":
            return float(t)
    except ValueError:
        raise ValueError(
            f"{name} must be {'an integer' if base == 'int' else 'a number'}, got {text!r}"
        ) from None
    if base == "bool":
        low = t.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{name} must be true or false, got {text!r}")
    if base == "tuple[str, ...]":
        return tuple(v for v in (s.strip() for s in t.split(",")) if v)
    if base == "tuple[int, ...]":
        return _coerce(name, base, t)
    if base == "dict[str, Any]":
        try:
            return json.loads(t)
        except json.JSONDecodeError:
            raise ValueError(
                f"{name} must be a JSON object, e.g. '{{\"trace_hvps\": 60}}', got {text!r}"
            ) from None
    return t


def _choice(what: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(sorted(allowed))}")


def _positive_int(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")


def _finite(name: str, value: float, *, lower: float, strict: bool = False) -> None:
    bad = not math.isfinite(value) or (value <= lower if strict else value < lower)
    if bad:
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {op} {lower:g}, got {value}")


_DEFAULTS.update(
    {
        f.name: (list(f.default) if isinstance(f.default, tuple) else f.default)
        for f in dataclasses.fields(RunConfig)
        if f.default is not dataclasses.MISSING
    }
)
