"""Width-parameterized models for double-descent and implicit-regularization runs.

Every model maps a flat input ``(B, input_dim)`` to ``(B, output_dim)``
(logits or regression outputs) and is built by :func:`build_model` from a
name in :data:`MODELS`:

- ``"mlp"``: ``input_dim → width → … → width → output_dim`` with ``depth``
  hidden layers, e.g. the MNIST-1D paper's 40→h→h→10 MLP is ``depth=2``.
  Trainable parameters: ``(d+1)h + (depth−1)(h+1)h + (h+1)k`` (``depth ≥ 1``),
  ``(d+1)k`` for ``depth=0`` (a linear model).
- ``"cnn1d"``: ``depth`` stride-2 1-D convolutions with ``width`` channels
  (kernel 5 first, then 3), flattened into a linear readout. With
  ``L_j = ⌈L_{j−1}/2⌉`` (``L_0 = input_dim``) it has
  ``6c + (depth−1)(3c² + c) + (c·L_depth + 1)k`` trainable parameters.
- ``"cnn"``: Nakkiran et al.'s (2019, App. B) 5-layer CNN family on square
  images: four 3×3 convolutions with ``k, 2k, 4k, 8k`` channels (``k = width``),
  each followed by BatchNorm and ReLU, max-pools after layers 2 and 3 and a
  global max-pool after layer 4, then a linear readout. See :class:`CNN`.
- ``"rf_relu"``, ``"rf_fourier"``: random-features models (Belkin, Hsu, Ma,
  Mandal, PNAS 2019; Rahimi & Recht 2007). A fixed random first layer,
  ``φ(x) = √(2/N)·relu(Wx + b)`` or ``φ(x) = √(2/N)·cos(Wx + b)``, stored as
  buffers, and a trainable linear readout ``f(x) = Aφ(x) + c`` with
  ``N·k + k`` parameters (``N = width``). The readout starts at zero, so
  gradient descent on the squared loss converges to the minimum-norm
  interpolant, the solution :func:`min_norm_fit` computes in closed form.

The double-descent tools: :func:`random_features` (the feature matrix
Φ of an rf model), :func:`min_norm_fit` (minimum-norm least squares, ridge
optional) and :func:`fit_readout_min_norm` (writes that solution into an rf
model's readout).

Initialization is a pure function of ``seed``: models are built inside
``torch.random.fork_rng`` so the global RNG is never touched. Models are
built on the CPU in the default dtype; move them with ``.to(device, dtype)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "MLP",
    "CNN1d",
    "CNN",
    "RandomFeatures",
    "build_model",
    "count_params",
    "random_features",
    "min_norm_fit",
    "min_norm_fit_gram",
    "fit_readout_min_norm",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def count_params(model: nn.Module) -> int:
    """Number of trainable scalars, Σ numel(p) over parameters with ``requires_grad``.

    Frozen parameters and buffers (e.g. the random first layer of an rf
    model) are not counted: they are not fitted, so they do not count toward
    the interpolation threshold N ≈ n (or n·k)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


#: the MLP's initializations (``MLP(init=...)``)
MLP_INITS = ("default", "glorot")


def _glorot_(layer: nn.Linear) -> None:
    """Glorot-uniform weights, U(−√(6/(fan_in + fan_out)), +√(…)), and a zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """Fully connected net ``d → h → … → h → k`` with ``depth`` hidden layers.

    Trainable parameters (d inputs, h = width, k outputs, D = depth ≥ 1):
    ``(d+1)h + (D−1)(h+1)h + (h+1)k``; for D = 0 the net is linear, ``(d+1)k``.
    Initialization (``init``): ``"default"``, PyTorch's ``nn.Linear`` draw (weights and
    biases U(−1/√fan_in, 1/√fan_in), Kaiming-uniform with a = √5); ``"glorot"``, Glorot &
    Bengio 2010's uniform draw, weights U(−b, b) with b = √(6/(fan_in + fan_out)) and zero
    biases, the initialization of Belkin et al. 2019's networks. Two options change it:

    - ``zero_readout``: the last layer (weights and bias) starts at 0, so the
      network starts as f ≡ 0. Gradient descent still moves it: the readout's
      gradient is nonzero at once, the hidden layers' from the second step.
    - ``hidden_bias``: every hidden layer's bias starts at this constant. A
      small positive value (e.g. 0.1) keeps ReLU units active on nonnegative
      inputs such as MNIST pixels, so that a network of a few hidden units
      is not left with dead units (Belkin et al. 2019 train such nets, from
      H = 1 upwards, with the squared loss).
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        width: int,
        depth: int = 2,
        activation: str = "relu",
        *,
        zero_readout: bool = False,
        hidden_bias: float | None = None,
        init: str = "default",
    ):
        super().__init__()
        if init not in MLP_INITS:
            raise ValueError(f"unknown init {init!r}; valid: {list(MLP_INITS)}")
        if not isinstance(zero_readout, bool):
            raise ValueError(f"zero_readout must be true or false, got {zero_readout!r}")
        if hidden_bias is not None and (
            isinstance(hidden_bias, bool)
            or not isinstance(hidden_bias, (int, float))
            or not math.isfinite(hidden_bias)
        ):
            raise ValueError(f"hidden_bias must be a finite number or None, got {hidden_bias!r}")
        layers: list[nn.Module] = []
        fan_in = input_dim
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), _activation(activation)]
            fan_in = width
            if init == "glorot":
                _glorot_(layers[-2])
            if hidden_bias is not None:
                nn.init.constant_(layers[-2].bias, float(hidden_bias))
        layers.append(nn.Linear(fan_in, output_dim))
        if init == "glorot":
            _glorot_(layers[-1])
        if zero_readout:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    #: forward(x) is ``self.net(x.flatten(1))``: the probes' R-operator may run the body
    #: itself (:func:`implicit_reg.probes.rop.mlp_plan`)
    rop_sequential = "net"

    def forward(self, x: Tensor) -> Tensor:  # (B, d) -> (B, k)
        return self.net(x.flatten(1))


def cnn1d_lengths(input_dim: int, depth: int) -> list[int]:
    """Sequence lengths after each stride-2 convolution, L_j = ⌈L_{j−1}/2⌉."""
    lengths = [input_dim]
    for _ in range(depth):
        lengths.append((lengths[-1] + 1) // 2)
    return lengths


class CNN1d(nn.Module):
    """Small 1-D CNN: ``depth`` stride-2 convolutions with ``width`` channels.

    The flat input ``(B, L)`` is viewed as ``(B, 1, L)``. Layer 1 is
    ``Conv1d(1, c, 5, stride=2, padding=2)``, layers 2..depth are
    ``Conv1d(c, c, 3, stride=2, padding=1)``, each followed by the activation;
    both halve the length, ``L_j = ⌈L_{j−1}/2⌉``. The ``(c, L_depth)`` map is
    flattened into a linear readout (as in the MNIST-1D paper's CNN).
    Trainable parameters: ``6c + (depth−1)(3c² + c) + (c·L_depth + 1)k``.
    """

    def __init__(
        self, input_dim: int, output_dim: int, width: int, depth: int = 2, activation: str = "relu"
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(1, width, 5, stride=2, padding=2)]
        layers.append(_activation(activation))
        for _ in range(depth - 1):
            layers += [nn.Conv1d(width, width, 3, stride=2, padding=1), _activation(activation)]
        self.features = nn.Sequential(*layers)
        self.input_dim = input_dim
        self.readout = nn.Linear(width * cnn1d_lengths(input_dim, depth)[-1], output_dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, L) -> (B, 1, L) -> (B, c, L_D) -> (B, k)
        h = self.features(x.reshape(len(x), 1, self.input_dim))
        return self.readout(h.flatten(1))


class CNN(nn.Module):
    """Nakkiran et al.'s (Deep Double Descent, 2019, App. B) CNN family, width ``k``.

    The flat input ``(B, s²)`` is viewed as one ``s × s`` channel. Four layers, each

        Conv2d(c_in, c, 3, stride 1, padding 1, no bias) → BatchNorm2d(c) → ReLU [→ MaxPool],

    with ``c = k, 2k, 4k, 8k``; max-pools of size 2 after layers 2 and 3 and a
    *global* max-pool after layer 4, then ``Linear(8k, classes)``. On CIFAR's
    32 × 32 this is the paper's pooling [1, 2, 2, 8] (32 → 16 → 8 → 1); on
    MNIST's 28 × 28 it is [1, 2, 2, 7] (28 → 14 → 7 → 1), our adaptation.
    BatchNorm has torch's defaults (ε = 1e-5, running-statistics momentum 0.1):
    batch statistics in train mode, running statistics in eval mode. The
    convolutions have no bias (the paper's code has one): before BatchNorm a bias
    cancels in train mode, so its gradient is zero in exact arithmetic, and Adam
    would turn the rounding noise of that zero into steps of size ≈ lr; without it
    the function class is the same. Trainable parameters, with ``c_0 = 1`` input
    channel and ``c_j = 2^{j−1}k``: ``Σ_{j=1..4} (9c_{j−1} + 2)c_j + (8k + 1)·classes``.
    """

    def __init__(self, input_dim: int, output_dim: int, width: int, activation: str = "relu"):
        super().__init__()
        side = math.isqrt(input_dim)
        if side * side != input_dim or side < 4:
            raise ValueError(
                f"cnn needs square images of side >= 4 (input_dim = side²), got {input_dim}"
            )
        self.side = side
        layers: list[nn.Module] = []
        c_in = 1
        for j, c in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
            layers.append(_activation(activation))
            if j in (1, 2):
                layers.append(nn.MaxPool2d(2))
            c_in = c
        layers.append(nn.AdaptiveMaxPool2d(1))  # the global max-pool after layer 4
        self.features = nn.Sequential(*layers)
        self.readout = nn.Linear(8 * width, output_dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, s²) -> (B, 1, s, s) -> (B, 8k) -> (B, classes)
        h = self.features(x.reshape(len(x), 1, self.side, self.side))
        return self.readout(h.flatten(1))


RF_KINDS = ("relu", "fourier")


class RandomFeatures(nn.Module):
    """Random-features model f(x) = A·φ(x) + c with a fixed random first layer.

    φ(x) = √(2/N)·σ(Wx + b) ∈ R^N, N = ``num_features``:

    - ``kind="relu"``: σ = relu, W_ij ~ N(0, 1/d), b_j ~ N(0, 1) (random
      ReLU features; ⟨φ(x), φ(x')⟩ → a first-order arc-cosine kernel as N → ∞).
    - ``kind="fourier"``: σ = cos, W_ij ~ N(0, 1/σ_bw²), b_j ~ U[0, 2π)
      (random Fourier features, Rahimi & Recht 2007, as used by Belkin et al.
      2019): ⟨φ(x), φ(x')⟩ → exp(−‖x − x'‖²/(2σ_bw²)). The bandwidth σ_bw
      defaults to √d, the typical distance scale of standardized inputs.

    W and b are the buffers ``feature_weight`` and ``feature_bias`` (they
    move with ``.to`` and are saved in the state dict, but are not parameters);
    only the readout ``A ∈ R^{k×N}``, ``c ∈ R^k`` is trainable: ``N·k + k``
    parameters (``N·k`` with ``bias=False``). The readout starts at zero
    (``zero_readout=True``) so that gradient descent on the squared loss
    converges to the minimum-norm interpolant (Belkin et al. 2019, Sec. 3).
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        num_features: int,
        *,
        kind: str = "relu",
        bandwidth: float | None = None,
        bias: bool = True,
        zero_readout: bool = True,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if kind not in RF_KINDS:
            raise ValueError(f"unknown random-features kind {kind!r}; valid: {list(RF_KINDS)}")
        d, n = input_dim, num_features
        if kind == "relu":
            w = torch.randn(n, d, generator=generator) / math.sqrt(d)
            b = torch.randn(n, generator=generator)
        else:
            bw = math.sqrt(d) if bandwidth is None else float(bandwidth)
            if not math.isfinite(bw) or bw <= 0:
                raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")
            w = torch.randn(n, d, generator=generator) / bw
            b = torch.rand(n, generator=generator) * (2 * math.pi)
        self.kind = kind
        self.input_dim = d
        self.num_features = n
        self.register_buffer("feature_weight", w)  # W: (N, d)
        self.register_buffer("feature_bias", b)  # b: (N,)
        self.readout = nn.Linear(n, output_dim, bias=bias)
        if zero_readout:
            with torch.no_grad():
                self.readout.weight.zero_()
                if self.readout.bias is not None:
                    self.readout.bias.zero_()

    def features(self, x: Tensor) -> Tensor:
        """φ(x) = √(2/N)·σ(Wx + b), shape (B, N)."""
        z = x.flatten(1) @ self.feature_weight.T + self.feature_bias
        z = torch.relu(z) if self.kind == "relu" else torch.cos(z)
        return z * math.sqrt(2.0 / self.num_features)

    def forward(self, x: Tensor) -> Tensor:  # (B, d) -> (B, N) -> (B, k)
        return self.readout(self.features(x))


MLP_OPTIONS = ("zero_readout", "hidden_bias", "init")


def _build_mlp(*, input_dim, output_dim, width, depth, activation, seed, **kwargs) -> nn.Module:
    _check_int("depth", depth, 0)
    unknown = sorted(set(kwargs) - set(MLP_OPTIONS))
    if unknown:
        raise ValueError(f"mlp got unknown arguments {unknown}; valid: {list(MLP_OPTIONS)}")
    return MLP(input_dim, output_dim, width, depth, activation, **kwargs)


def _build_cnn1d(*, input_dim, output_dim, width, depth, activation, seed, **kwargs) -> nn.Module:
    _check_int("depth", depth, 1)
    if kwargs:
        raise ValueError(f"cnn1d takes no extra arguments, got {sorted(kwargs)}")
    return CNN1d(input_dim, output_dim, width, depth, activation)


def _build_cnn(*, input_dim, output_dim, width, depth, activation, seed, **kwargs) -> nn.Module:
    # depth does not apply: the family has four convolutions
    if kwargs:
        raise ValueError(f"cnn takes no extra arguments, got {sorted(kwargs)}")
    return CNN(input_dim, output_dim, width, activation)


def _rf_builder(kind: str) -> Callable[..., nn.Module]:
    def build(*, input_dim, output_dim, width, depth, activation, seed, **kwargs) -> nn.Module:
        # depth and activation do not apply: the features are fixed by `kind`.
        allowed = {"bandwidth", "bias", "zero_readout"}
        if set(kwargs) - allowed:
            raise ValueError(
                f"rf_{kind} got unknown arguments {sorted(set(kwargs) - allowed)}; "
                f"valid: {sorted(allowed)}"
            )
        gen = torch.Generator().manual_seed(seed)
        return RandomFeatures(input_dim, output_dim, width, kind=kind, generator=gen, **kwargs)

    return build


# Each builder takes input_dim, output_dim, width, depth, activation, seed and
# model-specific keywords; build_model validates the shared ones and forks the RNG.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _build_mlp,
    "cnn1d": _build_cnn1d,
    "cnn": _build_cnn,
    "rf_relu": _rf_builder("relu"),
    "rf_fourier": _rf_builder("fourier"),
}


def build_model(
    name: str,
    *,
    input_dim: int,
    output_dim: int,
    width: int,
    depth: int = 2,
    activation: str = "relu",
    seed: int = 0,
    **kwargs,
) -> nn.Module:
    """Build model ``name`` from :data:`MODELS`, initialized deterministically from ``seed``.

    ``width`` is the hidden width (mlp), the channel count (cnn1d) or the
    number of random features N (rf_relu, rf_fourier); ``depth`` is the
    number of hidden layers (mlp) or convolutions (cnn1d) and is ignored by
    cnn (four convolutions, ``width`` = k) and the rf models, as is ``activation``
    by the rf models. Extra keyword arguments go to the
    model (mlp: ``zero_readout``, ``hidden_bias``, ``init``; rf models: ``bandwidth``,
    ``bias``, ``zero_readout``).

    The global torch RNG is left as it was (the model is built under
    ``torch.random.fork_rng`` seeded with ``seed``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {sorted(MODELS)}")
    _activation(activation)  # validate even where it is unused
    input_dim = _check_int("input_dim", input_dim, 1)
    output_dim = _check_int("output_dim", output_dim, 1)
    width = _check_int("width", width, 1)
    seed = _check_int("seed", seed, 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](
            input_dim=input_dim,
            output_dim=output_dim,
            width=width,
            depth=depth,
            activation=activation,
            seed=seed,
            **kwargs,
        )


def random_features(model: nn.Module, x: Tensor) -> Tensor:
    """The random-features matrix Φ = φ(X) of an rf model, shape (n, N), without autograd."""
    if not isinstance(model, RandomFeatures):
        raise ValueError(
            f"random_features needs an rf model (rf_relu, rf_fourier), got {type(model).__name__}"
        )
    with torch.no_grad():
        return model.features(x.to(model.feature_weight.device, model.feature_weight.dtype))


def _least_squares_inputs(features, targets, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 NumPy copies of Φ (n, N) and y (n,) or (n, k)."""

    def as_array(a) -> np.ndarray:
        if isinstance(a, Tensor):
            return a.detach().cpu().double().numpy()
        return np.asarray(a, dtype=np.float64)

    phi, y = as_array(features), as_array(targets)
    if phi.ndim != 2:
        raise ValueError(f"features must be a 2-D (n, N) matrix, got shape {phi.shape}")
    if y.ndim not in (1, 2) or len(y) != len(phi):
        raise ValueError(
            f"targets must have shape (n,) or (n, k) with n = {len(phi)}, got {y.shape}"
        )
    if not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(y))):
        raise ValueError("features and targets must be finite (no NaN or inf)")
    return phi, y


def _like(coef: np.ndarray, features):
    """``coef`` as a tensor with the dtype and device of tensor ``features``, else as is."""
    if isinstance(features, Tensor):
        return torch.as_tensor(coef, dtype=features.dtype, device=features.device)
    return coef


def min_norm_fit(features, targets, ridge: float = 0.0, *, rcond: float | None = None):
    """Minimum-norm (ridge) least squares, β = argmin ‖Φβ − y‖² + λ‖β‖².

    Through the thin SVD Φ = U diag(s) Vᵀ,

        β = V diag(s_i / (s_i² + λ)) Uᵀ y,

    which for λ = 0 is the pseudo-inverse solution β = Φ⁺y: the exact least-
    squares solution when n > N, and the interpolant of smallest ‖β‖₂ when
    N ≥ n (Belkin et al. 2019). For λ = 0, singular values below
    ``rcond·s_max`` (default ``max(n, N)·eps``, as ``np.linalg.pinv``/``lstsq``)
    are treated as zero.

    ``features`` is (n, N), ``targets`` (n,) or (n, k); the result is (N,)
    or (N, k), a NumPy array for NumPy input and a tensor (dtype and device
    of ``features``) for tensor input. The SVD runs in float64 in NumPy with
    one BLAS thread: on small shared machines a threaded LAPACK SVD was
    measured up to 30× slower (``benchmarks/bench_blas_threads.py``).
    """
    phi, y = _least_squares_inputs(features, targets, ridge)
    with threadpool_limits(1):
        u, s, vt = np.linalg.svd(phi, full_matrices=False)
        if ridge > 0:
            inv = s / (s * s + ridge)
        else:
            cutoff = max(phi.shape) * np.finfo(np.float64).eps if rcond is None else rcond
            cutoff = cutoff * (s[0] if s.size else 0.0)
            inv = np.where(s > cutoff, 1.0 / np.where(s > cutoff, s, 1.0), 0.0)
        coef = vt.T @ (inv[:, None] * (u.T @ y.reshape(len(y), -1)))
    coef = coef.reshape((phi.shape[1],) + y.shape[1:])
    return _like(coef, features)


def min_norm_fit_gram(features, targets, ridge: float = 0.0):
    """:func:`min_norm_fit` through the smaller Gram matrix: faster, less accurate.

    The same solution, β = Φ⁺y (λ = 0) or the ridge solution (λ > 0), from

        N ≥ n:  β = Φᵀ(ΦΦᵀ + λI)⁻¹ y     (n×n Gram matrix),
        N < n:  β = (ΦᵀΦ + λI)⁻¹ Φᵀy     (N×N Gram matrix),

    solved by Cholesky, in float64 NumPy with one BLAS thread. When the Gram
    matrix is not numerically positive definite (a rank-deficient Φ: Cholesky
    fails or a pivot falls below ``m·eps·max diag``), it falls back to its
    eigendecomposition with eigenvalues below ``m·eps·λ_max`` treated as
    zero (m = min(n, N)).

    Cost: one GEMM of n·N·min(n, N) flops and a Cholesky of min(n, N)³/3,
    against an SVD's ≈ 4·n·N·min(n, N) + 8·min(n, N)³ flops, measured about
    10× slower at n = N = 4,000. Forming the Gram matrix squares the
    condition number: the relative error is about cond(Φ)²·eps instead of
    cond(Φ)·eps, enough for predictions and norms of random-features fits up
    to cond(Φ) ≈ 1e6 (the interpolation peak of MNIST-1D at n = 4,000 has
    cond(Φ) ≈ 5e5). Input and output types follow :func:`min_norm_fit`.
    """
    import scipy.linalg

    phi, y = _least_squares_inputs(features, targets, ridge)
    n, big_n = phi.shape
    y2 = y.reshape(n, -1)
    wide = big_n >= n
    with threadpool_limits(1):
        gram = phi @ phi.T if wide else phi.T @ phi  # (m, m), m = min(n, N)
        rhs = y2 if wide else phi.T @ y2
        if ridge > 0:
            gram[np.diag_indices_from(gram)] += ridge
        cutoff_rel = len(gram) * np.finfo(np.float64).eps
        try:
            factor = scipy.linalg.cho_factor(gram)
            # λ_min ≤ the smallest pivot L_ii²: a tiny pivot means numerically singular
            if np.min(np.diag(factor[0])) ** 2 <= cutoff_rel * np.max(np.diag(gram)):
                raise np.linalg.LinAlgError("numerically singular Gram matrix")
            sol = scipy.linalg.cho_solve(factor, rhs)
        except np.linalg.LinAlgError:  # not positive definite: pseudo-inverse
            w, v = np.linalg.eigh(gram)
            cutoff = cutoff_rel * max(w[-1], 0.0)
            inv = np.where(w > cutoff, 1.0 / np.where(w > cutoff, w, 1.0), 0.0)
            sol = v @ (inv[:, None] * (v.T @ rhs))
        coef = phi.T @ sol if wide else sol
    coef = coef.reshape((big_n,) + y.shape[1:])
    return _like(coef, features)


def fit_readout_min_norm(
    model: RandomFeatures, x: Tensor, targets: Tensor, ridge: float = 0.0
) -> RandomFeatures:
    """Set an rf model's readout to the minimum-norm least-squares fit of ``targets``.

    Solves :func:`min_norm_fit` on [Φ, 1] (with the bias) or Φ (without),
    so the bias is part of the minimized norm, which is the point gradient
    descent from a zero readout converges to on the squared loss. ``targets``
    are (n,) or (n, k) floats; for classes pass one-hot vectors. Returns the
    model, modified in place.
    """
    phi = random_features(model, x)
    if model.readout.bias is not None:
        phi = torch.cat([phi, torch.ones(len(phi), 1, dtype=phi.dtype, device=phi.device)], 1)
    y = targets.reshape(len(targets), -1)
    if y.shape[1] != model.readout.out_features:
        raise ValueError(
            f"targets have {y.shape[1]} columns but the model has {model.readout.out_features} outputs"
        )
    coef = min_norm_fit(phi, y.to(phi.dtype), ridge)  # (N[+1], k)
    with torch.no_grad():
        model.readout.weight.copy_(coef[: model.num_features].T)
        if model.readout.bias is not None:
            model.readout.bias.copy_(coef[model.num_features])
    return model
