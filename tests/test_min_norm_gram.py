"""min_norm_fit_gram (Gram-matrix min-norm least squares) against the SVD and pinv oracles."""

import numpy as np
import pytest
import torch

from implicit_reg.workloads.models import min_norm_fit, min_norm_fit_gram


@pytest.mark.parametrize("n,p,k", [(30, 10, 1), (10, 30, 3), (20, 20, 2)])
def test_min_norm_fit_gram_matches_svd_fit(n, p, k):
    rng = np.random.default_rng(n + p)
    phi = rng.standard_normal((n, p))
    y = rng.standard_normal((n, k)).squeeze()
    np.testing.assert_allclose(
        min_norm_fit_gram(phi, y), min_norm_fit(phi, y), rtol=1e-7, atol=1e-9
    )
    np.testing.assert_allclose(
        min_norm_fit_gram(phi, y), np.linalg.pinv(phi) @ y, rtol=1e-7, atol=1e-9
    )


@pytest.mark.parametrize("n,p", [(25, 8), (8, 25)])
def test_min_norm_fit_gram_ridge_matches_normal_equations(n, p):
    rng = np.random.default_rng(3)
    phi, y, lam = rng.standard_normal((n, p)), rng.standard_normal((n, 2)), 0.7
    oracle = np.linalg.solve(phi.T @ phi + lam * np.eye(p), phi.T @ y)
    np.testing.assert_allclose(min_norm_fit_gram(phi, y, ridge=lam), oracle, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("wide", [False, True])
def test_min_norm_fit_gram_rank_deficient_falls_back_to_pinv(wide):
    rng = np.random.default_rng(5)
    phi = rng.standard_normal((12, 5))
    phi = np.concatenate([phi, phi[:, :2]], 1)  # repeated columns: rank 5 < 7
    if wide:
        phi = phi.T  # repeated rows: the n×n Gram matrix is singular
    y = rng.standard_normal(len(phi))
    np.testing.assert_allclose(min_norm_fit_gram(phi, y), np.linalg.pinv(phi) @ y, atol=1e-8)


def test_min_norm_fit_gram_tensor_in_tensor_out_and_validation():
    phi = torch.randn(6, 9, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    coef = min_norm_fit_gram(phi, torch.ones(6))
    assert isinstance(coef, torch.Tensor) and coef.dtype == torch.float32 and coef.shape == (9,)
    torch.testing.assert_close(
        phi.double() @ coef.double(), torch.ones(6, dtype=torch.float64), atol=1e-4, rtol=0
    )
    with pytest.raises(ValueError, match="ridge"):
        min_norm_fit_gram(phi, torch.ones(6), ridge=-1.0)
    with pytest.raises(ValueError, match="targets"):
        min_norm_fit_gram(phi, torch.ones(5))
