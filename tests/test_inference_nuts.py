"""The inference package through its public API: NUTS kernel, driver modes, cache, failures,
adaptive run length (target_ess), progress, method registry.

Compiled executables are shared: each config/shape below compiles once per module."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

jax.config.update("jax_enable_x64", True)

from noisydot_sbc import inference  # noqa: E402
from noisydot_sbc.inference import NUTS, NUTSConfig, Posterior, StatSpec, fit_batch, get_method  # noqa: E402
from noisydot_sbc.inference import driver, rng  # noqa: E402
from noisydot_sbc.inference.nuts import STAT_NAMES, FitResult  # noqa: E402


# ------------------------------------------------------------------------------ models (test-local, so the
# pinned draws depend on the inference code only)
def normal_mean(y, sd):
    """mu ~ N(0, 10²); y_n ~ N(mu, sd²): conjugate, posterior known in closed form."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    numpyro.sample("obs", dist.Normal(mu, sd), obs=y)


def noisy_dot_gauss(x, w, y):
    """A two-scale heteroscedastic Gaussian with the project's site names."""
    sx = numpyro.sample("x_noise_lvl", dist.LogNormal(-2.0, 0.5))
    sw = numpyro.sample("w_noise_lvl", dist.LogNormal(-2.0, 0.5))
    var = sx**2 * jnp.sum(w**2) + sw**2 * jnp.sum(x**2 * w**2, -1) + sx**2 * sw**2 * jnp.sum(w**2)
    numpyro.sample("obs", dist.Normal(x @ w, jnp.sqrt(var)), obs=y)


def toy_latent(y):
    """A positive scale (a PARAMS site) plus a latent vector 'u' (not stored by default)."""
    s = numpyro.sample("x_noise_lvl", dist.LogNormal(0.0, 0.5))
    u = numpyro.sample("u", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    numpyro.sample("obs", dist.Normal(u.sum(), s), obs=y)


def correlated_normal(loc, scale):
    """Posterior = N(loc, Σ) with correlation 0.95 and per-replicate scale."""
    cov = scale**2 * jnp.array([[1.0, 0.95], [0.95, 1.0]])
    numpyro.sample("theta", dist.MultivariateNormal(loc, covariance_matrix=cov))


def _normal_data(S=4, N=20, seed=0):
    sd = jnp.array([0.1, 1.0, 5.0, 20.0])[:S]
    y = 3.0 + sd[:, None] * jax.random.normal(jax.random.PRNGKey(seed), (S, N))
    return {"y": y, "sd": sd}


def _posterior(data):
    y, sd = np.asarray(data["y"]), np.asarray(data["sd"])
    prec = 1 / 100 + y.shape[1] / sd**2
    return (y.sum(1) / sd**2) / prec, 1 / np.sqrt(prec)


def _gdata(S=3, N=20, M=3, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(k1, (S, N, M))
    w = jax.random.normal(k2, (S, M))
    y = jnp.einsum("snm,sm->sn", x, w) + 0.3 * jax.random.normal(k3, (S, N))
    return {"x": x, "w": w, "y": y}


SMALL = NUTSConfig(num_warmup=300, num_samples=1500, num_chains=2, chain_method="vectorized")
PIN_G = NUTSConfig(num_warmup=60, num_samples=30, num_chains=2)
MU = ("mu",)


@pytest.fixture(scope="module")
def normal_fit():
    data = _normal_data()
    return data, fit_batch(jax.random.PRNGKey(0), normal_mean, data, SMALL, keep_sites=MU)


# ------------------------------------------------------------------------------ configuration and registry
@pytest.mark.parametrize(
    "field, value",
    [
        ("num_samples", 0), ("num_samples", -5), ("chain_method", "threads"), ("thinning", 0),
        ("target_accept_prob", 0.0), ("target_accept_prob", 1.5), ("num_chains", 0), ("num_warmup", -1),
        ("max_tree_depth", 0), ("dense_mass", "maybe"), ("target_ess", 0), ("max_samples", 10), ("name", "hmc"),
    ],
)
def test_bad_config_raises_naming_field(field, value):
    cfg = NUTSConfig(num_samples=100)._replace(**{field: value})
    with pytest.raises(ValueError, match=field):
        cfg.validate()
    with pytest.raises(ValueError, match=field):
        fit_batch(jax.random.PRNGKey(0), normal_mean, _normal_data(), cfg, keep_sites=MU)


def test_config_is_frozen_dataclass_with_name():
    cfg = NUTSConfig()
    assert cfg.name == "nuts" and cfg.num_draws == 1000 and cfg.sample_cap == 1000
    with pytest.raises(Exception):
        cfg.num_samples = 5  # frozen
    assert NUTSConfig(num_samples=200, target_ess=100).sample_cap == 2000
    assert NUTSConfig(num_samples=200, target_ess=100, max_samples=500).sample_cap == 500


def test_get_method_forms():
    for m in (get_method("nuts", num_samples=50), get_method({"name": "nuts", "num_samples": 50}),
              get_method(NUTSConfig(num_samples=50))):
        assert isinstance(m, NUTS) and isinstance(m, inference.InferenceMethod)
        assert m.name == "nuts" and m.config.num_samples == 50
    from omegaconf import OmegaConf

    assert get_method(OmegaConf.create({"name": "nuts", "thinning": 2})).config.thinning == 2
    with pytest.raises(ValueError, match="unknown field"):
        get_method({"name": "nuts", "num_sample": 5})
    with pytest.raises(ValueError, match="sampler"):
        get_method({"name": "gibbs"})
    with pytest.raises(ValueError, match="target_accept_prob"):
        get_method("nuts", target_accept_prob=2.0)


def test_bad_data_and_sites_raise():
    with pytest.raises(ValueError, match="replicates"):
        fit_batch(jax.random.PRNGKey(0), normal_mean, {"y": jnp.ones((3, 5)), "sd": jnp.ones(2)}, SMALL)
    with pytest.raises(ValueError, match="non-finite"):
        fit_batch(jax.random.PRNGKey(0), normal_mean, {"y": jnp.full((2, 5), jnp.nan), "sd": jnp.ones(2)}, SMALL)
    # the default stored sites are models.PARAMS; a model without them is refused by name
    with pytest.raises(ValueError, match="keep_sites"):
        fit_batch(jax.random.PRNGKey(0), normal_mean, _normal_data(), SMALL)


# ------------------------------------------------------------------------------ random numbers
def test_threefry_matches_jax_bitwise():
    from jax._src.random.threefry2x32 import threefry2x32_p

    k = jnp.array([0x13198A2E, 0x03707344], jnp.uint32)
    x1 = jnp.arange(50, dtype=jnp.uint32) * np.uint32(2654435761)
    x2 = jnp.arange(50, dtype=jnp.uint32) ^ np.uint32(0xDEADBEEF)
    ref = threefry2x32_p.bind(k[0], k[1], x1, x2)
    mine = rng.threefry2x32(k[0], k[1], x1, x2)
    np.testing.assert_array_equal(np.asarray(mine[0]), np.asarray(ref[0]))
    np.testing.assert_array_equal(np.asarray(mine[1]), np.asarray(ref[1]))


def test_uniforms_are_uniform():
    u = jax.vmap(lambda c: rng.uniforms(jnp.array([1, 2], jnp.uint32), c, 6, jnp.float64))(
        jnp.arange(20000, dtype=jnp.uint32)
    )
    u = np.asarray(u).ravel()
    assert u.min() >= 0 and u.max() < 1
    d = np.max(np.abs(np.sort(u) - np.arange(1, u.size + 1) / u.size))  # KS distance, 5 sigma band
    assert d < 2.0 / np.sqrt(u.size)


# ------------------------------------------------------------------------------ behaviour pinned before the split
# Values produced by the engine as it was before the split into noisydot_sbc.inference (same keys, float64).
PINNED = {
    "vectorized": {
        "x": [0.12819781944455225, 0.22831208448301238, 0.20334914525375095],
        "w": [0.09001899946787455, 0.2345791477932297, 0.1566243358629988],
    },
    "sequential": {
        "x": [0.12819781944507483, 0.22831208448300686, 0.20334914521196798],
        "w": [0.09001899946573284, 0.23457914714405836, 0.15662433435364123],
    },
}
PINNED_NLF = [[470, 435], [582, 554], [490, 512]]


@pytest.fixture(scope="module")
def pinned_fits():
    """vectorized runs with a progress callback (which must not change the draws), sequential without."""
    seen = []
    fits = {"vectorized": fit_batch(jax.random.PRNGKey(11), noisy_dot_gauss, _gdata(),
                                    PIN_G._replace(chain_method="vectorized"), progress=seen.append, progress_every=64),
            "sequential": fit_batch(jax.random.PRNGKey(11), noisy_dot_gauss, _gdata(),
                                    PIN_G._replace(chain_method="sequential"))}
    return fits, seen


@pytest.mark.parametrize("mode", ["vectorized", "sequential"])
def test_draws_pinned_from_pre_split_engine(pinned_fits, mode):
    """(vectorized with progress reporting on: the pins were made without it)"""
    fit = pinned_fits[0][mode]
    assert set(fit.samples) == {"x_noise_lvl", "w_noise_lvl"}  # models.PARAMS kept by default
    # bit-identical on the machine the pins were made on; 1e-9 allows another CPU's code generation
    np.testing.assert_allclose(fit.samples["x_noise_lvl"][:, 0, -1], PINNED[mode]["x"], rtol=1e-9)
    np.testing.assert_allclose(fit.samples["w_noise_lvl"][:, 1, -1], PINNED[mode]["w"], rtol=1e-9)
    np.testing.assert_array_equal(fit.n_leapfrog, PINNED_NLF)


def test_modes_agree(pinned_fits):
    """Per-replicate-chain counter streams: the mapping does not change the algorithm. sequential runs
    the same trajectories (same leapfrog counts) with draws equal to rounding (batched vs unbatched
    reductions, see docs/engine.md)."""
    vec, seq = (pinned_fits[0][m] for m in ("vectorized", "sequential"))
    assert (vec.chain_method, seq.chain_method) == ("vectorized", "sequential")
    for site in vec.samples:
        np.testing.assert_allclose(seq.samples[site], vec.samples[site], rtol=1e-7)
    np.testing.assert_array_equal(seq.sample_stats["n_steps"], vec.sample_stats["n_steps"])


@pytest.mark.slow
def test_parallel_is_bit_identical_to_vectorized(pinned_fits):
    vec = pinned_fits[0]["vectorized"]
    par = fit_batch(jax.random.PRNGKey(11), noisy_dot_gauss, _gdata(), PIN_G._replace(chain_method="parallel"))
    assert par.chain_method == "parallel"
    for site in vec.samples:
        np.testing.assert_array_equal(par.samples[site], vec.samples[site])


def test_progress_reports_inside_the_loop(pinned_fits):
    seen = pinned_fits[1]
    assert len(seen) >= 3 and seen[0] < 1.0 and seen[-1] == 1.0  # reports from inside one compiled call
    assert all(0 < a < b for a, b in zip(seen, seen[1:]))
    with pytest.raises(ValueError, match="progress_every"):
        fit_batch(jax.random.PRNGKey(0), noisy_dot_gauss, _gdata(), PIN_G, progress=print, progress_every=0)


# ------------------------------------------------------------------------------ correctness
def test_conjugate_posterior_recovered(normal_fit):
    data, fit = normal_fit
    mean, sd = _posterior(data)
    mu = fit.samples["mu"]
    assert mu.shape == (4, 2, 1500)
    n = mu.shape[1] * mu.shape[2]
    np.testing.assert_array_less(np.abs(mu.mean((1, 2)) - mean), 5 * sd / np.sqrt(n / 4))  # ESS >= n/4
    np.testing.assert_allclose(mu.std((1, 2)), sd, rtol=0.1)
    assert not fit.failed.any()
    assert fit.sample_stats["diverging"].sum() == 0
    assert 0.7 < fit.sample_stats["acceptance_rate"].mean() < 0.99  # target 0.8


def test_result_shapes_and_stats(normal_fit):
    data, fit = normal_fit
    assert isinstance(fit, FitResult) and fit.chain_method == "vectorized"
    assert set(fit.sample_stats) == set(STAT_NAMES)
    for name, v in fit.sample_stats.items():
        assert v.shape == (4, 2, 1500), name
    assert fit.sample_stats["diverging"].dtype == bool
    assert np.issubdtype(fit.sample_stats["tree_depth"].dtype, np.integer)
    depth, steps = fit.sample_stats["tree_depth"], fit.sample_stats["n_steps"]
    assert (steps >= 1).all() and (steps <= 2**depth - 1).all() and (depth <= SMALL.max_tree_depth).all()
    mu, lp = fit.samples["mu"][1].ravel(), fit.sample_stats["lp"][1].ravel()
    mean, _ = _posterior(data)
    assert np.corrcoef(lp, -((mu - mean[1]) ** 2))[0, 1] > 0.99  # lp peaks at the posterior mean
    assert (fit.sample_stats["energy"] >= -fit.sample_stats["lp"] - 1e-9).all()  # kinetic energy >= 0
    assert fit.wall_time > 0 and fit.compile_time >= 0
    assert fit.failed.shape == (4,) and fit.error == [""] * 4
    # warm-up included: at least one leapfrog step per iteration and chain
    assert (fit.n_leapfrog >= SMALL.num_warmup + SMALL.num_samples).all()


def test_failed_replicate_is_flagged_not_fatal(normal_fit):
    data = dict(normal_fit[0])
    data["sd"] = data["sd"].at[2].set(-1.0)  # Normal with negative scale: log density is NaN
    fit = fit_batch(jax.random.PRNGKey(0), normal_mean, data, SMALL, keep_sites=MU)  # same executable
    assert fit.compile_time == 0.0
    np.testing.assert_array_equal(fit.failed, [False, False, True, False])
    assert "finite" in fit.error[2] and fit.error[0] == ""
    assert np.isnan(fit.samples["mu"][2]).all() and np.isfinite(fit.samples["mu"][[0, 1, 3]]).all()


def test_nuts_method_returns_declared_posterior(normal_fit):
    data, ref = normal_fit
    post = NUTS(SMALL).fit(jax.random.PRNGKey(0), _as_model(normal_mean, MU), data)
    assert isinstance(post, Posterior) and post.inference == "nuts" and not post.independent_draws
    np.testing.assert_array_equal(post.samples["mu"], ref.samples["mu"])  # same path as fit_batch
    specs = {s.name: s for s in post.stat_specs}
    assert all(isinstance(s, StatSpec) for s in post.stat_specs)
    assert set(post.sample_stats) == {n for n, s in specs.items() if s.level == "draw"}
    assert set(post.fit_stats) == {n for n, s in specs.items() if s.level == "replicate"}
    for name, v in post.sample_stats.items():
        assert v.shape == (4, 2, 1500)
        assert {"b": v.dtype == bool, "i": np.issubdtype(v.dtype, np.integer),
                "f": np.issubdtype(v.dtype, np.floating)}[specs[name].kind]
    np.testing.assert_array_equal(post.fit_stats["n_leapfrog"], ref.n_leapfrog.sum(1))
    np.testing.assert_array_equal(post.fit_stats["num_samples"], [1500] * 4)
    assert post.info["chain_method"] == "vectorized" and post.info["max_tree_depth"] == 10


def _as_model(fn, params):
    """A minimal stand-in with the fields of models.Model the NUTS method reads (fn, params)."""
    from noisydot_sbc.models import Model

    return Model(name="test", fn=fn, prior=None, y_noise=0.0, shared_w_noise=False, loglik=None, params=params)


def test_step_size_adapts_per_replicate():
    """Short warm-up (< 20 iterations: step size only): each replicate's step size follows its own scale."""
    data = _normal_data(seed=2)
    cfg = NUTSConfig(num_warmup=15, num_samples=20, num_chains=1, chain_method="vectorized")
    fit = fit_batch(jax.random.PRNGKey(2), normal_mean, data, cfg, keep_sites=MU)
    eps = fit.sample_stats["step_size"][:, 0, 0]
    assert (np.diff(eps) > 0).all()  # ordered like the posterior sd (0.02, 0.2, 1.1, 4.4)
    assert eps[-1] / eps[0] > 20
    assert (fit.sample_stats["step_size"] == fit.sample_stats["step_size"][:, :, :1]).all()


def test_dense_mass_matrix_on_correlated_target():
    loc = jnp.array([[1.0, -1.0], [0.0, 2.0]])
    scale = jnp.array([1.0, 0.01])
    cfg = NUTSConfig(num_warmup=400, num_samples=1500, num_chains=2, dense_mass=True, chain_method="vectorized")
    fit = fit_batch(jax.random.PRNGKey(3), correlated_normal, {"loc": loc, "scale": scale}, cfg,
                    keep_sites=("theta",))
    th = fit.samples["theta"]
    assert th.shape == (2, 2, 1500, 2)
    for s in range(2):
        d = th[s].reshape(-1, 2)
        np.testing.assert_allclose(d.mean(0), loc[s], atol=5 * float(scale[s]) / np.sqrt(d.shape[0] / 4))
        np.testing.assert_allclose(np.corrcoef(d.T)[0, 1], 0.95, atol=0.02)
        np.testing.assert_allclose(d.std(0), [scale[s]] * 2, rtol=0.1)
    assert fit.sample_stats["tree_depth"].mean() < 3  # a learned dense metric: short trajectories


# ------------------------------------------------------------------------------ sites, thinning, cache
def test_sites_thinning_and_compile_once():
    compiles = []

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        driver.clear_cache()
        cfg = NUTSConfig(num_warmup=40, num_samples=20, num_chains=2, thinning=3, chain_method="vectorized")
        y = jnp.array([[0.3], [1.0], [-2.0]])
        y2, y3 = y * 2.0, y[:2]
        first = fit_batch(jax.random.PRNGKey(5), toy_latent, {"y": y}, cfg)
        n_first = len(compiles)
        assert n_first >= 1 and first.compile_time > 0
        assert set(first.samples) == {"x_noise_lvl"}  # 'u' is sampled but not stored by default
        for v in list(first.samples.values()) + list(first.sample_stats.values()):
            assert v.shape == (3, 2, 7)  # ceil(20 / 3) draws
        assert (first.samples["x_noise_lvl"] > 0).all()
        # pinned before the split (same key and config)
        np.testing.assert_allclose(first.samples["x_noise_lvl"][:, 0, -1],
                                   [1.2818270642710687, 1.2327330082587187, 2.68087293597587], rtol=1e-9)
        # same shapes, new values and key: no compilation at all
        second = fit_batch(jax.random.PRNGKey(7), toy_latent, {"y": y2}, cfg)
        assert len(compiles) == n_first and second.compile_time == 0.0
        assert driver.cache_info() == {"hits": 1, "misses": 1, "size": 1}
        # drop_sites keeps every other site; a new shape compiles again
        third = fit_batch(jax.random.PRNGKey(0), toy_latent, {"y": y3}, cfg, drop_sites=())
        assert set(third.samples) == {"x_noise_lvl", "u"} and third.samples["u"].shape == (2, 2, 7, 3)
        assert len(compiles) > n_first and driver.cache_info()["misses"] == 2
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_auto_and_host_devices():
    method, why = driver.resolve_chain_method("auto", 10)
    assert method in ("vectorized", "parallel") and why
    assert driver.resolve_chain_method("sequential", 10)[0] == "sequential"
    n = len(jax.devices("cpu"))
    assert driver.configure_host_devices(n) == n  # already satisfied: no-op
    with pytest.raises(RuntimeError, match="already initialised"):
        driver.configure_host_devices(n + 1)
    with pytest.raises(ValueError, match="k must be"):
        driver.configure_host_devices(0)


# ------------------------------------------------------------------------------ adaptive run length
TARGET = NUTSConfig(num_warmup=100, num_samples=40, num_chains=2, target_ess=150, max_samples=400,
                    chain_method="vectorized")


@pytest.fixture(scope="module")
def target_fit():
    data = _normal_data()
    return data, fit_batch(jax.random.PRNGKey(4), normal_mean, data, TARGET, keep_sites=MU)


def test_target_ess_continues_chains_to_the_length_needed(target_fit):
    """Pilot of 40 draws x 2 chains; replicates whose ESS is short are continued (same chains) to
    reach ESS >= 150, at most 400 iterations; the returned draws are 40 per chain, evenly spaced."""
    from noisydot_sbc.diagnostics import rhat_ess

    data, fit = target_fit
    n = fit.num_samples
    assert fit.samples["mu"].shape == (4, 2, 40) and not fit.failed.any()
    assert ((n >= 40) & (n <= 400)).all() and (n > 40).any()  # the pilot alone does not reach 150
    assert (fit.n_leapfrog >= 100 + n[:, None]).all()  # at least one leapfrog step per iteration run
    # 40 evenly spaced draws of a run with ESS >= 150 over 2n draws are nearly independent
    _, bulk, _ = rhat_ess(fit.samples["mu"])
    assert np.all((bulk >= 0.5 * 80) | (n == 400)), (bulk, n)
    mean, sd = _posterior(data)
    np.testing.assert_array_less(np.abs(fit.samples["mu"].mean((1, 2)) - mean), 5 * sd / np.sqrt(80 / 4))


@pytest.mark.slow
def test_target_ess_continuation_equals_one_long_run(target_fit):
    """The continued chains are the same run as one fixed-length run of max(n) iterations, evenly thinned."""
    data, fit = target_fit
    n = fit.num_samples
    full = fit_batch(jax.random.PRNGKey(4), normal_mean, data, TARGET._replace(target_ess=None, max_samples=None,
                     num_samples=int(n.max())), keep_sites=MU)
    s = int(np.argmax(n))
    idx = np.floor(np.arange(40) * n[s] / 40).astype(int)
    np.testing.assert_allclose(fit.samples["mu"][s], full.samples["mu"][s][:, idx], rtol=1e-9)


@pytest.mark.slow
def test_gaussian_model_matches_numpyro_mcmc():
    """The project's Gaussian model on tiny data against a long numpyro.infer.MCMC reference."""
    from noisydot_sbc.models import build_model
    from noisydot_sbc.priors import STRONG
    from noisydot_sbc.simulate import make_design, simulate_y

    model = build_model("gaussian", STRONG)
    design = make_design(jax.random.PRNGKey(3), 40, 3)
    y = simulate_y(jax.random.PRNGKey(4), design.x, design.w, 0.2, 0.1)
    ref = numpyro.infer.MCMC(numpyro.infer.NUTS(model.fn), num_warmup=500, num_samples=5000, progress_bar=False)
    ref.run(jax.random.PRNGKey(5), design.x, design.w, y)
    ref_s = ref.get_samples()
    data = {"x": design.x[None], "w": design.w[None], "y": y[None]}
    post = NUTS(num_warmup=300, num_samples=2000, num_chains=2, chain_method="vectorized").fit(
        jax.random.PRNGKey(6), model, data)
    for site in ("x_noise_lvl", "w_noise_lvl"):
        a, b = post.samples[site].ravel(), np.asarray(ref_s[site])
        assert (a > 0).all()  # constrained values
        se = b.std() * np.sqrt(1 / (a.size / 4) + 1 / (b.size / 4))
        assert abs(a.mean() - b.mean()) < 5 * se, site
        np.testing.assert_allclose(a.std(), b.std(), rtol=0.15)
        np.testing.assert_allclose(np.quantile(a, [0.1, 0.9]), np.quantile(b, [0.1, 0.9]), rtol=0.1)
