"""SBC through the real engine on a conjugate model: calibrated ranks pass, wrong posteriors fail.

Model: mu ~ N(0, 1), y_n ~ N(mu, 1), n = 1..5; the posterior is N(Σy/6, 1/6). Ranks of mu (and of
the log-likelihood test quantity) among thinned NUTS draws must be uniform. The uniformity test is
the exact ECDF test (Säilynoja et al. 2022) at level alpha = 2.5e-5 for each of the 4 p-values in
the correct-posterior test, so a correct engine fails this test less than 1 in 10,000 runs (union
bound: 4 x 2.5e-5 = 1e-4). The same threshold must flag the negative controls.
"""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from noisydot_sbc import sbc
from noisydot_sbc.inference import NUTSConfig, fit_batch

jax.config.update("jax_enable_x64", True)

S, N, L = 250, 5, 49
ALPHA = 2.5e-5
CFG = NUTSConfig(num_warmup=300, num_samples=400, num_chains=1, chain_method="vectorized")


def model(y, lik_sd):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("obs", dist.Normal(mu, lik_sd), obs=y)


@pytest.fixture(scope="module")
def sbc_data():
    k_mu, k_y = jax.random.split(jax.random.PRNGKey(2026))
    mu = jax.random.normal(k_mu, (S,))
    y = mu[:, None] + jax.random.normal(k_y, (S, N))
    return np.asarray(mu), y


def _ranks(mu_true, y, lik_sd, key):
    fit = fit_batch(key, model, {"y": y, "lik_sd": jnp.full((S,), lik_sd)}, CFG, keep_sites=("mu",))
    assert not np.any(fit.failed)
    draws = sbc.thin_draws(np.asarray(fit.samples["mu"]), L)                     # (S, L)
    yy = np.asarray(y)
    loglik = lambda m: -0.5 * ((yy[:, None, :] - m[..., None]) ** 2).sum(-1)   # f(θ, y), true sd = 1
    true = {"mu": mu_true, "log_lik": loglik(mu_true[:, None])[:, 0]}
    names, ranks = sbc.rank_quantities(np.random.default_rng(0), true, {"mu": draws, "log_lik": loglik(draws)})
    return sbc.uniformity_tests(ranks, L)


def test_engine_sbc_is_calibrated(sbc_data):
    mu, y = sbc_data
    tests = _ranks(mu, y, 1.0, jax.random.PRNGKey(1))
    assert np.all(tests["ecdf_p"] > ALPHA), tests
    assert np.all(tests["chi2_p"] > ALPHA), tests


def test_too_narrow_posterior_is_detected(sbc_data):
    # negative control: the fitted likelihood claims sd 0.4 while the data have sd 1 -> too narrow
    mu, y = sbc_data
    tests = _ranks(mu, y, 0.4, jax.random.PRNGKey(2))
    assert tests["ecdf_p"][0] < ALPHA


def test_biased_posterior_is_detected(sbc_data):
    # negative control: data shifted by +0.8 after simulation (a biased posterior for mu)
    mu, y = sbc_data
    tests = _ranks(mu, y + 0.8, 1.0, jax.random.PRNGKey(3))
    assert tests["ecdf_p"][0] < ALPHA
