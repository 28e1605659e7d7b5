"""NoisyDot as a NumPyro distribution: generic, table-driven checks (shapes and broadcasting,
sample vs log_prob, validate_args, support, expand, jit/vmap, pytree) plus model usage and input checks.

Most of this file's time is compiling the exact likelihood (seconds per distinct program), so the
cases share compiled programs: every case but M = 1 uses the one design shape (N, M) = (4, 2) and
the batched cases the one leading batch size 2, so that NoisyDot's row evaluator (one program per
padded row count) and its single-design call are compiled once for all of them; the reference
evaluates whole designs (the single-design program again); the jit checks go through one
module-level jitted function (one program per case shape, shared by the pytree and the
validate_args test) and the vmap checks through the likelihood's own jitted function (one program
per batching pattern, shared by the cases that have it)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.distributions import constraints
from numpyro.infer.util import log_density
from scipy import stats

from noisydot_sbc.distributions import NoisyDot
from noisydot_sbc.likelihoods import moments, noisydot_logpdf_with_error
from noisydot_sbc.simulate import simulate_y

RNG = np.random.default_rng(0)
X4x2, W2 = RNG.normal(size=(4, 2)), RNG.normal(size=2)
X2x4x2, W2x2 = RNG.normal(size=(2, 4, 2)), RNG.normal(size=(2, 2))

# id, constructor arguments, expected batch shape (readout noise on the shared (4, 2) design: the
# likelihood at M = 3 and above is tested in test_likelihoods.py, the distribution is generic in M)
CASES = [
    ("scalar_noise", (X4x2, W2, 0.2, 0.3), (4,)),
    ("readout_noise", (X4x2, W2, 0.3, 0.4, 0.2), (4,)),
    ("m1_heavy", (X4x2[:, :1], W2[:1], 0.3, 1.0), (4,)),
    ("batched_noise", (X4x2, W2, np.array([[0.1], [0.5]]), 0.2), (2, 4)),
    ("batched_design", (X2x4x2, W2x2, np.array([[0.1], [0.4]]), np.array([[0.2], [0.05]])), (2, 4)),
    ("per_observation_noise", (X4x2, W2, np.array([0.1, 0.2, 0.3, 0.4]), 0.25), (4,)),
]
IDS = [c[0] for c in CASES]


def _reference(args, value):
    """log p by the plain per-design call with scalar noise levels, element by element: element j
    of a design is element j of the call on that design's N observations with element j's noise
    levels (so a per-observation noise level is scalar too)."""
    x, w, sx, sw = (np.asarray(a, float) for a in args[:4])
    sy = np.asarray(args[4] if len(args) > 4 else 0.0, float)
    shape = np.broadcast_shapes(value.shape, x.shape[:-1], w.shape[:-1] + (1,), sx.shape, sw.shape, sy.shape)
    n, m = x.shape[-2:]
    xb = np.broadcast_to(x, shape + (m,))
    wb = np.broadcast_to(w[..., None, :], shape + (m,))
    vb, sxb, swb, syb = (np.broadcast_to(a, shape) for a in (value, sx, sw, sy))
    out = np.empty(shape)
    for idx in np.ndindex(shape[:-1]):
        for j in range(n):
            res = noisydot_logpdf_with_error(vb[idx], xb[idx], wb[idx][j], sxb[idx][j], swb[idx][j], syb[idx][j])
            out[idx + (j,)] = float(res.logp[j])
    return out


@jax.jit
def _traced_log_probs(d, value):
    """Inside jit: log_prob of ``d`` passed in as a pytree, and of a NoisyDot built from its traced
    parameters with validate_args=True (the same computation, compiled once per case shape)."""
    rebuilt = NoisyDot(d.x, d.w, d.x_noise_lvl, d.w_noise_lvl, d.y_noise, validate_args=True)
    return d.log_prob(value), rebuilt.log_prob(value)


@pytest.mark.parametrize("cid,args,batch", CASES, ids=IDS)
def test_shapes_and_broadcasting(cid, args, batch):
    d = NoisyDot(*args)
    assert d.batch_shape == batch and d.event_shape == () and d.event_dim == 0
    assert d.mean.shape == batch and d.variance.shape == batch
    # 3 draws in every non-empty sample shape and in the reference value below: the same padded row
    # count, so one compiled row evaluator serves them all
    for sample_shape in [(), (3,), (3, 1)]:
        s = d.sample(jax.random.PRNGKey(1), sample_shape)
        assert s.shape == sample_shape + batch
        assert d.log_prob(s).shape == sample_shape + batch
    # a value with fewer dims broadcasts against the batch; one with extra leading dims adds them
    assert d.log_prob(jnp.zeros(batch[-1:])).shape == batch
    value = np.asarray(d.sample(jax.random.PRNGKey(2), (3,)))
    np.testing.assert_allclose(np.asarray(d.log_prob(value)), _reference(args, value), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cid,args,batch", CASES, ids=IDS)
def test_sample_matches_log_prob(cid, args, batch):
    """Samples follow the density: per batch element, a KS test of 2000 draws against the CDF
    obtained by integrating exp(log_prob) on a grid (which must integrate to 1), and the sample
    mean/variance against the exact moments."""
    d = NoisyDot(*args)
    draws = np.asarray(d.sample(jax.random.PRNGKey(3), (2000,)))
    mean, var = np.asarray(d.mean), np.asarray(d.variance)
    sd = np.sqrt(var)
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * sd / np.sqrt(2000))
    # a grid in standardised units reaching ±130 sd (the heavy M = 1 tails), dense in the bulk
    # (spacing 0.007 sd at the centre; M = 1 has an integrable log singularity at y = 0,
    # plus points clustered geometrically at y = 0 on both sides, so that the trapezoid rule
    # integrates the singularity)
    z = 3.0 * np.sinh(np.linspace(-4.5, 4.5, 4001)).reshape((-1,) + (1,) * len(batch))
    near0 = np.concatenate([-np.logspace(0, -12, 300), np.logspace(-12, 0, 300)]).reshape(z[:600].shape)
    grid = np.sort(np.concatenate([mean + sd * z, sd * near0]), axis=0)
    dens = np.exp(np.asarray(d.log_prob(grid)))
    mass = np.trapezoid(dens, grid, axis=0)
    np.testing.assert_allclose(mass, 1.0, atol=2e-4)
    cdf = np.concatenate([np.zeros((1,) + batch), np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid, axis=0), 0)])
    for idx in np.ndindex(batch):
        col = (slice(None),) + idx
        p = stats.kstest(draws[col], lambda v: np.interp(v, grid[col], cdf[col] / cdf[col][-1])).pvalue
        assert p > 1e-4, (idx, p)


@pytest.mark.parametrize("cid,args,batch", CASES, ids=IDS)
def test_jit_vmap_pytree_expand_support(cid, args, batch):
    d = NoisyDot(*args)
    value = d.sample(jax.random.PRNGKey(4))
    lp = d.log_prob(value)
    # the distribution is a pytree: it can be passed through jit
    np.testing.assert_allclose(_traced_log_probs(d, value)[0], lp, rtol=1e-13)
    # vmap over a leading axis of the noise level, building the distribution inside
    scales = jnp.array([0.8, 1.0, 1.3])
    got = jax.vmap(lambda c: NoisyDot(args[0], args[1], c * jnp.asarray(args[2]), *args[3:]).log_prob(value))(scales)
    for i, c in enumerate(scales):
        np.testing.assert_allclose(got[i], NoisyDot(args[0], args[1], c * np.asarray(args[2]), *args[3:]).log_prob(value),
                                   rtol=1e-12)
    # expand adds batch dimensions in front; log_prob broadcasts the base density
    e = d.expand((2,) + batch)
    assert e.batch_shape == (2,) + batch and e.sample(jax.random.PRNGKey(5), (3,)).shape == (3, 2) + batch
    np.testing.assert_allclose(e.log_prob(value), jnp.broadcast_to(lp, (2,) + batch), rtol=1e-13)
    # support
    assert d.support is constraints.real
    assert bool(jnp.all(d.support(d.sample(jax.random.PRNGKey(6), (3,)))))


@pytest.mark.parametrize("cid,args,batch", CASES, ids=IDS)
def test_validate_args(cid, args, batch):
    d = NoisyDot(*args, validate_args=True)      # valid parameters pass NumPyro's own checks
    assert d.batch_shape == batch
    # inside jit (traced parameters) construction works, the concrete checks being skipped
    plain = NoisyDot(*args)
    v = _traced_log_probs(plain, plain.sample(jax.random.PRNGKey(4)))[1]
    assert v.shape == batch
    bad = list(args)
    bad[2] = -np.abs(np.asarray(args[2], float))
    with pytest.raises(ValueError, match="x_noise_lvl"):
        NoisyDot(*bad, validate_args=True)
    with pytest.raises(ValueError, match="y"):
        d.log_prob(jnp.full(batch, jnp.nan))
    # out-of-support values inside jit are reported by NumPyro's validate_sample
    with pytest.warns(UserWarning, match="Out-of-support"):
        d._validate_sample(jnp.full(batch, jnp.inf))


def test_sample_is_the_true_process():
    """For scalar noise levels, NoisyDot.sample draws exactly what simulate.simulate_y draws."""
    d = NoisyDot(X4x2, W2, 0.2, 0.3, 0.1)
    key = jax.random.PRNGKey(7)
    np.testing.assert_array_equal(np.asarray(d.sample(key)), np.asarray(simulate_y(jax.random.split(key, 1)[0], X4x2, W2,
                                                                                   0.2, 0.3, 0.1)))


def test_sample_moments_large():
    x, w = RNG.normal(size=(3, 4)), RNG.normal(size=4)
    d = NoisyDot(x, w, 0.2, 0.3)
    draws = d.sample(jax.random.PRNGKey(1), (20000,))
    mean, var = moments(x, w, 0.2, 0.3)
    assert np.all(np.abs(np.asarray(draws.mean(0) - mean)) < 5 * np.sqrt(np.asarray(var) / 20000))
    np.testing.assert_allclose(draws.var(0), var, rtol=0.06)


def test_log_prob_in_model_jit_vmap_grad():
    x, w = X4x2, W2
    y = NoisyDot(x, w, 0.1, 0.05).sample(jax.random.PRNGKey(2))

    def model(sx, sw):
        with numpyro.plate("obs_plate", x.shape[0]):
            numpyro.sample("obs", NoisyDot(x, w, sx, sw), obs=y)

    f = jax.jit(lambda p: log_density(model, (p[0], p[1]), {}, {})[0])
    p = jnp.array([0.1, 0.05])
    np.testing.assert_allclose(f(p), jnp.sum(noisydot_logpdf_with_error(y, x, w, 0.1, 0.05).logp), rtol=1e-12)
    g = jax.grad(f)(p)
    fd = np.array([(f(p + 1e-6 * e) - f(p - 1e-6 * e)) / 2e-6 for e in np.eye(2)])
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6)
    ps = jnp.array([[0.1, 0.05], [0.2, 0.1], [0.05, 0.3]])
    np.testing.assert_allclose(jax.vmap(f)(ps), [f(q) for q in ps], rtol=1e-12)


def test_log_prob_with_error_shapes():
    d = NoisyDot(X4x2, W2, np.array([[0.1], [0.3], [0.5]]), 0.2)
    res = d.log_prob_with_error(jnp.zeros((2, 3, 4)))
    assert res.logp.shape == res.err.shape == res.fallback.shape == (2, 3, 4)
    assert np.all(np.asarray(res.err) < 1e-6)


@pytest.mark.parametrize(
    "args,name",
    [((np.ones((3, 2)), np.ones(3), 0.1, 0.1), "x"), ((np.ones((2, 2)), np.zeros(2), 0.1, 0.1), "w"),
     ((np.ones((2, 2)), np.ones(2), 0.0, 0.1), "x_noise_lvl"), ((np.ones((2, 2)), np.ones(2), 0.1, -2.0), "w_noise_lvl"),
     ((np.ones((2, 2)), np.ones(2), 0.1, 0.1, -1.0), "y_noise"),
     ((np.full((2, 2), np.nan), np.ones(2), 0.1, 0.1), "x"), ((np.ones((0, 2)), np.ones(2), 0.1, 0.1), "x"),
     ((np.ones(2), np.ones(2), 0.1, 0.1), "x"), ((np.ones((2, 2)), np.ones(2), np.ones(3) * 0.1, 0.1), "noise_lvl")],
)
def test_bad_constructor_input(args, name):
    with pytest.raises(ValueError, match=name):
        NoisyDot(*args)


def test_bad_observation():
    d = NoisyDot(X4x2, W2, 0.1, 0.1)   # the cases' design shape: its compiled density is reused
    with pytest.raises(ValueError, match="y"):
        d.log_prob(np.array([np.nan, 1.0, 0.5, -0.5]))
    with pytest.raises(ValueError, match="y"):
        d.log_prob(np.ones(3))
    assert math.isfinite(float(d.log_prob(np.array([0.5, 1.0, -0.3, 0.2])).sum()))
