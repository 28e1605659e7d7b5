"""Tests of the batched step-wise NUTS engine (noisydot_sbc.engine)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

jax.config.update("jax_enable_x64", True)

from noisydot_sbc import engine  # noqa: E402
from noisydot_sbc.engine import FitResult, NUTSConfig, fit_batch  # noqa: E402


def normal_mean(y, sd):
    """mu ~ N(0, 10²); y_n ~ N(mu, sd²): conjugate, posterior known in closed form."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    numpyro.sample("obs", dist.Normal(mu, sd), obs=y)


def toy_latent(y):
    """A positive scale plus a latent vector site called 'u' (dropped by default)."""
    s = numpyro.sample("scale", dist.LogNormal(0.0, 0.5))
    u = numpyro.sample("u", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    numpyro.sample("obs", dist.Normal(u.sum(), s), obs=y)


def _normal_data(S=4, N=20, seed=0):
    sd = jnp.array([0.1, 1.0, 5.0, 20.0])[:S]
    y = 3.0 + sd[:, None] * jax.random.normal(jax.random.PRNGKey(seed), (S, N))
    return {"y": y, "sd": sd}


def _posterior(data):
    y, sd = np.asarray(data["y"]), np.asarray(data["sd"])
    prec = 1 / 100 + y.shape[1] / sd**2
    return (y.sum(1) / sd**2) / prec, 1 / np.sqrt(prec)


SMALL = NUTSConfig(num_warmup=300, num_samples=1500, num_chains=2, chain_method="vectorized")


@pytest.fixture(scope="module")
def normal_fit():
    data = _normal_data()
    return data, fit_batch(jax.random.PRNGKey(0), normal_mean, data, SMALL)


# ------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    "field, value",
    [
        ("num_samples", 0),
        ("num_samples", -5),
        ("chain_method", "threads"),
        ("thinning", 0),
        ("target_accept_prob", 0.0),
        ("target_accept_prob", 1.0),
        ("target_accept_prob", 1.5),
        ("num_chains", 0),
        ("num_warmup", -1),
        ("max_tree_depth", 0),
    ],
)
def test_bad_config_raises_naming_field(field, value):
    cfg = NUTSConfig()._replace(**{field: value})
    with pytest.raises(ValueError, match=field):
        cfg.validate()
    with pytest.raises(ValueError, match=field):
        fit_batch(jax.random.PRNGKey(0), normal_mean, _normal_data(), cfg)


def test_bad_data_raises():
    with pytest.raises(ValueError, match="replicates"):
        fit_batch(jax.random.PRNGKey(0), normal_mean, {"y": jnp.ones((3, 5)), "sd": jnp.ones(2)}, SMALL)
    with pytest.raises(ValueError, match="non-finite"):
        fit_batch(jax.random.PRNGKey(0), normal_mean, {"y": jnp.full((2, 5), jnp.nan), "sd": jnp.ones(2)}, SMALL)


def test_threefry_matches_jax_bitwise():
    from jax._src.random.threefry2x32 import threefry2x32_p

    k = jnp.array([0x13198A2E, 0x03707344], jnp.uint32)
    x1 = jnp.arange(50, dtype=jnp.uint32) * np.uint32(2654435761)
    x2 = jnp.arange(50, dtype=jnp.uint32) ^ np.uint32(0xDEADBEEF)
    ref = threefry2x32_p.bind(k[0], k[1], x1, x2)
    mine = engine.threefry2x32(k[0], k[1], x1, x2)
    np.testing.assert_array_equal(np.asarray(mine[0]), np.asarray(ref[0]))
    np.testing.assert_array_equal(np.asarray(mine[1]), np.asarray(ref[1]))


def test_uniforms_are_uniform():
    u = jax.vmap(lambda c: engine._uniforms(jnp.array([1, 2], jnp.uint32), c, 6, jnp.float64))(
        jnp.arange(20000, dtype=jnp.uint32)
    )
    u = np.asarray(u).ravel()
    assert u.min() >= 0 and u.max() < 1
    # Kolmogorov-Smirnov distance for 120k uniforms: 5 sigma band
    d = np.max(np.abs(np.sort(u) - np.arange(1, u.size + 1) / u.size))
    assert d < 2.0 / np.sqrt(u.size)


# ------------------------------------------------------------------------------ correctness
def test_conjugate_posterior_recovered(normal_fit):
    data, fit = normal_fit
    mean, sd = _posterior(data)
    mu = fit.samples["mu"]
    assert mu.shape == (4, 2, 1500)
    n = mu.shape[1] * mu.shape[2]
    # MC error with a conservative ESS of n/4
    np.testing.assert_array_less(np.abs(mu.mean((1, 2)) - mean), 5 * sd / np.sqrt(n / 4))
    np.testing.assert_allclose(mu.std((1, 2)), sd, rtol=0.1)
    assert not fit.failed.any()
    assert fit.sample_stats["diverging"].sum() == 0
    acc = fit.sample_stats["acceptance_rate"].mean()
    assert 0.7 < acc < 0.99  # target 0.8; NUTS' mean accept stat lands near/above it


def test_result_shapes_and_stats(normal_fit):
    data, fit = normal_fit
    assert isinstance(fit, FitResult)
    assert fit.chain_method == "vectorized"
    assert set(fit.sample_stats) == set(engine.STAT_NAMES)
    for name, v in fit.sample_stats.items():
        assert v.shape == (4, 2, 1500), name
    assert fit.sample_stats["diverging"].dtype == bool
    assert np.issubdtype(fit.sample_stats["tree_depth"].dtype, np.integer)
    depth, steps = fit.sample_stats["tree_depth"], fit.sample_stats["n_steps"]
    assert (steps >= 1).all() and (steps <= 2**depth - 1).all() and (depth <= SMALL.max_tree_depth).all()
    # lp is the log density (up to a constant) at the draw: maximal near the posterior mean
    mu, lp = fit.samples["mu"][1].ravel(), fit.sample_stats["lp"][1].ravel()
    mean, _ = _posterior(data)
    assert np.corrcoef(lp, -((mu - mean[1]) ** 2))[0, 1] > 0.99
    # energy >= -lp (kinetic energy is >= 0)
    assert (fit.sample_stats["energy"] >= -fit.sample_stats["lp"] - 1e-9).all()
    assert fit.wall_time > 0 and fit.compile_time >= 0
    assert fit.failed.shape == (4,) and fit.error == [""] * 4


def test_gaussian_model_matches_numpyro_mcmc():
    """The project's Gaussian model on tiny data against a long numpyro.infer.MCMC reference."""
    from noisydot_sbc.models import get_model
    from noisydot_sbc.priors import STRONG
    from noisydot_sbc.simulate import make_design, simulate_y

    model = get_model("gaussian", STRONG)
    design = make_design(jax.random.PRNGKey(3), 40, 3)
    y = simulate_y(jax.random.PRNGKey(4), design.x, design.w, 0.2, 0.1)
    ref = numpyro.infer.MCMC(numpyro.infer.NUTS(model), num_warmup=500, num_samples=5000, progress_bar=False)
    ref.run(jax.random.PRNGKey(5), design.x, design.w, y)
    ref_s = ref.get_samples()
    data = {"x": design.x[None], "w": design.w[None], "y": y[None]}
    fit = fit_batch(jax.random.PRNGKey(6), model, data, NUTSConfig(300, 2000, 2, chain_method="vectorized"))
    for site in ("x_noise_lvl", "w_noise_lvl"):
        a, b = fit.samples[site].ravel(), np.asarray(ref_s[site])
        assert (a > 0).all()  # constrained values
        se = b.std() * np.sqrt(1 / (a.size / 4) + 1 / (b.size / 4))
        assert abs(a.mean() - b.mean()) < 5 * se, site
        np.testing.assert_allclose(a.std(), b.std(), rtol=0.15)
        np.testing.assert_allclose(np.quantile(a, [0.1, 0.9]), np.quantile(b, [0.1, 0.9]), rtol=0.1)


def test_sequential_and_parallel_equal_vectorized(normal_fit):
    """Each replicate-chain runs its own counter-based random stream, so the mapping does not
    change the arithmetic: sequential / parallel(1 device here) reproduce vectorized draws."""
    data, fit = normal_fit
    for method in ("sequential", "parallel"):
        other = fit_batch(jax.random.PRNGKey(0), normal_mean, data, SMALL._replace(chain_method=method))
        assert other.chain_method == method
        np.testing.assert_allclose(other.samples["mu"], fit.samples["mu"], rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(other.sample_stats["n_steps"], fit.sample_stats["n_steps"])


def test_different_keys_give_different_draws_same_distribution(normal_fit):
    data, fit = normal_fit
    other = fit_batch(jax.random.PRNGKey(1), normal_mean, data, SMALL)
    assert not np.allclose(other.samples["mu"], fit.samples["mu"])
    _, sd = _posterior(data)
    n = 3000
    diff = other.samples["mu"].mean((1, 2)) - fit.samples["mu"].mean((1, 2))
    np.testing.assert_array_less(np.abs(diff), 5 * sd * np.sqrt(2 / (n / 4)))


def test_step_size_adapts_per_replicate():
    """Short warm-up (< 20 iterations: step size only, no mass matrix): each replicate's step
    size follows its own posterior scale."""
    data = _normal_data(seed=2)
    cfg = NUTSConfig(num_warmup=15, num_samples=20, num_chains=1, chain_method="vectorized")
    fit = fit_batch(jax.random.PRNGKey(2), normal_mean, data, cfg)
    eps = fit.sample_stats["step_size"][:, 0, 0]
    _, post_sd = _posterior(data)
    assert (np.diff(eps) > 0).all()  # ordered like the posterior sd (0.02, 0.2, 1.1, 4.4)
    assert eps[-1] / eps[0] > 20
    # and one step size per replicate-chain, constant during sampling
    assert (fit.sample_stats["step_size"] == fit.sample_stats["step_size"][:, :, :1]).all()


def test_thinning_and_drop_sites_on_latent_model():
    """The project's latent model: 'u' (N×M) is sampled but dropped from the stored draws."""
    from noisydot_sbc.models import get_model
    from noisydot_sbc.priors import STRONG
    from noisydot_sbc.simulate import make_design, simulate_y

    S, N, M = 3, 6, 2
    designs = [make_design(jax.random.PRNGKey(s), N, M) for s in range(S)]
    x = jnp.stack([d.x for d in designs])
    w = jnp.stack([d.w for d in designs])
    y = jnp.stack([simulate_y(jax.random.PRNGKey(10 + s), x[s], w[s], 0.1, 0.05) for s in range(S)])
    cfg = NUTSConfig(num_warmup=60, num_samples=30, num_chains=2, thinning=4, chain_method="vectorized")
    fit = fit_batch(jax.random.PRNGKey(0), get_model("latent", STRONG), {"x": x, "w": w, "y": y}, cfg)
    assert set(fit.samples) == {"x_noise_lvl", "w_noise_lvl"}
    for v in list(fit.samples.values()) + list(fit.sample_stats.values()):
        assert v.shape == (S, 2, 8)  # ceil(30 / 4) draws
    assert (fit.samples["x_noise_lvl"] > 0).all() and (fit.samples["w_noise_lvl"] > 0).all()


def test_failed_replicate_is_flagged_not_fatal():
    data = _normal_data()
    data["sd"] = data["sd"].at[2].set(-1.0)  # Normal with negative scale: log density is NaN
    cfg = NUTSConfig(num_warmup=50, num_samples=50, num_chains=2, chain_method="vectorized")
    fit = fit_batch(jax.random.PRNGKey(0), normal_mean, data, cfg)
    np.testing.assert_array_equal(fit.failed, [False, False, True, False])
    assert "finite" in fit.error[2] and fit.error[0] == ""
    assert np.isnan(fit.samples["mu"][2]).all()
    assert np.isfinite(fit.samples["mu"][[0, 1, 3]]).all()


def test_compile_once_per_shape():
    compiles = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        _check_compile_once(compiles)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _check_compile_once(compiles):
    engine.clear_cache()
    cfg = NUTSConfig(num_warmup=30, num_samples=30, num_chains=2, chain_method="vectorized")
    y = jnp.array([[0.3], [1.0], [-2.0]])
    data2, data3 = {"y": y * 2.0}, {"y": y[:2]}
    first = fit_batch(jax.random.PRNGKey(0), toy_latent, {"y": y}, cfg, drop_sites=())
    n_first = len(compiles)
    assert n_first >= 1 and first.compile_time > 0
    # drop_sites=() keeps the latent vector 'u'
    assert set(first.samples) == {"scale", "u"}
    assert first.samples["u"].shape == (3, 2, 30, 3) and first.samples["scale"].shape == (3, 2, 30)
    # same shapes, new values and key: no compilation at all
    second = fit_batch(jax.random.PRNGKey(7), toy_latent, data2, cfg, drop_sites=())
    assert len(compiles) == n_first
    assert second.compile_time == 0.0
    assert engine.cache_info() == {"hits": 1, "misses": 1, "size": 1}
    # a new shape compiles again
    fit_batch(jax.random.PRNGKey(0), toy_latent, data3, cfg, drop_sites=())
    assert len(compiles) > n_first and engine.cache_info()["misses"] == 2


def test_auto_and_host_devices():
    method, why = engine.resolve_chain_method("auto", 10)
    assert method in ("vectorized", "parallel") and why
    assert engine.resolve_chain_method("sequential", 10)[0] == "sequential"
    n = len(jax.devices("cpu"))
    assert engine.configure_host_devices(n) == n  # already satisfied: no-op
    with pytest.raises(RuntimeError, match="already initialised"):
        engine.configure_host_devices(n + 1)
    with pytest.raises(ValueError, match="k must be"):
        engine.configure_host_devices(0)


def correlated_normal(loc, scale):
    """Posterior = N(loc, Σ) with correlation 0.95 and per-replicate scale."""
    cov = scale**2 * jnp.array([[1.0, 0.95], [0.95, 1.0]])
    numpyro.sample("theta", dist.MultivariateNormal(loc, covariance_matrix=cov))


def test_dense_mass_matrix_on_correlated_target():
    loc = jnp.array([[1.0, -1.0], [0.0, 2.0]])
    scale = jnp.array([1.0, 0.01])
    cfg = NUTSConfig(num_warmup=400, num_samples=1500, num_chains=2, dense_mass=True, chain_method="vectorized")
    fit = fit_batch(jax.random.PRNGKey(3), correlated_normal, {"loc": loc, "scale": scale}, cfg)
    th = fit.samples["theta"]
    assert th.shape == (2, 2, 1500, 2)
    for s in range(2):
        d = th[s].reshape(-1, 2)
        np.testing.assert_allclose(d.mean(0), loc[s], atol=5 * float(scale[s]) / np.sqrt(d.shape[0] / 4))
        np.testing.assert_allclose(np.corrcoef(d.T)[0, 1], 0.95, atol=0.02)
        np.testing.assert_allclose(d.std(0), [scale[s]] * 2, rtol=0.1)
    # with a learned dense metric the correlated target needs short trajectories
    assert fit.sample_stats["tree_depth"].mean() < 3
