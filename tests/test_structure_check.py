"""The structure check's Gaussian reference (benchmarks/structure_check.py): its denoiser is the posterior mean of
Gaussian data, checked against the same formula solved by numpy, and its agreement measure on hand-worked cases."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from structure_check import GaussianDenoiser, agreement  # noqa: E402


@pytest.mark.parametrize("abar", [0.9, 0.3, 0.01])
def test_the_gaussian_denoiser_is_the_posterior_mean_of_its_fit(abar):
    # E[x0 | xt] for x0 ~ N(mu, S), xt = sqrt(a) x0 + sqrt(1 - a) eps: mu + K (xt - sqrt(a) mu) with
    # K = sqrt(a) S (a S + (1 - a) I)^-1, solved here directly rather than in S's eigenbasis.
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(200, 2, 2, 2, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 0.5]).view(1, 2, 1, 1) + 1.0
    den = GaussianDenoiser(z)
    flat = z.flatten(1).numpy()
    mu, cov = flat.mean(0), np.cov(flat.T)
    x = torch.randn(5, 2, 2, 2, generator=gen, dtype=torch.float64)
    gain = np.sqrt(abar) * np.linalg.solve(abar * cov + (1 - abar) * np.eye(8), cov).T  # S symmetric: (M^-1 S)^T
    expected = mu + (x.flatten(1).numpy() - np.sqrt(abar) * mu) @ gain.T
    # float64 throughout; eigh and solve differ by rounding of an 8 x 8 problem of condition number ~ 50
    np.testing.assert_allclose(den.x0(x, abar).flatten(1).numpy(), expected, rtol=1e-9, atol=1e-9)


def test_agreement_is_one_for_the_same_latents_and_zero_for_their_mean():
    a = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # mean (2, 4); |a - mean|^2 = 1 + 4 + 1 + 4 = 10
    assert agreement(a, a) == 1.0
    assert agreement(a, a.mean(0, keepdim=True).expand_as(a)) == pytest.approx(0.0, abs=1e-12)
    assert agreement(a, a + 1.0) == pytest.approx(1 - 4 / 10, abs=1e-12)  # |a - b|^2 = 4 x 1
