"""Quadrature posteriors: against closed forms, brute-force dense grids and NUTS; the uncertified
case flagged; SBC ranks uniform with a negative control rejected."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from noisydot_sbc.inference import get_method
from noisydot_sbc.inference.quadrature import (
    Quadrature,
    QuadratureConfig,
    integrate,
    posterior_moments,
    posterior_quantiles,
)
from noisydot_sbc.likelihoods import gaussian_logpdf
from noisydot_sbc.models import Model, build_model
from noisydot_sbc.priors import STRONG, WEAK, Prior, ScalePrior
from noisydot_sbc.simulate import make_design, simulate_y

jax.config.update("jax_enable_x64", True)

PARAMS = ("x_noise_lvl", "w_noise_lvl")


def _data(prior, S, N, M, seed=0, x_spread=None):
    xs, ws, ys, truth = [], [], [], []
    for s in range(S):
        k = jax.random.fold_in(jax.random.PRNGKey(seed), s)
        kd, kt, ky = jax.random.split(k, 3)
        if x_spread is None:
            d = make_design(kd, N, M)
        else:
            d = make_design(kd, N, M, x_dist="magnitude", x_spread=x_spread)
        t = prior.sample(kt)
        sx, sw = abs(float(t["x_noise_lvl"])), abs(float(t["w_noise_lvl"]))
        truth.append((float(t["x_noise_lvl"]), float(t["w_noise_lvl"])))
        xs.append(d.x), ws.append(d.w), ys.append(simulate_y(ky, d.x, d.w, sx, sw))
    data = dict(x=jnp.stack(xs), w=jnp.stack(ws), y=jnp.stack(ys))
    return data, np.array(truth)


def _brute(model, data, b, zx, zw, exact=False):
    """Dense-grid marginals, moments and log mass of replicate b on the log scale (the Gaussian
    approximation's likelihood, or with ``exact`` the exact one by ``likelihoods.loglik_grid``)."""
    ZX, ZW = np.meshgrid(zx, zw, indexing="ij")
    if exact:
        from noisydot_sbc.likelihoods import loglik_grid

        y, x, w = (np.asarray(data[k])[b:b + 1] for k in ("y", "x", "w"))
        ll = loglik_grid(y, x, w, np.exp(ZX.ravel())[None], np.exp(ZW.ravel())[None]).loglik[0].reshape(ZX.shape)
    else:
        f = jax.jit(jax.vmap(lambda a, c: jnp.sum(gaussian_logpdf(data["y"][b], data["x"][b], data["w"][b], a, c))))
        ll = np.asarray(f(jnp.exp(ZX.ravel()), jnp.exp(ZW.ravel()))).reshape(ZX.shape)
    lp = ll + np.asarray(model.prior.log_prob(jnp.exp(ZX), jnp.exp(ZW))) + ZX + ZW
    p = np.exp(lp - lp.max())
    p /= p.sum()
    out = {}
    for k, (ax, mk) in enumerate(((zx, p.sum(1)), (zw, p.sum(0)))):
        c = np.cumsum(mk)
        mean = float((mk * ax).sum())
        sd = float(np.sqrt((mk * (ax - mean) ** 2).sum()))
        out[PARAMS[k]] = dict(q=np.interp([0.05, 0.5, 0.95], c - mk / 2, ax), mean=mean, sd=sd)
    out["log_z"] = float(logsumexp(lp) + np.log((zx[1] - zx[0]) * (zw[1] - zw[0])))
    return out


def _max_error(res, ref, b):
    """Largest error (log mass in nats; log-scale means, sds and 5/50/95 % quantiles in sds)."""
    q = posterior_quantiles(res)
    mom = posterior_moments(res)
    worst = abs(res.log_marginal_likelihood[b] - ref["log_z"])
    for p in PARAMS:
        sd = ref[p]["sd"]
        worst = max(worst, np.max(np.abs(np.log(q[p][b]) - ref[p]["q"])) / sd,
                    abs(mom[p]["log_mean"][b] - ref[p]["mean"]) / sd, abs(mom[p]["log_sd"][b] - sd) / sd)
    return worst


@pytest.fixture(scope="module")
def strong_gaussian():
    data, truth = _data(STRONG, 3, 60, 4, seed=1)
    model = build_model("gaussian", STRONG)
    res = integrate(jax.random.PRNGKey(0), model, data, QuadratureConfig(num_draws=400))
    return model, data, truth, res


def test_config_validate_names_the_field():
    QuadratureConfig().validate()
    for field, bad in (("tolerance", 0.0), ("dz", -1.0), ("max_nodes", 3), ("num_draws", 0),
                       ("chain_method", "threads"), ("max_refinements", -1), ("log_density_drop", float("nan")),
                       ("likelihood_tolerance", -1e-4), ("likelihood_tolerance", float("inf"))):
        with pytest.raises(ValueError, match=field):
            QuadratureConfig(**{field: bad}).validate()
    with pytest.raises(ValueError, match="unknown"):
        get_method("quadrature", num_draw=5)
    assert isinstance(get_method("quadrature", num_draws=7), Quadrature)
    assert get_method({"name": "quadrature", "dz": 0.5}).config.dz == 0.5


def test_refuses_latent_and_bare_callables(strong_gaussian):
    _, data, _, _ = strong_gaussian
    with pytest.raises(ValueError, match="latent"):
        integrate(jax.random.PRNGKey(0), build_model("latent", STRONG), data)
    with pytest.raises(ValueError, match="models.Model"):
        integrate(jax.random.PRNGKey(0), build_model("gaussian", STRONG).fn, data)
    with pytest.raises(ValueError, match="data\\['w'\\]"):
        integrate(jax.random.PRNGKey(0), build_model("gaussian", STRONG), dict(data, w=data["w"][:, :2]))


def test_gaussian_model_matches_dense_grid_within_its_error_estimate(strong_gaussian):
    model, data, _, res = strong_gaussian
    assert res.certified.all() and not res.failed.any()
    for b in range(3):
        q = posterior_quantiles(res)
        lo = [np.log(q[p][b, 0]) for p in PARAMS]
        hi = [np.log(q[p][b, 2]) for p in PARAMS]
        zx = np.linspace(lo[0] - 3 * (hi[0] - lo[0]), hi[0] + 3 * (hi[0] - lo[0]), 900)
        zw = np.linspace(lo[1] - 3 * (hi[1] - lo[1]), hi[1] + 3 * (hi[1] - lo[1]), 900)
        ref = _brute(model, data, b, zx, zw)
        err = _max_error(res, ref, b)
        assert err <= max(res.error_estimate[b], 2e-3), (b, err, res.error_estimate[b])
        assert res.error_estimate[b] <= 0.01


def test_draws_are_exact_inverse_cdf_draws(strong_gaussian):
    _, _, _, res = strong_gaussian
    for p in PARAMS:
        edges, cdf = res.marginals[p]
        for b in range(3):
            d = np.log(res.draws[p][b])
            # KS against the exact marginal CDF (piecewise linear between the fine-grid edges)
            ks = stats.kstest(d, lambda t: np.interp(t, edges[b], cdf[b]))
            assert ks.pvalue > 1e-3


def _ridge_model(prior, tau):
    """A model with a closed-form posterior: y_n ~ N(log σ_x + log σ_w, τ²) informs only the sum of
    the log noise levels (a ridge; the difference is the prior's alone)."""

    def loglik(y, x, w, sx, sw):
        return stats_norm_logpdf(y, jnp.log(sx) + jnp.log(sw), tau)

    return Model("ridge", None, prior, 0.0, False, loglik)


def stats_norm_logpdf(y, mean, sd):
    return -0.5 * ((y - mean) / sd) ** 2 - jnp.log(sd) - 0.5 * jnp.log(2 * jnp.pi)


def test_ridge_posterior_matches_closed_form_including_the_uninformed_direction():
    prior = Prior("ridge", ScalePrior("lognormal", -2.0, 1.0), ScalePrior("lognormal", -3.0, 2.0))
    tau, N = 0.3, 40
    rng = np.random.default_rng(3)
    y = rng.normal(-5.0, tau, (2, N))
    data = dict(x=jnp.ones((2, N, 1)), w=jnp.ones((2, 1)), y=jnp.asarray(y))
    res = integrate(jax.random.PRNGKey(1), _ridge_model(prior, tau), data, QuadratureConfig(num_draws=2000))
    # conjugate normal: prior N(μ0, diag(s0²)) on z; likelihood precision (N/τ²) 11ᵀ on the sum
    mu0, P0 = np.array([-2.0, -3.0]), np.diag([1.0, 0.25])
    A = np.ones((2, 2)) * N / tau**2
    cov = np.linalg.inv(P0 + A)
    q = posterior_quantiles(res)
    for b in range(2):
        mean = cov @ (P0 @ mu0 + np.ones(2) * y[b].sum() / tau**2)
        # log p(y) = log N(y | 1 (μ0x + μ0w), τ² I + (s0x² + s0w²) 11ᵀ)
        S0 = tau**2 * np.eye(N) + (1.0 + 4.0) * np.ones((N, N))
        log_z = stats.multivariate_normal(np.full(N, mu0.sum()), S0).logpdf(y[b])
        assert abs(res.log_marginal_likelihood[b] - log_z) < 1e-3
        for k, p in enumerate(PARAMS):
            sd = np.sqrt(cov[k, k])
            exact_q = stats.norm(mean[k], sd).ppf([0.05, 0.5, 0.95])
            assert np.max(np.abs(np.log(q[p][b]) - exact_q)) / sd < 0.01
            assert abs(res.moments[p]["log_sd"][b] / sd - 1) < 0.01
        assert res.certified[b]
        # the draws see the ridge: correlation of the log draws as in the closed form
        r = np.corrcoef(np.log(res.draws["x_noise_lvl"][b]), np.log(res.draws["w_noise_lvl"][b]))[0, 1]
        assert abs(r - cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])) < 0.05


def test_prior_tail_weak_prior_m1_matches_wide_dense_grid():
    """M = 1, N = 20, weak prior, data made with σ_w = 0.001 (negligible next to σ_x = 0.3): the
    data bound σ_w from above only, so below that the posterior is the LogNormal(0, 2) prior, far
    into its tail; the quadrature must follow it there (or say it could not)."""
    d = make_design(jax.random.PRNGKey(11), 20, 1)
    y = simulate_y(jax.random.PRNGKey(12), d.x, d.w, 0.3, 0.001)
    data = dict(x=d.x[None], w=d.w[None], y=y[None])
    model = build_model("gaussian", WEAK)
    res = integrate(jax.random.PRNGKey(2), model, data, QuadratureConfig(num_draws=200))
    ref = _brute(model, data, 0, np.linspace(-6, 2, 900), np.linspace(-20, 6, 1800))
    q = posterior_quantiles(res)
    assert np.log(q["w_noise_lvl"][0, 1]) - np.log(q["w_noise_lvl"][0, 0]) > 1.5  # a long prior tail
    assert ref["w_noise_lvl"]["q"][1] - ref["w_noise_lvl"]["q"][0] > 1.5
    err = _max_error(res, ref, 0)
    assert res.certified[0], res.error_estimate[0]
    assert err <= max(res.error_estimate[0], 2e-3), (err, res.error_estimate[0])


def test_uncertified_when_the_node_budget_cannot_reach_the_tolerance(strong_gaussian):
    model, data, _, _ = strong_gaussian
    res = integrate(jax.random.PRNGKey(0), model, data,
                    QuadratureConfig(tolerance=1e-9, max_nodes=60, num_draws=50, max_refinements=1))
    assert not res.certified.any()
    # the walk was cut short by the budget: the mass it did not reach bounds nothing, no estimate
    assert np.all(np.isinf(res.error_estimate))
    assert np.all(res.n_evaluations <= 60)
    ok = ~res.failed
    assert np.all(np.isfinite(res.draws["x_noise_lvl"][ok]))


def test_fit_returns_a_posterior_with_declared_stats(strong_gaussian):
    model, data, _, res = strong_gaussian
    post = get_method("quadrature", num_draws=400).fit(jax.random.PRNGKey(0), model, data)
    assert post.inference == "quadrature" and post.independent_draws
    assert post.samples["x_noise_lvl"].shape == (3, 1, 400)
    names = {s.name for s in post.stat_specs}
    assert {"log_marginal_likelihood", "error_estimate", "certified", "n_evaluations"} <= names
    assert all(s.level == "replicate" for s in post.stat_specs)
    np.testing.assert_allclose(post.fit_stats["log_marginal_likelihood"], res.log_marginal_likelihood)
    np.testing.assert_allclose(post.samples["w_noise_lvl"][:, 0], res.draws["w_noise_lvl"])  # same key, same draws
    # sequential processing gives the same posterior summaries as vectorized
    seq = integrate(jax.random.PRNGKey(0), model, data, QuadratureConfig(num_draws=400, chain_method="sequential"))
    np.testing.assert_allclose(seq.log_marginal_likelihood, res.log_marginal_likelihood, rtol=0, atol=1e-9)
    # ... and so do one vectorized batch and threads over batches of 2 (the default is parallel)
    for cm, bs in (("vectorized", 0), ("parallel", 2)):
        other = integrate(jax.random.PRNGKey(0), model, data,
                          QuadratureConfig(num_draws=400, chain_method=cm, batch_size=bs))
        np.testing.assert_allclose(other.log_marginal_likelihood, res.log_marginal_likelihood, rtol=0, atol=1e-9)
        np.testing.assert_allclose(other.moments["w_noise_lvl"]["log_sd"], res.moments["w_noise_lvl"]["log_sd"],
                                   rtol=1e-9)


@pytest.mark.slow
def test_naive_prior_draws_carry_signs():
    from noisydot_sbc.priors import NAIVE

    data, _ = _data(STRONG, 1, 60, 4, seed=5)
    res = integrate(jax.random.PRNGKey(3), build_model("gaussian", NAIVE), data, QuadratureConfig(num_draws=2000))
    frac = np.mean(res.draws["x_noise_lvl"][0] < 0)
    assert 0.45 < frac < 0.55  # a zero-mean Normal prior: σ and −σ equally likely


@pytest.mark.slow
def test_sbc_ranks_uniform_and_negative_control_rejected():
    from noisydot_sbc.sbc import compute_ranks, ecdf_uniformity

    S, L = 240, 99
    data, truth = _data(STRONG, S, 20, 2, seed=7)
    res = integrate(jax.random.PRNGKey(4), build_model("gaussian", STRONG), data,
                    QuadratureConfig(num_draws=L, fine_grid=96))
    assert not res.failed.any()
    for k, p in enumerate(PARAMS):
        ranks = compute_ranks(np.random.default_rng(k), truth[:, k], res.draws[p])
        assert ecdf_uniformity(ranks, L).p_value > 0.01
    # negative control: posterior widths scaled by 0.5 around the median (over-confident) -> rejected
    p = "x_noise_lvl"
    z = np.log(res.draws[p])
    med = np.median(z, axis=1, keepdims=True)
    narrow = np.exp(med + 0.5 * (z - med))
    ranks = compute_ranks(np.random.default_rng(9), truth[:, 0], narrow)
    assert ecdf_uniformity(ranks, L).p_value < 1e-3


@pytest.mark.slow
def test_quadrature_agrees_with_nuts_on_a_small_case():
    data, _ = _data(STRONG, 2, 40, 3, seed=13)
    model = build_model("gaussian", STRONG)
    res = integrate(jax.random.PRNGKey(5), model, data, QuadratureConfig(num_draws=100))
    nuts = get_method("nuts", num_warmup=400, num_samples=2000, num_chains=2, chain_method="vectorized")
    post = nuts.fit(jax.random.PRNGKey(6), model, data)
    import arviz as az

    probs = (0.05, 0.5, 0.95)
    q = posterior_quantiles(res, probs)
    for p in PARAMS:
        z = np.log(np.asarray(post.samples[p]))  # (S, chain, draw)
        for b in range(2):
            sd = res.moments[p]["log_sd"][b]
            for k, prob in enumerate(probs):
                nq = np.quantile(z[b], prob)
                mcse = float(az.mcse(z[b], method="quantile", prob=prob))  # z[b]: (chain, draw)
                # within 4 Monte Carlo standard errors of the NUTS quantile (plus 0.01 sd)
                assert abs(nq - np.log(q[p][b, k])) < 4 * mcse + 0.01 * sd, (p, b, prob, nq, mcse)


# --- the corrected lattice: exact likelihood on a sublattice, approximation + interpolated correction elsewhere ---

def _ridge_truth(prior, tau, y):
    """Closed-form posterior of the ridge model (see test_ridge_posterior_...): mean, cov on z."""
    N = y.shape[-1]
    mu0 = np.array([prior.x_noise_lvl.loc, prior.w_noise_lvl.loc])
    P0 = np.diag([1 / prior.x_noise_lvl.scale**2, 1 / prior.w_noise_lvl.scale**2])
    cov = np.linalg.inv(P0 + np.ones((2, 2)) * N / tau**2)
    return [cov @ (P0 @ mu0 + np.ones(2) * yb.sum() / tau**2) for yb in y], cov


def _wiggly_approximation(tau, amplitude, period, N):
    """The ridge likelihood minus amplitude·sin(2π log σ_x / period) in total (spread over N
    observations): an approximation whose correction Δ is a known smooth wave."""
    def approx(y, x, w, sx, sw):
        exact = stats_norm_logpdf(y, jnp.log(sx) + jnp.log(sw), tau)
        return exact - amplitude * jnp.sin(2 * jnp.pi * jnp.log(sx) / period) / N

    return approx


@pytest.mark.parametrize("amplitude, period, certified", [(0.3, 12.0, True), (0.5, 0.5, False)])
def test_corrected_lattice_recovers_the_exact_posterior_or_says_it_cannot(amplitude, period, certified):
    """The approximation is off by a wave in log σ_x. A slow wave (0.3 nats, period 12; the
    posterior's sd along log σ_x is ~0.9) is interpolated from the sublattice: the corrected lattice
    gives the closed-form posterior of the exact model, not the approximation's (which is off by
    more than the tolerance), with far fewer exact evaluations than the full lattice. A fast wave
    (0.5 nats, period 0.5) cannot be interpolated from the sublattice at any allowed step: the
    replicate is reported uncertified, its correction error above the tolerance, and the error
    estimate bounds the actual error."""
    prior = Prior("ridge", ScalePrior("lognormal", -2.0, 1.0), ScalePrior("lognormal", -3.0, 2.0))
    tau, N = 0.3, 40
    y = np.random.default_rng(3).normal(-5.0, tau, (2, N))
    data = dict(x=jnp.ones((2, N, 1)), w=jnp.ones((2, 1)), y=jnp.asarray(y))
    model = _ridge_model(prior, tau)
    approx = _wiggly_approximation(tau, amplitude, period, N)
    cfg = QuadratureConfig(num_draws=100, exact_stride=4)
    res = integrate(jax.random.PRNGKey(1), model, data, cfg, approximation=approx)
    full = integrate(jax.random.PRNGKey(1), model, data, QuadratureConfig(num_draws=100, exact_stride=1))
    means, cov = _ridge_truth(prior, tau, y)

    def quantile_error(result, b):
        q = posterior_quantiles(result)
        err = 0.0
        for k, p in enumerate(PARAMS):
            sd = np.sqrt(cov[k, k])
            exact_q = stats.norm(means[b][k], sd).ppf([0.05, 0.5, 0.95])
            err = max(err, np.max(np.abs(np.log(q[p][b]) - exact_q)) / sd)
        return err

    approx_only = integrate(jax.random.PRNGKey(1), Model("approx", None, prior, 0.0, False, approx), data,
                            QuadratureConfig(num_draws=100, exact_stride=1))
    for b in range(2):
        err = quantile_error(res, b)
        if certified:
            assert quantile_error(approx_only, b) > 0.03  # the approximation alone is visibly wrong
        assert err <= res.error_estimate[b] + 2e-3, (b, err, res.error_estimate[b])
        assert res.certified[b], (b, res.error_estimate[b], res.correction_error[b])
        assert err < 0.01
        if certified:
            assert res.n_evaluations[b] < 0.5 * full.n_evaluations[b], (res.n_evaluations, full.n_evaluations)
            assert res.correction_error[b] < cfg.tolerance and res.exact_stride[b] > 1
        else:  # integrated again with the exact likelihood at every node, both attempts counted
            assert res.exact_stride[b] == 1 and res.correction_error[b] == 0.0
            assert res.n_evaluations[b] > full.n_evaluations[b], (res.n_evaluations, full.n_evaluations)
    assert full.certified.all() and (full.correction_error == 0).all() and (full.exact_stride == 1).all()
    if not certified:  # what the corrected lattice alone reports: uncertified, its correction error above tolerance
        alone = integrate(jax.random.PRNGKey(1), model, data, QuadratureConfig(num_draws=100, exact_fallback=False),
                          approximation=approx)
        assert not alone.certified.any() and (alone.correction_error > cfg.tolerance).all()
        assert (alone.exact_stride > 1).all()


def test_corrected_walk_gives_every_pending_node_a_value():
    """A pending node on the exact sublattice whose log posterior is far below the top has no
    value until it is evaluated exactly; the walk's evaluation must give it one (the walk stops
    only when no pending node is left: a node left without a value was pending again in every
    round, and the walk never ended; seen under the weak prior at M = 1)."""
    from noisydot_sbc.inference.quadrature.corrected import Corrected
    from noisydot_sbc.inference.quadrature.lattice import Frame, Lattice

    def ev(rep_idx, z):  # a steep Gaussian log-likelihood, exact and approximate alike
        return -50.0 * np.sum(z**2, axis=-1), np.zeros(z.shape[:2])

    prior_lp = lambda z: np.zeros(z.shape[:-1])
    frames = [Frame(np.zeros(2), np.eye(2), np.zeros(2), np.zeros(2))]
    lat = Lattice(1, 0.75, 8, np.array([4]))
    corr = Corrected(ev, ev, np.array([0]), frames, prior_lp, core_drop=6.0, drop=12.0)
    n_eval = np.zeros(1, np.int64)
    centre = np.zeros((1, lat.G, lat.G), bool)
    centre[0, 8, 8] = True
    corr.exact(lat, centre, n_eval)  # the top: an exact value at the centre
    pending = np.zeros_like(centre)
    pending[0, 12, 8] = True  # on the stride-4 sublattice, 3 whitened units out: ~450 nats below the top
    pending[0, 9, 9] = True   # off the sublattice, within reach of the top
    corr(lat, pending, n_eval)
    assert np.all(np.isfinite(lat.val[pending])), lat.val[pending]
    assert lat.val[0, 12, 8] == pytest.approx(-50.0 * 3.0**2)  # its exact value, not an interpolated one


@pytest.mark.slow  # ~45 s (the exact likelihood's compilation at a new shape); the ridge tests above cover the same code
def test_corrected_lattice_on_the_exact_marginal_model_matches_the_exact_likelihood_everywhere():
    """NoisyDot (marginal) with the Gaussian approximation corrected on a stride-4 sublattice
    against the exact likelihood at every node: the same posterior within the two error
    estimates, with fewer exact evaluations (at N = 60, M = 2: ~55 % of them)."""
    data, _ = _data(STRONG, 3, 60, 2, seed=21)
    model = build_model("marginal", STRONG)
    cor = integrate(jax.random.PRNGKey(0), model, data, QuadratureConfig(num_draws=100))
    ful = integrate(jax.random.PRNGKey(0), model, data, QuadratureConfig(num_draws=100, exact_stride=1))
    assert cor.certified.all() and ful.certified.all()
    qc, qf = posterior_quantiles(cor), posterior_quantiles(ful)
    for p in PARAMS:
        sd = ful.moments[p]["log_sd"]
        diff = np.max(np.abs(np.log(qc[p]) - np.log(qf[p])), axis=1) / sd
        assert np.all(diff <= cor.error_estimate + ful.error_estimate + 1e-3), (p, diff)
    np.testing.assert_allclose(cor.log_marginal_likelihood, ful.log_marginal_likelihood, atol=0.01)
    assert cor.n_evaluations.sum() < 0.7 * ful.n_evaluations.sum(), (cor.n_evaluations, ful.n_evaluations)
    assert np.all(cor.exact_stride >= 2) and np.all(cor.correction_error > 0)


@pytest.mark.slow  # ~50 s (the exact likelihood's compilation at a new shape, 90,000 exact values)
def test_exact_marginal_model_matches_a_dense_grid_of_the_exact_likelihood():
    """NoisyDot (marginal), strong prior, M = 2, N = 30: the quadrature (corrected lattice) against a
    300 x 300 grid of the exact likelihood over ±8 posterior sds (no adaptivity, no interpolation):
    every quantile, mean and sd within the certified error estimate (plus the grid's own ~1e-3)."""
    data, _ = _data(STRONG, 1, 30, 2, seed=4)
    model = build_model("marginal", STRONG)
    res = integrate(jax.random.PRNGKey(0), model, data, QuadratureConfig(num_draws=100))
    assert res.certified[0], res.error_estimate[0]
    m = [res.moments[p]["log_mean"][0] for p in PARAMS]
    sd = [res.moments[p]["log_sd"][0] for p in PARAMS]
    ref = _brute(model, data, 0, np.linspace(m[0] - 8 * sd[0], m[0] + 8 * sd[0], 300),
                 np.linspace(m[1] - 8 * sd[1], m[1] + 8 * sd[1], 300), exact=True)
    err = _max_error(res, ref, 0)
    assert err <= res.error_estimate[0] + 2e-3, (err, res.error_estimate[0])


@pytest.mark.parametrize("y_noise", [0.0, 0.05])
def test_gaussian_approximation_from_sufficient_statistics_matches_gaussian_logpdf(y_noise):
    """The corrected lattice's approximation (O(N) per point from μ_n, A_n, B) equals the summed
    gaussian_logpdf at every point, replicate and readout noise."""
    from noisydot_sbc.inference.quadrature import GaussianEvaluator

    data, truth = _data(STRONG, 3, 40, 4, seed=2)
    ev = GaussianEvaluator(data, y_noise)
    z = np.log(np.abs(truth))[:, None, :] + np.random.default_rng(0).normal(0.0, 0.5, (3, 7, 2))
    got, err = ev(np.arange(3), z)
    for b in range(3):
        for k in range(7):
            sx, sw = np.exp(z[b, k])
            ref = float(jnp.sum(gaussian_logpdf(data["y"][b], data["x"][b], data["w"][b], sx, sw, y_noise)))
            assert abs(got[b, k] - ref) < 1e-9 * max(1.0, abs(ref))
    assert np.all(err == 0)
    # more points than one NumPy pass holds: the same values as point by point
    zz = np.log(np.abs(truth))[:, None, :] + np.random.default_rng(1).normal(0.0, 0.5, (3, 1500, 2))
    many, _ = ev(np.arange(3), zz)
    one = np.concatenate([ev(np.arange(3), zz[:, k:k + 1])[0] for k in range(0, 1500, 97)], axis=1)
    np.testing.assert_allclose(many[:, ::97], one, rtol=1e-14)


def test_host_log_prior_matches_the_numpyro_prior_the_seed_differentiates():
    """prior_lp_fn (ScalePrior.log_density on the host) equals _log_prior_z (the priors' NumPyro
    distributions, folded, with the Jacobian of z = log|σ|) for every prior family, from z = -8
    to 4 and out to |z| = 700, where both are finite; and both are -inf together."""
    from noisydot_sbc.inference.quadrature.evaluate import _log_prior_z, prior_lp_fn
    from noisydot_sbc.priors import PRIORS

    rng = np.random.default_rng(3)
    z = np.concatenate([rng.uniform(-8, 4, (500, 2)), rng.uniform(-700, 700, (100, 2)), [[0.0, 0.0], [-700, 700]]])
    halfnormal = Prior("hn", ScalePrior("halfnormal", 0.0, 0.3), ScalePrior("normal", 0.1, 0.5))
    for prior in list(PRIORS.values()) + [halfnormal]:
        got = prior_lp_fn(prior)(z)
        ref = np.asarray(jax.vmap(lambda v: _log_prior_z(prior, v))(jnp.asarray(z)))
        assert np.array_equal(np.isfinite(got), np.isfinite(ref)) and not np.isnan(got).any()
        fin = np.isfinite(ref)
        assert np.all(np.abs(got[fin] - ref[fin]) <= 1e-13 * np.maximum(1.0, np.abs(ref[fin]))), prior.name


def test_walk_dilation_matches_scipy_binary_dilation():
    """The walk's frontier (a 3×3 box dilation per replicate, edges included) equals
    scipy.ndimage.binary_dilation with a (1, 3, 3) structure, the independent reference."""
    from scipy import ndimage

    from noisydot_sbc.inference.quadrature.lattice import dilate8

    rng = np.random.default_rng(5)
    for shape, p in (((3, 9, 9), 0.05), ((2, 41, 41), 0.01), ((1, 5, 5), 0.5)):
        m = rng.random(shape) < p
        m[0, 0, 0] = m[-1, -1, -1] = True  # corners: the dilation must not wrap around
        ref = ndimage.binary_dilation(m, structure=np.ones((1, 3, 3), bool))
        np.testing.assert_array_equal(dilate8(m), ref)


def _walk_on(lat, ev, D=12.0, max_nodes=10**6):
    from noisydot_sbc.inference.quadrature.lattice import Frame, evaluate_nodes, walk

    frames = [Frame(np.zeros(2), np.eye(2), np.zeros(2), np.zeros(2))] * lat.val.shape[0]
    prior_lp = lambda z: np.zeros(z.shape[:-1])
    n_eval = np.zeros(lat.val.shape[0], np.int64)
    rep = np.arange(lat.val.shape[0])
    capped = walk(lambda lat_, pending, n_ev: evaluate_nodes(ev, rep, lat_, pending, frames, prior_lp, n_ev),
                  lat, D, max_nodes, n_eval, first=True)
    return capped, n_eval


def test_lattice_grows_as_the_walk_needs_and_finds_the_nodes_of_the_full_size_lattice():
    """A lattice that starts around the first disk and grows (its arrays widened when the walk's
    inside reaches their edge) walks to exactly the nodes and values that a lattice allocated at
    its full radius does, on a posterior stretched 3x along one axis and shifted off the centre;
    a flat log density reaches max_radius and is reported capped. The halved lattice is sized
    to the known nodes, not to twice the full radius."""
    from noisydot_sbc.inference.quadrature.lattice import Lattice

    def ev(rep_idx, z):  # replicate 0 stretched along z0, replicate 1 shifted along z1
        s = np.where(rep_idx[:, None] == 0, 3.0, 1.0)
        return -0.5 * ((z[..., 0] / s) ** 2 + (z[..., 1] - 3.0 * rep_idx[:, None]) ** 2), np.zeros(z.shape[:2])

    small, full = Lattice(2, 0.75, 4, R_max=40), Lattice(2, 0.75, 40)
    c_small, n_small = _walk_on(small, ev)
    c_full, n_full = _walk_on(full, ev)
    assert not c_small.any() and not c_full.any()
    assert 4 < small.R < 40, small.R
    off = full.R - small.R
    np.testing.assert_array_equal(full.val[:, off:off + small.G, off:off + small.G], small.val)
    assert np.isnan(np.delete(np.delete(full.val, np.s_[off:off + small.G], 1), np.s_[off:off + small.G], 2)).all()
    np.testing.assert_array_equal(n_small, n_full)
    half = small.refined(np.array([True, True]), None)
    assert half.R < 2 * small.R_max and half.R_max == 2 * small.R_max
    np.testing.assert_array_equal(half.val[:, half.R - 2 * 10:half.R + 2 * 10 + 1:2, half.R - 2 * 10:half.R + 2 * 10 + 1:2],
                                  small.val[:, small.R - 10:small.R + 11, small.R - 10:small.R + 11])

    flat = Lattice(1, 0.75, 4, R_max=12)
    capped, _ = _walk_on(flat, lambda rep_idx, z: (np.zeros(z.shape[:2]), np.zeros(z.shape[:2])))
    assert capped[0] and flat.R == 12 and not np.isnan(flat.val).any()


def test_corrected_lattice_checks_the_correction_in_the_tail_beyond_the_mass():
    """The approximation is right where the mass is and off by a fast wave only in the tail (more
    than 2.5 posterior sds out along log σ_w, where the exact likelihood is known on the outer
    sublattice alone). The check nodes must sample that tail (one per 2-nat band of log density
    beyond the 99.9 % of the mass): the corrected lattice alone reports a correction error above the
    tolerance and does not certify, and with the exact fallback (default) the result is the
    closed-form posterior. Checked only where the mass is, the wave went unseen and the replicate
    was certified with its tail mass wrong (a weak-prior replicate of NoisyDot was certified at
    0.0020 with an error of 0.0166 posterior sds that way)."""
    prior = Prior("ridge", ScalePrior("lognormal", -2.0, 1.0), ScalePrior("lognormal", -3.0, 2.0))
    tau, N = 0.3, 40
    y = np.random.default_rng(3).normal(-5.0, tau, (1, N))
    data = dict(x=jnp.ones((1, N, 1)), w=jnp.ones((1, 1)), y=jnp.asarray(y))
    model = _ridge_model(prior, tau)
    means, cov = _ridge_truth(prior, tau, y)
    c, s = means[0][1], np.sqrt(cov[1, 1])

    def approx(y_, x, w, sx, sw):  # exact + 3 nats·sin(wave) beyond 2.5 sds of log σ_w, spread over N
        t = (jnp.log(sw) - c) / s
        tail = jax.nn.sigmoid(4.0 * (jnp.abs(t) - 2.5))
        return stats_norm_logpdf(y_, jnp.log(sx) + jnp.log(sw), tau) + 3.0 * tail * jnp.sin(6.0 * t) / N

    alone = integrate(jax.random.PRNGKey(1), model, data, QuadratureConfig(num_draws=100, exact_fallback=False),
                      approximation=approx)
    assert not alone.certified[0] and alone.correction_error[0] > 0.01, (alone.error_estimate, alone.correction_error)
    res = integrate(jax.random.PRNGKey(1), model, data, QuadratureConfig(num_draws=100), approximation=approx)
    assert res.certified[0] and res.exact_stride[0] == 1
    q = posterior_quantiles(res)
    for k, p in enumerate(PARAMS):
        sd = np.sqrt(cov[k, k])
        exact_q = stats.norm(means[0][k], sd).ppf([0.05, 0.5, 0.95])
        assert np.max(np.abs(np.log(q[p][0]) - exact_q)) / sd < 0.01
