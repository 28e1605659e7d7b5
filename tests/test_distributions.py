"""NoisyDot as a NumPyro distribution: sampling, log_prob under jit/vmap/grad, input checks."""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.infer.util import log_density

from noisydot_sbc.distributions import NoisyDot
from noisydot_sbc.likelihoods import moments, noisydot_logpdf


def _design(n=40, m=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, m)), rng.normal(size=m)


def test_sample_shapes_and_moments():
    x, w = _design(n=3, m=4)
    d = NoisyDot(x, w, 0.2, 0.3)
    assert d.batch_shape == (3,) and d.sample(jax.random.PRNGKey(0)).shape == (3,)
    draws = d.sample(jax.random.PRNGKey(1), (20000,))
    assert draws.shape == (20000, 3)
    mean, var = moments(x, w, 0.2, 0.3)
    assert np.all(np.abs(np.asarray(draws.mean(0) - mean)) < 5 * np.sqrt(np.asarray(var) / 20000))
    np.testing.assert_allclose(draws.var(0), var, rtol=0.06)


def test_log_prob_in_model_jit_vmap_grad():
    x, w = _design()
    y = NoisyDot(x, w, 0.1, 0.05).sample(jax.random.PRNGKey(2))

    def model(sx, sw):
        with numpyro.plate("obs_plate", x.shape[0]):
            numpyro.sample("obs", NoisyDot(x, w, sx, sw), obs=y)

    f = jax.jit(lambda p: log_density(model, (p[0], p[1]), {}, {})[0])
    p = jnp.array([0.1, 0.05])
    np.testing.assert_allclose(f(p), jnp.sum(noisydot_logpdf(y, x, w, 0.1, 0.05)), rtol=1e-12)
    g = jax.grad(f)(p)
    assert np.all(np.isfinite(np.asarray(g)))
    ps = jnp.array([[0.1, 0.05], [0.2, 0.1], [0.05, 0.3]])
    v = jax.vmap(f)(ps)
    np.testing.assert_allclose(v, [f(q) for q in ps], rtol=1e-12)
    # batched values: leading dims broadcast
    lp = NoisyDot(x, w, 0.1, 0.05).log_prob(jnp.stack([y, y + 0.1]))
    assert lp.shape == (2, x.shape[0])


def test_log_prob_integrates_to_one():
    x, w = np.array([[0.8, -0.3, 0.5]]), np.array([1.0, 0.7, -1.2])
    d = NoisyDot(x, w, 0.3, 0.2)
    grid = np.linspace(-6, 6, 4001)
    lp = jax.vmap(lambda t: d.log_prob(jnp.array([t]))[0])(grid)
    assert abs(np.trapezoid(np.exp(lp), grid) - 1.0) < 1e-8


@pytest.mark.parametrize(
    "args,name",
    [((np.ones((3, 2)), np.ones(3), 0.1, 0.1), "x"), ((np.ones((2, 2)), np.zeros(2), 0.1, 0.1), "w"),
     ((np.ones((2, 2)), np.ones(2), 0.0, 0.1), "x_noise_lvl"), ((np.ones((2, 2)), np.ones(2), 0.1, -2.0), "w_noise_lvl"),
     ((np.full((2, 2), np.nan), np.ones(2), 0.1, 0.1), "x"), ((np.ones((0, 2)), np.ones(2), 0.1, 0.1), "x")],
)
def test_bad_constructor_input(args, name):
    with pytest.raises(ValueError, match=name):
        NoisyDot(*args)


def test_bad_observation():
    d = NoisyDot(np.ones((2, 2)), np.ones(2), 0.1, 0.1)
    with pytest.raises(ValueError, match="y"):
        d.log_prob(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="y"):
        d.log_prob(np.ones(3))
