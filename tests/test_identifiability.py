"""Tests for noisydot_sbc.identifiability (Fisher information, posterior degeneracy, design ranking)."""
import arviz
import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from noisydot_sbc import identifiability as idf  # noqa: E402
from noisydot_sbc import likelihoods  # noqa: E402
from noisydot_sbc.likelihoods import gaussian_logpdf  # noqa: E402
from noisydot_sbc.priors import STRONG, WEAK, NAIVE  # noqa: E402
from noisydot_sbc.simulate import make_design  # noqa: E402


def _exact_logpdf():
    fn = getattr(likelihoods, "noisydot_logpdf", None)
    if fn is None:
        pytest.skip("likelihoods.noisydot_logpdf not available yet")
    return fn


@pytest.fixture(scope="module")
def design():
    return make_design(jax.random.PRNGKey(0), 50, 8)


# ------------------------------------------------------------------------------------------
# Fisher information
# ------------------------------------------------------------------------------------------
def test_mc_matches_closed_form_gaussian(design):
    """Gaussian logpdf + Gaussian simulator: MC estimate is unbiased for the closed form."""
    closed = idf.gaussian_fisher_information(design.x, design.w, 0.2, 0.3)
    mc = idf.expected_fisher_information(
        jax.random.PRNGKey(1), design.x, design.w, 0.2, 0.3, num_sims=400,
        logpdf=gaussian_logpdf, simulator="gaussian",
    )
    z = np.abs(np.asarray(mc.information - closed.information)) / np.asarray(mc.mcse)
    assert np.all(z < 4.0), z
    # MC error is small enough for the comparison to have teeth (a few percent of the entries)
    assert np.all(np.asarray(mc.mcse) < 0.05 * np.abs(np.asarray(closed.information)))
    assert mc.num_sims == 400 and closed.num_sims == 0


@jax.jit
def _kurtosis_excess_k4(x, w, sx, sw):
    """Fourth cumulant of y_n from the product-normal MGF of MATH.md, by autodiff."""

    def cgf(s, xn):
        sa, sb = sx, jnp.abs(w) * sw
        den = 1.0 - s**2 * sa**2 * sb**2
        return jnp.sum(-0.5 * jnp.log(den) + (s * xn * w + s**2 * (xn**2 * sb**2 + w**2 * sa**2) / 2) / den)

    d4 = jax.grad(jax.grad(jax.grad(jax.grad(cgf))))
    return jax.vmap(lambda xn: d4(0.0, xn))(x)


def test_mc_true_process_matches_kurtosis_corrected_gaussian(design):
    """Gaussian score under TRUE data: E[s sᵀ] = ¼ Σ (κ_n − 1) g_n g_nᵀ, κ_n the true kurtosis.

    Checks the true-process simulation path exactly; at σ_w = 0.5 the correction (excess kurtosis)
    (M = 2) is far larger than the MC error, so a simulator that drew Gaussian y would fail.
    """
    d2 = make_design(jax.random.PRNGKey(20), 50, 2)  # M = 2: far from the CLT, excess kurtosis ~0.55
    x, w, sx, sw = d2.x, d2.w, 0.2, 0.5
    v, dv = idf._variance_gradients(x, w, sx, sw, 0.0)
    g = dv / v[:, None]
    kappa = 3.0 + _kurtosis_excess_k4(x, w, sx, sw) / v**2
    expected = 0.25 * (g * (kappa - 1.0)[:, None]).T @ g
    naive = 0.5 * g.T @ g
    mc = idf.expected_fisher_information(
        jax.random.PRNGKey(2), x, w, sx, sw, num_sims=1008, logpdf=gaussian_logpdf
    )  # 1008 = 63 batches of 16: no remainder batch to compile
    z = np.abs(np.asarray(mc.information - expected)) / np.asarray(mc.mcse)
    assert np.all(z < 4.0), z
    z_naive = np.abs(np.asarray(mc.information - naive)) / np.asarray(mc.mcse)
    assert z_naive.max() > 6.0, z_naive


# The exact-likelihood Fisher estimator compiles for ~20 s (the dearest compile of this file): this
# test evaluates it at the shape, simulation count and batch size of the degeneracy task's facet in
# tests/test_tasks_degeneracy.py (N = 300, M = 8, 8 simulations in one batch of 8; float64), so that
# in one pytest session the two share the compiled program.
EXACT_N, EXACT_M, EXACT_SIMS = 300, 8, 8


def test_exact_fim_close_to_gaussian_for_small_noise():
    """σ_w = 0.05, σ_x = 0.1, M = 8: the exact-likelihood FIM is within 5% of the Gaussian one.

    Compared on the same simulated data sets (same key), so the comparison is not swamped by the
    ~7% MC error of 8 simulations of N = 300 observations (measured paired differences: entries
    < 0.8%, eigenvalues < 0.8%, CRB sds < 0.4%); the Gaussian-score estimate on those data sets is
    in turn within 4 MCSE of the closed form (measured 1.4).  Tolerance 5% on every entry,
    eigenvalue and CRB sd.
    """
    logpdf = _exact_logpdf()
    d = make_design(jax.random.PRNGKey(0), EXACT_N, EXACT_M)
    x, w = d.x, d.w
    closed = idf.gaussian_fisher_information(x, w, 0.1, 0.05)
    kw = dict(num_sims=EXACT_SIMS)
    exact = idf.expected_fisher_information(jax.random.PRNGKey(3), x, w, 0.1, 0.05, logpdf=logpdf, **kw)
    gauss = idf.expected_fisher_information(jax.random.PRNGKey(3), x, w, 0.1, 0.05, logpdf=gaussian_logpdf, **kw)
    rel = np.abs(np.asarray(exact.information - gauss.information)) / np.abs(np.asarray(gauss.information))
    assert np.all(rel < 0.05), rel
    np.testing.assert_allclose(exact.eigenvalues, gauss.eigenvalues, rtol=0.05)
    np.testing.assert_allclose(exact.crb_sd, gauss.crb_sd, rtol=0.05)
    assert np.all(np.abs(np.asarray(gauss.information - closed.information)) < 4 * np.asarray(gauss.mcse))
    # and the exact estimate is compatible with the closed form at its own MC error
    assert np.all(np.abs(np.asarray(exact.information - closed.information)) < 4 * np.asarray(exact.mcse))


def test_summaries_match_inverse():
    info = np.array([[40.0, -12.0], [-12.0, 5.0]])
    r = idf.summarize_information(info)
    inv = np.linalg.inv(info)
    np.testing.assert_allclose(r.crb_sd, np.sqrt(np.diag(inv)), rtol=1e-12)
    np.testing.assert_allclose(r.crb_corr, inv[0, 1] / np.sqrt(inv[0, 0] * inv[1, 1]), rtol=1e-12)
    np.testing.assert_allclose(r.efficient_information_w, 1 / inv[1, 1], rtol=1e-12)
    ev = np.linalg.eigvalsh(info)
    np.testing.assert_allclose(r.eigenvalues, ev, rtol=1e-12)
    np.testing.assert_allclose(r.condition_number, ev[1] / ev[0], rtol=1e-12)
    np.testing.assert_allclose(info @ r.ridge_direction, ev[0] * r.ridge_direction, atol=1e-10)
    assert r.ridge_direction[0] >= 0 and np.isclose(np.linalg.norm(r.ridge_direction), 1.0)


def test_singular_information_gives_inf_not_nan():
    r = idf.summarize_information(np.array([[4.0, 2.0], [2.0, 1.0]]))  # rank one
    assert np.isinf(r.condition_number)
    assert np.all(np.isinf(r.crb_sd))
    assert r.crb_corr == -1.0
    assert r.efficient_information_w == 0.0
    np.testing.assert_allclose(np.abs(r.ridge_direction), np.array([1, 2]) / np.sqrt(5), atol=1e-12)


def _degenerate_designs():
    key = jax.random.PRNGKey(4)
    flat = make_design(key, 40, 8, x_dist="magnitude", x_spread=0.0, w_dist="ones")
    spread = make_design(key, 40, 8, x_dist="magnitude", x_spread=3.0, w_dist="ones")
    return flat, spread


# The exact-likelihood variants (N = 40: an exact-estimator compile of their own, ~20 s) run with -m slow.
EXACT = [False, pytest.param(True, marks=pytest.mark.slow)]


@pytest.mark.parametrize("exact", EXACT)
def test_no_spread_design_is_degenerate(exact):
    """Equal Σ x_ni² w_i² in every row: the FIM is (near) singular, ridge keeps Var(y) constant."""
    flat, spread = _degenerate_designs()
    sx, sw = 0.1, 0.05
    logpdf = _exact_logpdf() if exact else gaussian_logpdf
    res_flat = idf.expected_fisher_information(jax.random.PRNGKey(5), flat.x, flat.w, sx, sw, num_sims=32, logpdf=logpdf)
    res_spread = idf.expected_fisher_information(
        jax.random.PRNGKey(5), spread.x, spread.w, sx, sw, num_sims=32, logpdf=logpdf
    )
    closed_flat = idf.gaussian_fisher_information(flat.x, flat.w, sx, sw)
    assert closed_flat.condition_number > 1e12  # singular up to rounding
    assert res_flat.condition_number > 1e3, res_flat.condition_number
    assert res_spread.condition_number < 200, res_spread.condition_number
    assert res_flat.condition_number > 20 * res_spread.condition_number
    # Ridge: moving θ along it leaves v = σ_w² A + σ_x²(1+σ_w²) B unchanged, i.e. it trades
    # σ_x²(1+σ_w²) against σ_w²; it is orthogonal to ∇log v.
    _, dv = idf._variance_gradients(flat.x, flat.w, sx, sw, 0.0)
    grad_dir = np.asarray(dv[0] / np.linalg.norm(dv[0]))
    assert abs(float(np.dot(res_flat.ridge_direction, grad_dir))) < 0.02
    assert abs(float(np.dot(res_spread.ridge_direction, grad_dir))) > 0.02
    # Near-degeneracy means huge uncertainty and a near-perfect trade-off
    assert res_flat.crb_sd[1] > 10 * res_spread.crb_sd[1]
    assert res_flat.crb_corr < -0.99


@pytest.mark.parametrize("exact", EXACT)
def test_zero_weight_contributes_nothing(design, exact):
    logpdf = _exact_logpdf() if exact else gaussian_logpdf
    x = np.asarray(design.x[:40])
    w = np.asarray(design.w).copy()
    w[3] = 0.0
    x2 = x.copy()
    x2[:, 3] = 100.0 * np.random.default_rng(0).normal(size=x.shape[0])  # anything at all
    kw = dict(num_sims=32, logpdf=logpdf)
    a = idf.expected_fisher_information(jax.random.PRNGKey(6), x, w, 0.1, 0.05, **kw)
    b = idf.expected_fisher_information(jax.random.PRNGKey(6), x2, w, 0.1, 0.05, **kw)
    np.testing.assert_allclose(a.information, b.information, rtol=1e-8)
    keep = np.arange(8) != 3
    ca = idf.gaussian_fisher_information(x, w, 0.1, 0.05)
    cb = idf.gaussian_fisher_information(x[:, keep], w[keep], 0.1, 0.05)
    np.testing.assert_allclose(ca.information, cb.information, rtol=1e-12)


def test_y_noise_reduces_information(design):
    a = idf.gaussian_fisher_information(design.x, design.w, 0.1, 0.05)
    b = idf.gaussian_fisher_information(design.x, design.w, 0.1, 0.05, y_noise=0.5)
    assert np.all(np.diag(b.information) < np.diag(a.information))
    mc = idf.expected_fisher_information(
        jax.random.PRNGKey(7), design.x, design.w, 0.1, 0.05, y_noise=0.5, num_sims=400,
        logpdf=gaussian_logpdf, simulator="gaussian",
    )  # the compiled estimator of test_mc_matches_closed_form_gaussian (same shapes and num_sims)
    assert np.all(np.abs(np.asarray(mc.information - b.information)) < 4 * np.asarray(mc.mcse))


def test_float32_supported():
    d = make_design(jax.random.PRNGKey(8), 30, 4, dtype=jnp.float32)
    r = idf.expected_fisher_information(jax.random.PRNGKey(9), d.x, d.w, 0.1, 0.05, num_sims=8, logpdf=gaussian_logpdf)
    assert r.information.dtype == jnp.float32
    c = idf.gaussian_fisher_information(np.asarray(d.x, np.float64), np.asarray(d.w, np.float64), 0.1, 0.05)
    np.testing.assert_allclose(r.information, c.information, rtol=0.5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(x_noise_lvl=-0.1), "x_noise_lvl"),
        (dict(w_noise_lvl=0.0), "w_noise_lvl"),
        (dict(y_noise=-1.0), "y_noise"),
        (dict(num_sims=1), "num_sims"),
        (dict(simulator="bogus"), "simulator"),
        (dict(x=np.ones((5, 3))), "x"),
        (dict(x=np.full((5, 8), np.nan)), "x"),
        (dict(w=np.zeros(8)), "w"),
        (dict(logpdf=3), "logpdf"),
    ],
)
def test_fisher_bad_inputs(design, kwargs, name):
    args = dict(x=design.x, w=design.w, x_noise_lvl=0.1, w_noise_lvl=0.05, num_sims=4, logpdf=gaussian_logpdf)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        idf.expected_fisher_information(jax.random.PRNGKey(0), **args)


def test_gaussian_fisher_bad_inputs(design):
    with pytest.raises(ValueError, match="w_noise_lvl"):
        idf.gaussian_fisher_information(design.x, design.w, 0.1, -1.0)
    with pytest.raises(ValueError, match="information"):
        idf.summarize_information(np.ones(3))


# ------------------------------------------------------------------------------------------
# Design ranking
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", ["sigma_w", "D"])
def test_rank_designs_prefers_spread(criterion):
    flat, spread = _degenerate_designs()
    ranked = idf.rank_designs(
        jax.random.PRNGKey(10), [flat.x, spread.x], flat.w, 0.1, 0.05, criterion=criterion,
        num_sims=32, logpdf=gaussian_logpdf,
    )
    assert [r["index"] for r in ranked] == [1, 0]
    assert ranked[0]["utility"] > ranked[1]["utility"] + 2.0
    assert ranked[0]["crb_sd_log_w_noise_lvl"] < ranked[1]["crb_sd_log_w_noise_lvl"]
    assert all(np.isfinite(r["log_det_information"]) or r["log_det_information"] == -np.inf for r in ranked)


def test_rank_designs_bayesian_matches_pointwise_average():
    flat, spread = _degenerate_designs()
    draws = STRONG.sample(jax.random.PRNGKey(11), (3,))
    key = jax.random.PRNGKey(12)
    ranked = idf.rank_designs(key, [flat.x, spread.x], flat.w, criterion="D", prior_draws=draws,
                              num_sims=32, logpdf=gaussian_logpdf)
    assert [r["index"] for r in ranked] == [1, 0] and ranked[0]["num_prior_draws"] == 3
    # average of single-point log det (same key => same simulations)
    single = [
        idf.rank_designs(key, [spread.x], flat.w, float(draws["x_noise_lvl"][k]), float(draws["w_noise_lvl"][k]),
                         criterion="D", num_sims=32, logpdf=gaussian_logpdf)[0]["utility"]
        for k in range(3)
    ]
    np.testing.assert_allclose(ranked[0]["utility"], np.mean(single), rtol=1e-10)


@pytest.mark.slow
def test_rank_designs_exact_prefers_spread():
    logpdf = _exact_logpdf()
    flat, spread = _degenerate_designs()
    ranked = idf.rank_designs(jax.random.PRNGKey(13), [flat.x, spread.x], flat.w, 0.1, 0.05,
                              num_sims=32, logpdf=logpdf)
    assert ranked[0]["index"] == 1


def test_rank_designs_bad_inputs():
    flat, spread = _degenerate_designs()
    kw = dict(num_sims=4, logpdf=gaussian_logpdf)
    with pytest.raises(ValueError, match="criterion"):
        idf.rank_designs(jax.random.PRNGKey(0), [flat.x], flat.w, 0.1, 0.05, criterion="A", **kw)
    with pytest.raises(ValueError, match="candidates"):
        idf.rank_designs(jax.random.PRNGKey(0), [], flat.w, 0.1, 0.05, **kw)
    with pytest.raises(ValueError, match=r"candidates\[1\]"):
        idf.rank_designs(jax.random.PRNGKey(0), [flat.x, np.ones((4, 3))], flat.w, 0.1, 0.05, **kw)
    with pytest.raises(ValueError, match="x_noise_lvl"):
        idf.rank_designs(jax.random.PRNGKey(0), [flat.x], flat.w, **kw)
    with pytest.raises(ValueError, match="prior_draws"):
        idf.rank_designs(jax.random.PRNGKey(0), [flat.x], flat.w, prior_draws={"x_noise_lvl": [0.1]}, **kw)
    with pytest.raises(ValueError, match="prior_draws"):
        idf.rank_designs(jax.random.PRNGKey(0), [flat.x], flat.w,
                         prior_draws={"x_noise_lvl": [0.1, -1.0], "w_noise_lvl": [0.1, 0.1]}, **kw)


# ------------------------------------------------------------------------------------------
# Posterior diagnostics
# ------------------------------------------------------------------------------------------
def _lognormal_draws(rng, mean_log, sd_log, corr, shape):
    z1, z2 = rng.normal(size=shape), rng.normal(size=shape)
    lx = mean_log[0] + sd_log[0] * z1
    lw = mean_log[1] + sd_log[1] * (corr * z1 + np.sqrt(1 - corr**2) * z2)
    return {"x_noise_lvl": np.exp(lx), "w_noise_lvl": np.exp(lw)}


def test_prior_variances():
    vp, vl = idf.prior_variances(STRONG.x_noise_lvl)
    s = STRONG.x_noise_lvl
    samples = np.asarray(s.distribution().sample(jax.random.PRNGKey(0), (400_000,)))
    np.testing.assert_allclose(vl, s.scale**2, rtol=1e-12)
    np.testing.assert_allclose(vp, samples.var(), rtol=0.03)
    vp, vl = idf.prior_variances(NAIVE.x_noise_lvl)
    samples = np.asarray(NAIVE.x_noise_lvl.distribution().sample(jax.random.PRNGKey(1), (400_000,)))
    np.testing.assert_allclose(vl, np.log(np.abs(samples)).var(), rtol=0.02)
    shifted = NAIVE.x_noise_lvl._replace(loc=0.2)
    samples = 0.2 + 0.3 * np.random.default_rng(0).normal(size=400_000)
    np.testing.assert_allclose(idf.prior_variances(shifted)[1], np.log(np.abs(samples)).var(), rtol=0.02)


def test_posterior_degeneracy_known_values():
    rng = np.random.default_rng(1)
    true = {"x_noise_lvl": 0.1, "w_noise_lvl": 0.05}
    # posterior centred 2 sds above the truth in log σ_x, log-sd 0.06 (prior log-sd 0.6)
    draws = _lognormal_draws(rng, (np.log(0.1) + 0.12, np.log(0.05)), (0.06, 0.06), -0.9, (4, 2000))
    r = idf.posterior_degeneracy(draws, STRONG, true=true)
    assert r["corr_log"] == pytest.approx(-0.9, abs=0.01)
    assert r["contraction_log"]["x_noise_lvl"] == pytest.approx(1 - 0.01, abs=0.001)
    assert r["contraction"]["w_noise_lvl"] > 0.95
    assert r["z_score_log"]["x_noise_lvl"] == pytest.approx(2.0, abs=0.1)
    assert r["z_score_log"]["w_noise_lvl"] == pytest.approx(0.0, abs=0.1)
    assert r["multimodal"] is False
    assert r["prior_dominated"] == {"x_noise_lvl": False, "w_noise_lvl": False}
    assert r["rhat"]["x_noise_lvl"] < 1.01
    assert r["rhat"]["x_noise_lvl"] == pytest.approx(float(arviz.rhat(draws["x_noise_lvl"])), rel=1e-12)


def test_posterior_degeneracy_prior_dominated():
    draws = STRONG.sample(jax.random.PRNGKey(2), (2, 3000))
    r = idf.posterior_degeneracy({k: np.asarray(v) for k, v in draws.items()}, STRONG)
    assert r["prior_dominated"] == {"x_noise_lvl": True, "w_noise_lvl": True}
    assert abs(r["contraction_log"]["x_noise_lvl"]) < 0.1
    assert "z_score" not in r


def test_posterior_degeneracy_multimodal():
    rng = np.random.default_rng(3)
    draws = _lognormal_draws(rng, (np.log(0.1), np.log(0.05)), (0.05, 0.05), 0.0, (2, 1000))
    draws["w_noise_lvl"][1] *= 2.0  # chain 2 stuck in a mode twice as large
    r = idf.posterior_degeneracy(draws, STRONG)
    assert r["multimodal"] is True
    assert r["rhat"]["w_noise_lvl"] > 1.05
    assert r["chain_separation"]["w_noise_lvl"] > 3
    # single chain that jumps between modes halfway: split R-hat catches it
    one = {p: a.reshape(1, -1) for p, a in draws.items()}
    assert idf.posterior_degeneracy(one, STRONG)["multimodal"] is True


def test_posterior_degeneracy_sign_flip_naive_prior():
    rng = np.random.default_rng(4)
    x = 0.1 + 0.01 * rng.normal(size=(2, 500))
    w = 0.05 * np.sign(rng.normal(size=(2, 500))) + 0.005 * rng.normal(size=(2, 500))  # ±σ_w mixed well
    r = idf.posterior_degeneracy({"x_noise_lvl": x, "w_noise_lvl": w}, NAIVE)
    assert r["sign_ambiguous"]["w_noise_lvl"] is True and r["sign_ambiguous"]["x_noise_lvl"] is False
    assert r["multimodal"] is True
    assert np.isfinite(r["contraction_log"]["w_noise_lvl"])


def test_rhat_threshold_is_the_project_table():
    """One threshold table: R-hat 1.01 (was 1.05 here). Two chains 0.35 posterior sd apart (R-hat
    1.017, chain separation 0.33) are flagged now; the old 1.05 let them pass as unimodal."""
    from noisydot_sbc import diagnostics

    assert idf.RHAT_THRESHOLD == diagnostics.THRESHOLDS["r_hat"] == 1.01
    assert idf.CHAIN_SEPARATION_THRESHOLD == diagnostics.THRESHOLDS["chain_separation"]
    assert idf.PRIOR_DOMINATED_THRESHOLD == diagnostics.THRESHOLDS["prior_dominated"]
    rng = np.random.default_rng(3)
    draws = _lognormal_draws(rng, (np.log(0.1), np.log(0.05)), (0.05, 0.05), 0.0, (2, 1000))
    draws["w_noise_lvl"][1] *= np.exp(0.05 * 0.35)
    r = idf.posterior_degeneracy(draws, STRONG)
    assert r["rhat"]["w_noise_lvl"] == pytest.approx(float(arviz.rhat(draws["w_noise_lvl"])), rel=1e-12)
    assert 1.01 < r["rhat"]["w_noise_lvl"] < 1.05 and r["chain_separation"]["w_noise_lvl"] < 1
    assert r["multimodal"] is True and r["thresholds"]["rhat"] == 1.01
    assert idf.posterior_degeneracy(draws, STRONG, rhat_threshold=1.05)["multimodal"] is False


def test_batch_matches_single_and_arviz():
    rng = np.random.default_rng(5)
    s, c, d = 6, 2, 400
    draws = _lognormal_draws(rng, (np.log(0.1), np.log(0.05)), (0.1, 0.2), -0.5, (s, c, d))
    draws["x_noise_lvl"][2, 1] *= 1.5  # one bad replicate
    true = {"x_noise_lvl": np.full(s, 0.1), "w_noise_lvl": np.linspace(0.04, 0.06, s)}
    b = idf.posterior_degeneracy_batch(draws, WEAK, true=true)
    for i in range(s):
        one = idf.posterior_degeneracy({p: a[i] for p, a in draws.items()}, WEAK,
                                       true={p: float(t[i]) for p, t in true.items()})
        assert b["multimodal"][i] == one["multimodal"]
        np.testing.assert_allclose(b["corr_log"][i], one["corr_log"], rtol=1e-10)
        for p in ("x_noise_lvl", "w_noise_lvl"):
            np.testing.assert_allclose(b["rhat"][p][i], one["rhat"][p], rtol=1e-10)
            np.testing.assert_allclose(b["rhat"][p][i], float(arviz.rhat(draws[p][i])), rtol=1e-10)
            np.testing.assert_allclose(b["contraction_log"][p][i], one["contraction_log"][p], rtol=1e-10)
            np.testing.assert_allclose(b["z_score"][p][i], one["z_score"][p], rtol=1e-10)
    assert b["multimodal"].tolist() == [False, False, True, False, False, False]
    assert b["fraction"]["multimodal"] == pytest.approx(1 / 6)
    # single-chain SBC output, iid draws: R-hat 1.01 flags fewer than 5% of 400 replicates
    big = _lognormal_draws(rng, (np.log(0.1), np.log(0.05)), (0.1, 0.2), 0.0, (400, 1, 1000))
    rb = idf.posterior_degeneracy_batch(big, STRONG)
    assert rb["rhat"]["x_noise_lvl"].shape == (400,)
    assert rb["fraction"]["multimodal"] < 0.05


def test_posterior_bad_inputs():
    good = {"x_noise_lvl": np.full((2, 50), 0.1) + np.linspace(0, 0.01, 100).reshape(2, 50),
            "w_noise_lvl": np.full((2, 50), 0.05) + np.linspace(0, 0.01, 100).reshape(2, 50)}
    with pytest.raises(ValueError, match="draws"):
        idf.posterior_degeneracy({"x_noise_lvl": good["x_noise_lvl"]}, STRONG)
    with pytest.raises(ValueError, match=r"draws\['w_noise_lvl'\]"):
        idf.posterior_degeneracy({**good, "w_noise_lvl": np.ones(100)}, STRONG)
    bad = {**good, "x_noise_lvl": good["x_noise_lvl"].copy()}
    bad["x_noise_lvl"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"draws\['x_noise_lvl'\]"):
        idf.posterior_degeneracy(bad, STRONG)
    with pytest.raises(ValueError, match="prior"):
        idf.posterior_degeneracy(good, "strong")
    with pytest.raises(ValueError, match="true"):
        idf.posterior_degeneracy(good, STRONG, true={"x_noise_lvl": -1.0, "w_noise_lvl": 0.1})
    with pytest.raises(ValueError, match="draws"):
        idf.posterior_degeneracy_batch(good, STRONG)  # missing replicate axis
    with pytest.raises(ValueError, match="true"):
        idf.posterior_degeneracy(good, STRONG, true={"x_noise_lvl": 0.1})
    batch = {p: a[None] for p, a in good.items()}
    with pytest.raises(ValueError, match="true"):
        idf.posterior_degeneracy_batch(batch, STRONG, true={"x_noise_lvl": np.ones(2), "w_noise_lvl": np.ones(2)})


@pytest.mark.slow
def test_nuts_posterior_on_flat_design_is_prior_dominated_for_sigma_w():
    """Real NUTS fits (Gaussian likelihood, strong prior, N = 200, M = 8): with equal weighted row
    norms the data say nothing about σ_w (log-scale contraction < 0.1 → prior-dominated) while the
    same-size design with spread rows halves the prior variance of log σ_w (measured 0.02 vs 0.53).
    A long run (20,000 draws) gives contraction −0.02 on the flat design; the estimate from E draws
    scatters by about sqrt(2/ESS), hence 1500 draws here."""
    import numpyro
    from numpyro.infer import MCMC, NUTS

    from noisydot_sbc.simulate import simulate_y

    def model(x, w, y):
        sx, sw = STRONG.sample_sites()
        numpyro.factor("obs", gaussian_logpdf(y, x, w, sx, sw).sum())

    key = jax.random.PRNGKey(4)
    out = {}
    for spread in (0.0, 3.0):
        d = make_design(key, 200, 8, x_dist="magnitude", x_spread=spread, w_dist="ones")
        y = simulate_y(jax.random.PRNGKey(1), d.x, d.w, 0.1, 0.05)
        mcmc = MCMC(NUTS(model), num_warmup=300, num_samples=1500, num_chains=1, progress_bar=False)
        mcmc.run(jax.random.PRNGKey(2), d.x, d.w, y)
        draws = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        out[spread] = idf.posterior_degeneracy(draws, STRONG, true={"x_noise_lvl": 0.1, "w_noise_lvl": 0.05})
    assert out[0.0]["prior_dominated"]["w_noise_lvl"] is True
    assert out[3.0]["prior_dominated"]["w_noise_lvl"] is False
    assert out[3.0]["contraction_log"]["w_noise_lvl"] > 0.3
    for r in out.values():  # σ_x is measured in both
        assert r["contraction_log"]["x_noise_lvl"] > 0.9 and r["prior_dominated"]["x_noise_lvl"] is False
        assert abs(r["z_score_log"]["x_noise_lvl"]) < 4
        assert r["multimodal"] is False
