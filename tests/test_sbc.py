"""SBC statistics on a conjugate Normal-Normal model with exact posterior draws.

Model: θ ~ N(0, 1), y_1..n | θ ~ N(θ, 1), posterior N(Σy / (n+1), 1 / (n+1)).
Test quantities (Modrák et al. 2023): θ itself and the log-likelihood log p(y | θ).
"""
import numpy as np
import pytest
from scipy import stats

from noisydot_sbc import sbc

S, L, N_OBS = 1000, 99, 5
# False alarm budget: 2 quantities x 2 tests (chi-square, ECDF) = 4 tests, each at level
# ALPHA_EACH = 2.5e-5; by the union bound the probability that a CORRECT posterior fails any of
# them is < 4 * 2.5e-5 = 1e-4 per run. The ECDF p-value is exact; the chi-square one uses 20 bins
# with 50 expected counts each, where the chi-square approximation holds well at this level.
ALPHA_EACH = 2.5e-5
N_BINS = 20


def conjugate_sbc(seed, shift=0.0, scale=1.0):
    """Ranks of θ and log-lik; the 'posterior' draws are exact, shifted by ``shift`` posterior sd
    and scaled by ``scale`` (shift=0, scale=1 is the correct posterior)."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=S)
    y = theta[:, None] + rng.normal(size=(S, N_OBS))
    mean, sd = y.sum(1) / (N_OBS + 1), np.sqrt(1.0 / (N_OBS + 1))
    draws = mean[:, None] + sd * (shift + scale * rng.normal(size=(S, L)))

    def loglik(t):
        return -0.5 * np.sum((y[:, None, :] - t[..., None]) ** 2, axis=-1)

    names, ranks = sbc.rank_quantities(
        rng, {"theta": theta, "log_lik": loglik(theta[:, None])[:, 0]}, {"theta": draws, "log_lik": loglik(draws)}
    )
    return names, ranks


def test_correct_posterior_passes_at_1e4_false_alarm_budget():
    names, ranks = conjugate_sbc(seed=11)
    assert names == ["theta", "log_lik"]
    assert ranks.shape == (S, 2) and ranks.min() >= 0 and ranks.max() <= L
    res = sbc.uniformity_tests(ranks, L, n_bins=N_BINS)
    for key in ("chi2_p", "ecdf_p"):
        assert np.all(res[key] > ALPHA_EACH), (key, res[key])


@pytest.mark.parametrize("shift,scale", [(0.5, 1.0), (0.0, 0.5)], ids=["biased", "too_narrow"])
def test_negative_controls_detected(shift, scale):
    _, ranks = conjugate_sbc(seed=11, shift=shift, scale=scale)
    res = sbc.uniformity_tests(ranks[:, :1], L, n_bins=N_BINS)  # θ
    assert res["chi2_p"][0] < ALPHA_EACH
    assert res["ecdf_p"][0] < ALPHA_EACH


def test_ranks_match_definition_and_ties_are_random():
    true = np.array([0.0, 1.0, 5.0])
    draws = np.array([[-1.0, 0.0, 0.0, 2.0], [0.0, 0.5, 0.7, 0.9], [5.0, 5.0, 5.0, 5.0]])
    seen = set()
    for seed in range(200):
        r = sbc.compute_ranks(seed, true, draws)
        assert r[0] in (1, 2, 3) and r[1] == 4
        seen.add(int(r[2]))
    assert seen == {0, 1, 2, 3, 4}
    # same seed, same ranks; JAX keys are accepted too
    assert np.array_equal(sbc.compute_ranks(3, true, draws), sbc.compute_ranks(3, true, draws))
    import jax

    r = sbc.compute_ranks(jax.random.PRNGKey(0), true, draws)
    assert r.dtype == np.int64 and r[1] == 4


def test_random_tie_breaking_makes_discrete_quantity_uniform():
    # A 3-valued quantity with the posterior equal to the prior (no data): ranks must be uniform
    # only with random tie-breaking; counting "draws < true" alone piles ranks at the low end.
    rng = np.random.default_rng(5)
    s, l_ = 2000, 19
    p = [0.2, 0.5, 0.3]
    true = rng.choice(3, size=s, p=p).astype(float)
    draws = rng.choice(3, size=(s, l_), p=p).astype(float)
    ranks = sbc.compute_ranks(rng, true, draws)
    assert sbc.chi2_uniformity(ranks, l_, n_bins=20).p_value > 1e-4
    assert sbc.ecdf_uniformity(ranks, l_).p_value > 1e-4
    naive = np.sum(draws < true[:, None], axis=1)
    assert sbc.chi2_uniformity(naive, l_, n_bins=20).p_value < 1e-10


def test_band_coverage_by_simulation():
    # The simultaneous band must contain the whole ECDF of uniform ranks with probability
    # 1 - alpha = 0.95. 4000 simulated rank sets: Monte Carlo sd of the coverage is 0.0034;
    # tolerance 0.015 (> 4 sd).
    n, l_ = 100, 49
    band = sbc.ecdf_simultaneous_band(n, l_, alpha=0.05)
    assert abs(band.coverage - 0.95) < 0.01  # exact coverage of the discrete band
    rng = np.random.default_rng(0)
    cells = np.round(band.z * (l_ + 1)).astype(int)
    inside = 0
    n_sim = 4000
    for _ in range(n_sim):
        r = np.sort(rng.integers(0, l_ + 1, size=n))
        ecdf = np.searchsorted(r, cells, side="left") / n
        inside += np.all((ecdf >= band.lower - 1e-12) & (ecdf <= band.upper + 1e-12))
    assert abs(inside / n_sim - 0.95) < 0.015
    # band is wider than the pointwise 95% band and contains z
    assert band.gamma < 0.05
    assert np.all(band.lower <= band.z) and np.all(band.upper >= band.z)
    np.testing.assert_allclose(band.upper_diff, band.upper - band.z)
    # simulate method agrees with the exact one
    sim = sbc.ecdf_simultaneous_band(n, l_, alpha=0.05, method="simulate", n_sim=3000, seed=1)
    assert abs(sim.coverage - 0.95) < 0.01
    assert 0.5 < sim.gamma / band.gamma < 2.0
    # cached
    assert sbc.ecdf_simultaneous_band(n, l_, alpha=0.05) is band


def test_ecdf_pvalue_is_uniform_under_null():
    # The exact p-value has P(p <= a) <= a; check at a = 0.1 over 400 null rank sets
    # (binomial 99.9% upper bound for 400 trials at rate 0.1 is 61).
    rng = np.random.default_rng(2)
    ps = np.array([sbc.ecdf_uniformity(rng.integers(0, 20, size=50), 19).p_value for _ in range(400)])
    assert np.sum(ps <= 0.1) <= stats.binom.ppf(0.999, 400, 0.1)
    assert np.sum(ps <= 0.5) > 150  # and it is not trivially conservative


def test_ecdf_test_agrees_with_band():
    # Leaving the simultaneous 95% band (Γ < adjusted γ) is the same decision as p <= 0.05,
    # up to the discreteness of Γ (and the bisection tolerance of γ).
    rng = np.random.default_rng(4)
    band = sbc.ecdf_simultaneous_band(200, 99, alpha=0.05)
    outside = 0
    for _ in range(60):
        r = np.minimum(rng.integers(0, 100, size=200) + rng.integers(0, 12), 99)
        g = sbc.ecdf_gamma_statistic(r, 99)
        p = sbc.ecdf_uniformity(r, 99).p_value
        if g < band.gamma:
            outside += 1
            assert p <= 0.05
        else:
            assert p >= 0.045
    assert 5 <= outside <= 55  # both branches exercised


def test_thinning():
    d = np.arange(2 * 4 * 10, dtype=float).reshape(2, 4, 10)
    t = sbc.thin_draws(d, 8)
    assert t.shape == (2, 8)
    # two draws per chain, evenly spaced: positions 2 and 7 of each chain
    np.testing.assert_array_equal(t[0], [2, 7, 12, 17, 22, 27, 32, 37])
    th = sbc.thin_by_ess(d, np.array([[100.0, 5.0], [50.0, 40.0]]), 8)
    np.testing.assert_array_equal(th.sufficient, [False, True])
    np.testing.assert_allclose(th.spacing, 5.0)
    with pytest.raises(ValueError, match="num_keep"):
        sbc.thin_draws(d, 41)
    with pytest.raises(ValueError, match="draws"):
        sbc.thin_draws(d[0], 4)


def test_zscore_contraction():
    rng = np.random.default_rng(0)
    true = np.array([0.0, 1.0])
    draws = np.stack([rng.normal(1.0, 0.5, 4000), rng.normal(1.0, 0.1, 4000)])
    z, c = sbc.zscore_contraction(true, draws, prior_var=1.0)
    np.testing.assert_allclose(z, [2.0, 0.0], atol=0.06)
    np.testing.assert_allclose(c, [0.75, 0.99], atol=0.01)
    with pytest.raises(ValueError, match="prior_var"):
        sbc.zscore_contraction(true, draws, prior_var=0.0)
    with pytest.raises(ValueError, match="zero posterior sd"):
        sbc.zscore_contraction(true, np.ones((2, 10)), prior_var=1.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="true_values"):
        sbc.compute_ranks(0, np.array([np.nan]), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="replicates"):
        sbc.compute_ranks(0, np.zeros(2), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="ranks"):
        sbc.chi2_uniformity(np.array([0, 5, 11]), 10)
    with pytest.raises(ValueError, match="n_bins"):
        sbc.chi2_uniformity(np.arange(11), 10, n_bins=3)
    with pytest.raises(ValueError, match="method"):
        sbc.ecdf_simultaneous_band(10, 9, method="magic")
    with pytest.raises(ValueError, match="missing"):
        sbc.rank_quantities(0, {"a": np.zeros(2)}, {"b": np.zeros((2, 3))})
    assert sbc.chi2_bins(99, 1000) == 50
    assert (99 + 1) % sbc.chi2_bins(99, 60) == 0


def test_ecdf_pvalue_and_band_exact_by_enumeration():
    # S = 5 ranks on 0..4: enumerate all 5^5 equally likely rank sets under uniformity.
    import itertools

    n, l_ = 5, 4
    gam = np.array([sbc.ecdf_gamma_statistic(np.array(r), l_) for r in itertools.product(range(l_ + 1), repeat=n)])
    for r in ([0, 0, 0, 1, 4], [1, 2, 2, 3, 4], [0, 0, 0, 0, 0], [4, 4, 3, 4, 4]):
        res = sbc.ecdf_uniformity(np.array(r), l_)
        np.testing.assert_allclose(res.p_value, np.mean(gam <= res.statistic * (1 + 1e-12)), rtol=1e-9)
    band = sbc.ecdf_simultaneous_band(n, l_, alpha=0.2)
    np.testing.assert_allclose(band.coverage, np.mean(gam >= band.gamma * (1 - 1e-12)), rtol=1e-9)
    # gamma is maximal up to the discreteness of Γ: the next attainable level covers < 1 - alpha
    g_star = np.min(gam[gam >= band.gamma * (1 - 1e-12)])
    g_next = np.min(gam[gam > g_star * (1 + 1e-9)])
    assert band.coverage >= 0.8 and np.mean(gam >= g_next * (1 - 1e-12)) < 0.8


def test_failed_replicates_are_data_not_errors():
    """Issue 12 item 1: a replicate with no finite draws (injected) or constant draws must not
    stop thinning, ranking, z-scores or the uniformity tests once the caller marks it failed."""
    rng = np.random.default_rng(7)
    s, l_ = 30, 19
    draws = rng.normal(size=(s, 2, 40))
    true = rng.normal(size=s)
    draws[4] = np.nan  # no finite initial point: NaN draws
    draws[9] = 1.5  # constant draws (e.g. float32 overflow of the design)
    reasons = sbc.replicate_problems(draws, true)
    assert reasons[4] == "80 non-finite draw(s)" and reasons[9] == "constant draws (zero posterior sd)"
    assert sum(bool(r) for r in reasons) == 2
    failed = np.array([bool(r) for r in reasons])
    with pytest.raises(ValueError, match="replicate 4"):
        sbc.thin_draws(draws, l_)  # unmarked NaN is still an error, never a silent NaN
    kept = sbc.thin_draws(draws, l_ + 1, failed=failed)[:, :l_]
    assert np.all(np.isnan(kept[4])) and np.isfinite(kept[~failed]).all()
    ranks = sbc.compute_ranks(3, true, kept, failed=failed)
    assert ranks[4] == -1 and ranks[9] == -1
    other = kept.copy()
    other[4], other[9] = 0.0, 7.0  # what a failed row holds does not change the others' ranks
    np.testing.assert_array_equal(sbc.compute_ranks(3, true, other, failed=failed), ranks)
    np.testing.assert_array_equal(ranks[~failed], (kept[~failed] < true[~failed, None]).sum(axis=1))  # no ties
    res = sbc.uniformity_tests(ranks, l_, failed=failed)
    assert res["n_replicates"][0] == s - 2 and res["n_failed"][0] == 2
    assert res["ecdf_p"][0] == sbc.ecdf_uniformity(ranks[~failed], l_).p_value
    with pytest.raises(ValueError, match="ranks"):
        sbc.uniformity_tests(ranks, l_)  # -1 ranks without the failed mask are refused
    z, c = sbc.zscore_contraction(true, draws, prior_var=2.0, failed=failed)
    assert np.isnan(z[[4, 9]]).all() and np.isfinite(z[~failed]).all()
    flat = draws[0].ravel()
    assert z[0] == pytest.approx((flat.mean() - true[0]) / flat.std(ddof=1))
    assert c[0] == pytest.approx(1 - flat.var(ddof=1) / 2.0)
    with pytest.raises(ValueError, match="zero posterior sd.*replicate 9"):
        sbc.zscore_contraction(true, draws, prior_var=2.0, failed=np.arange(s) == 4)
    th = sbc.thin_by_ess(draws, np.where(failed, np.nan, 100.0), 10, failed=failed)
    assert th.sufficient.tolist() == (~failed).tolist()
    names, rq = sbc.rank_quantities(0, {"a": true}, {"a": kept}, failed=failed)
    assert rq[4, 0] == -1 and names == ["a"]
