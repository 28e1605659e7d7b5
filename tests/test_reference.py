"""Discrepancy of fitted draws to an exact posterior: against closed forms for two Gaussians."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from noisydot_sbc.inference.quadrature import QuadratureResult
from noisydot_sbc.inference.reference import METRICS, discrepancy_from_cdf, reference_discrepancy

PARAMS = ("x_noise_lvl", "w_noise_lvl")


def _exact_normal(means, sds, S=2, F=4000):
    """A QuadratureResult whose log-scale marginals are N(mean_k, sd_k²) (edges and CDF)."""
    marg, mom = {}, {}
    for k, p in enumerate(PARAMS):
        edges = np.linspace(means[k] - 10 * sds[k], means[k] + 10 * sds[k], F + 1)
        cdf = stats.norm(means[k], sds[k]).cdf(edges)
        marg[p] = (np.tile(edges, (S, 1)), np.tile(cdf, (S, 1)))
        mom[p] = dict(log_mean=np.full(S, means[k]), log_sd=np.full(S, sds[k]),
                      mean=np.full(S, np.nan), sd=np.full(S, np.nan))
    z = np.zeros(S)
    return QuadratureResult(PARAMS, {}, marg, mom, z, z, np.ones(S, bool), z.astype(int), z, z, z,
                            np.ones(S, int), np.zeros(S, bool), [""] * S, 0.0)


def _w1_normals(m1, s1, m2, s2):
    t = np.linspace(min(m1 - 12 * s1, m2 - 12 * s2), max(m1 + 12 * s1, m2 + 12 * s2), 400001)
    return np.trapezoid(np.abs(stats.norm(m1, s1).cdf(t) - stats.norm(m2, s2).cdf(t)), t)


def test_two_gaussians_match_closed_forms():
    rng = np.random.default_rng(0)
    L = 40000
    exact = _exact_normal(means=(-2.0, -3.0), sds=(0.2, 0.5))
    fit = {"x_noise_lvl": (-1.9, 0.3), "w_noise_lvl": (-3.0, 0.5)}  # shifted + wider; identical
    draws = {p: np.exp(rng.normal(m, s, (2, 1, L))) for p, (m, s) in fit.items()}
    d = reference_discrepancy(draws, exact)
    for k, p in enumerate(PARAMS):
        me, se = exact.moments[p]["log_mean"][0], exact.moments[p]["log_sd"][0]
        mf, sf = fit[p]
        kl = np.log(sf / se) + (se**2 + (me - mf) ** 2) / (2 * sf**2) - 0.5
        mc = se / np.sqrt(L)  # Monte Carlo scale of the draw-based estimates
        np.testing.assert_allclose(d.kl_log[:, k], kl, atol=0.02 * max(kl, 0.05))
        np.testing.assert_allclose(d.median_shift[:, k], (mf - me) / se, atol=6 * 1.25 * sf / np.sqrt(L) / se)
        np.testing.assert_allclose(d.sd_ratio[:, k], sf / se, rtol=0.02)
        np.testing.assert_allclose(d.w1_log[:, k], _w1_normals(me, se, mf, sf), atol=10 * mc + 1e-4)
    # identical posteriors: only the Monte Carlo floor remains
    assert np.all(d.w1_log[:, 1] < 0.02 * 0.5) and np.all(np.abs(d.median_shift[:, 1]) < 0.05)
    assert d.w1_log[0, 0] > 0.05  # a 0.1 shift plus a wider fit is clearly seen


def test_flat_names_and_failures_kept_as_nan():
    exact = _exact_normal(means=(0.0, 0.0), sds=(1.0, 1.0))
    draws = {p: np.exp(np.random.default_rng(1).normal(0, 1, (2, 500))) for p in PARAMS}
    d = reference_discrepancy(draws, exact, failed=np.array([False, True]))
    flat = d.as_dict()
    assert set(flat) == {f"{m}_{p}" for m in METRICS for p in PARAMS}
    assert np.all(np.isfinite(d.w1_log[0])) and np.all(np.isnan(d.w1_log[1]))
    with pytest.raises(ValueError, match="w_noise_lvl"):
        reference_discrepancy({"x_noise_lvl": draws["x_noise_lvl"]}, exact)
    with pytest.raises(ValueError, match="replicates"):
        reference_discrepancy({p: v[:1] for p, v in draws.items()}, exact)


def test_w1_of_a_point_mass_against_a_normal():
    # draws all at the mean: W1 = E|X - m| = sd sqrt(2/pi)
    edges = np.linspace(-10, 10, 20001)
    w1, kl, shift, ratio = discrepancy_from_cdf(np.zeros(2) + np.array([0.0, 1e-12]), edges,
                                                stats.norm.cdf(edges), 0.0, 1.0)
    assert abs(w1 - np.sqrt(2 / np.pi)) < 1e-3
    assert abs(shift) < 1e-9 and ratio < 1e-9
