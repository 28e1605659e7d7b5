"""Posterior predictive checks: replicated data from the fitted model's own predictive distribution."""
import jax
import numpy as np
import pytest

from noisydot_sbc import ppc
from noisydot_sbc.likelihoods import moments
from noisydot_sbc.models import build_model
from noisydot_sbc.simulate import make_design

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def design():
    d = make_design(jax.random.PRNGKey(0), 3, 2, w_dist="ones")
    return np.asarray(d.x), np.asarray(d.w)


def _constant_posterior(sx, sw, n=4000):
    # every posterior draw at the same (σ_x, σ_w): y_rep is then a sample of the predictive at that point
    return {"x_noise_lvl": np.full((2, n // 2), sx), "w_noise_lvl": np.full((2, n // 2), sw)}


def _excess_kurtosis(a):
    z = (a - a.mean(0)) / a.std(0)
    return (z**4).mean(0) - 3.0


def test_predictive_is_the_models_own(design):
    """Both predictives have the exact first two moments; only the exact models' has the heavy tails
    of the true process (small |x|, σ_x = σ_w = 1: y ≈ Σ_i e_i (1 + u_i), excess kurtosis 2.25), the
    Gaussian approximation's has none."""
    x, w = design
    x = 0.01 * x
    sx, sw = 1.0, 1.0
    mean, var = (np.asarray(a) for a in moments(x, w, sx, sw, 0.0))
    post = _constant_posterior(sx, sw)
    kurt = {}
    for name in ("marginal", "gaussian"):
        y_rep = ppc.posterior_predictive(jax.random.PRNGKey(1), build_model(name), post, x, w, 4000)
        assert y_rep.shape == (4000, 3)
        assert np.all(np.abs(y_rep.mean(0) - mean) < 5 * np.sqrt(var / 4000))
        np.testing.assert_allclose(y_rep.var(0), var, rtol=0.25)
        kurt[name] = _excess_kurtosis(y_rep)
    assert np.all(np.abs(kurt["gaussian"]) < 0.5)
    assert np.all(kurt["marginal"] > 1.0)


def test_predictive_uses_abs_sigma_and_spaced_draws(design):
    x, w = design
    post = {"x_noise_lvl": -np.ones((2, 5)) * 0.1, "w_noise_lvl": np.ones((2, 5)) * 0.1}
    y_rep = ppc.posterior_predictive(jax.random.PRNGKey(0), build_model("gaussian"), post, x, w, 50)
    assert y_rep.shape == (10, 3) and np.all(np.isfinite(y_rep))  # at most one replicate per draw


def test_ppc_summary_pit_and_tails():
    x = np.array([[1.0], [1.0], [1.0], [1.0]])
    w = np.array([1.0])
    post = _constant_posterior(1.0, 1e-9, n=10)  # y ~ N(1, 1): standardised residual z = y - 1
    y = np.array([1.0, 1.5, 4.5, -0.5])
    y_rep = np.tile(np.linspace(-1.0, 3.0, 9)[:, None], (1, 4))  # replicated values of each observation
    out = ppc.ppc_summary(y, y_rep, x, w, post, 0.0)
    np.testing.assert_allclose(out["z_obs"], y - 1.0, atol=1e-6)
    # PIT: fraction of replicates below y, ties counted one half
    np.testing.assert_allclose(out["pit"], [4.5 / 9, 5.5 / 9, 1.0, 1.5 / 9])
    np.testing.assert_allclose(out["thresholds"], ppc.TAIL_THRESHOLDS)
    # |z| > 1: observations 3 (z = 3.5) and 4 (z = -1.5); > 3: observation 3 only
    np.testing.assert_allclose(out["obs_exceed"][:3], [0.5, 0.25, 0.25])
    # every replicate row is one value for all 4 observations: its exceedance is 0 or 1
    assert set(np.unique(out["rep_exceed_mean"] * 9).round(6)) <= set(range(10))
    assert np.all((out["tail_ppp"] >= 0) & (out["tail_ppp"] <= 1))


def test_bad_input_names_the_argument(design):
    x, w = design
    post = _constant_posterior(0.1, 0.1, n=10)
    with pytest.raises(ValueError, match="num"):
        ppc.posterior_predictive(jax.random.PRNGKey(0), build_model("gaussian"), post, x, w, 0)
    with pytest.raises(ValueError, match="w_noise_lvl"):
        ppc.posterior_predictive(jax.random.PRNGKey(0), build_model("gaussian"), {"x_noise_lvl": np.ones((1, 2))},
                                 x, w, 5)
    with pytest.raises(ValueError, match="y_rep"):
        ppc.ppc_summary(np.ones(3), np.ones((5, 2)), x, w, post, 0.0)
