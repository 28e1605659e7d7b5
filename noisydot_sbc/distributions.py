"""NumPyro distribution of the noisy dot product's output, with the exact marginal likelihood.

    y_n = Σ_i (x_ni + σ_x e_ni) · w_i (1 + σ_w u_ni) + σ_y v_n,   e, u, v ~ N(0, 1) independent.

``NoisyDot(x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0)`` is a distribution over y with real
support and event shape (). Its batch shape is that of the observations, (N,) for a design x
(N, M) and weights w (M,), broadcast NumPyro-style with any leading batch dimensions of x (..., N, M),
w (..., M) and the noise levels (any shape broadcasting against (..., N): scalars, one level per
leading batch element as (..., 1), or one per observation). ``sample`` runs the true process;
``log_prob`` is the exact marginal density (saddlepoint-shifted Fourier inversion with robust
tiers, see docs/likelihood.md and :func:`noisydot_sbc.likelihoods.noisydot_logpdf`). Usage inside
a model::

    numpyro.sample("obs", NoisyDot(x, w, sx, sw), obs=y)
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Distribution, constraints
from numpyro.distributions.util import validate_sample

from ._validation import as_finite_array, check_positive
from .likelihoods import LogpdfResult, moments, noisydot_logpdf_with_error
from .simulate import simulate_y_unchecked

_NOISE = ("x_noise_lvl", "w_noise_lvl", "y_noise")


def _check_params(x, w, noise):
    """Concrete-input checks (skipped for traced values), each a ValueError naming the argument."""
    as_finite_array("x", x)
    as_finite_array("w", w)
    if jnp.ndim(x) < 2:
        raise ValueError(f"x must be (..., N, M) with at least 2 dimensions, got shape {jnp.shape(x)}")
    if jnp.ndim(w) < 1:
        raise ValueError(f"w must be (..., M) with at least 1 dimension, got shape {jnp.shape(w)}")
    if jnp.shape(x)[-1] != jnp.shape(w)[-1]:
        raise ValueError(
            f"x has {jnp.shape(x)[-1]} inputs per observation (shape {jnp.shape(x)}) but w has "
            f"{jnp.shape(w)[-1]} weights (shape {jnp.shape(w)}); x must be (..., N, M) and w (..., M)"
        )
    if jnp.shape(x)[-2] == 0 or jnp.shape(x)[-1] == 0:
        raise ValueError(f"x is empty (shape {jnp.shape(x)}); at least one observation and one input are needed")
    if not isinstance(w, jax.core.Tracer) and np.any(np.all(np.asarray(w) == 0, axis=-1)):
        raise ValueError("w is all zero: the device output carries no information about the noise")
    for name, val in zip(_NOISE, noise):
        check_positive(name, val, allow_zero=name == "y_noise")


def _row_logpdf(y, x, w, sx, sw, sy):
    return tuple(noisydot_logpdf_with_error(y, x, w, sx, sw, sy))


_rows_jit = jax.jit(jax.vmap(_row_logpdf))
_MAX_ROWS = 256


def _logpdf_rows(y, x, w, sx, sw, sy):
    """Exact log density of R independent rows: y (R, N), x (R, N, M), w (R, M), noise levels (R,).

    One row is evaluated without vmap (the common case inside a model). With concrete inputs the
    rows are padded to a power of two (copies of the first row) before the compiled, vmapped
    evaluator, so that different sample shapes reuse a few compiled functions; traced inputs are
    evaluated as they are."""
    r = y.shape[0]
    if r == 1:
        return tuple(a[None] for a in _row_logpdf(y[0], x[0], w[0], sx[0], sw[0], sy[0]))
    args = (y, x, w, sx, sw, sy)
    if any(isinstance(a, jax.core.Tracer) for a in args):
        return jax.vmap(_row_logpdf)(*args)
    size = min(1 << (r - 1).bit_length(), _MAX_ROWS)
    outs = []
    for start in range(0, r, size):      # bounded memory: at most _MAX_ROWS rows per compiled call
        part = [a[start:start + size] for a in args]
        k = part[0].shape[0]
        padded = [jnp.concatenate([a, jnp.broadcast_to(a[:1], (size - k,) + a.shape[1:])]) for a in part]
        outs.append([o[:k] for o in _rows_jit(*padded)])
    return tuple(jnp.concatenate(c) for c in zip(*outs))


class NoisyDot(Distribution):
    """Output of the noisy device for a design x (..., N, M), weights w (..., M) and noise levels.

    Batch shape: broadcast of x.shape[:-1], w.shape[:-1] + (1,) and the noise levels' shapes;
    event shape (). Concrete inputs are checked: bad shapes, non-finite values, non-positive noise
    levels, all-zero w or empty data raise ``ValueError`` naming the argument (whatever
    ``validate_args`` says; with ``validate_args=True`` NumPyro's own constraint checks run too).
    Noise levels may be traced (e.g. under NUTS); the density is differentiable in them, not in
    x, w or the value.
    """

    arg_constraints = {
        "x": constraints.real_matrix,
        "w": constraints.real_vector,
        "x_noise_lvl": constraints.positive,
        "w_noise_lvl": constraints.positive,
        "y_noise": constraints.nonnegative,
    }
    support = constraints.real
    reparametrized_params = []

    def __init__(self, x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0, *, validate_args=None):
        _check_params(x, w, (x_noise_lvl, w_noise_lvl, y_noise))
        x = jnp.asarray(x)
        dtype = jnp.result_type(x.dtype, float)
        self.x = x.astype(dtype)
        self.w = jnp.asarray(w, dtype)
        self.x_noise_lvl = jnp.asarray(x_noise_lvl, dtype)
        self.w_noise_lvl = jnp.asarray(w_noise_lvl, dtype)
        self.y_noise = jnp.asarray(y_noise, dtype)
        try:
            batch_shape = jnp.broadcast_shapes(self.x.shape[:-1], self.w.shape[:-1] + (1,),
                                               *(jnp.shape(getattr(self, k)) for k in _NOISE))
        except ValueError:
            shapes = {k: jnp.shape(getattr(self, k)) for k in ("x", "w") + _NOISE}
            raise ValueError(f"x_noise_lvl, w_noise_lvl and y_noise must broadcast against the observations' "
                             f"batch shape x.shape[:-1] (with w.shape[:-1] + (1,)); got shapes {shapes}") from None
        super().__init__(batch_shape=batch_shape, event_shape=(), validate_args=validate_args)

    # ---- broadcasting helpers -----------------------------------------------------------------
    def _per_observation_noise(self) -> bool:
        """True if some noise level varies along the observation axis (then each observation is
        evaluated on its own; otherwise all N observations of a design share one call)."""
        nd = len(self.batch_shape)
        for k in _NOISE:
            shp = jnp.shape(getattr(self, k))
            if len(shp) == nd and shp[-1] != 1:
                return True
        return False

    def _flat_params(self):
        """x (L, N, M), w (L, M) and noise levels (L, N) over the L leading batch elements."""
        lead, n = self.batch_shape[:-1], self.batch_shape[-1]
        m = self.x.shape[-1]
        size = math.prod(lead)
        x = jnp.broadcast_to(self.x, lead + (n, m)).reshape(size, n, m)
        w = jnp.broadcast_to(self.w, lead + (m,)).reshape(size, m)
        noise = [jnp.broadcast_to(getattr(self, k), self.batch_shape).reshape(size, n) for k in _NOISE]
        return x, w, noise

    # ---- moments ----------------------------------------------------------------------------
    @property
    def mean(self):
        return jnp.broadcast_to(moments(self.x, self.w, self.x_noise_lvl, self.w_noise_lvl)[0], self.batch_shape)

    @property
    def variance(self):
        return jnp.broadcast_to(moments(self.x, self.w, self.x_noise_lvl, self.w_noise_lvl, self.y_noise)[1],
                                self.batch_shape)

    # ---- sampling ---------------------------------------------------------------------------
    def sample(self, key, sample_shape=()):
        sample_shape = tuple(sample_shape)
        n_draws = math.prod(sample_shape)
        keys = jax.random.split(key, max(n_draws, 1))
        x, w, (sx, sw, sy) = self._flat_params()
        size = x.shape[0]

        def one_design(k, xl, wl, sxl, swl, syl):
            # noise levels as (N, 1) / (N,) broadcast inside the simulator: identical draws to
            # simulate.simulate_y with scalar levels for the same key
            return simulate_y_unchecked(k, xl, wl, sxl[:, None], swl[:, None], syl)

        def one(k):
            if size == 1:
                return one_design(k, x[0], w[0], sx[0], sw[0], sy[0])[None]
            return jax.vmap(one_design)(jax.random.split(k, size), x, w, sx, sw, sy)

        draws = jax.vmap(one)(keys)
        return draws[:n_draws].reshape(sample_shape + self.batch_shape)

    # ---- density ----------------------------------------------------------------------------
    def _evaluate(self, value):
        """(log p, error estimate, fallback flag), each of shape broadcast(value.shape, batch_shape)."""
        value = jnp.asarray(value, self.x.dtype)
        try:
            out_shape = jnp.broadcast_shapes(jnp.shape(value), self.batch_shape)
        except ValueError:
            raise ValueError(f"y of shape {jnp.shape(value)} does not broadcast against the batch shape "
                             f"{self.batch_shape} (one value per observation, i.e. per row of x)") from None
        n_sample = math.prod(out_shape[: len(out_shape) - len(self.batch_shape)])
        x, w, (sx, sw, sy) = self._flat_params()
        size, n, m = x.shape
        yv = jnp.broadcast_to(value, out_shape).reshape(n_sample, size, n)
        rep = lambda a: jnp.broadcast_to(a, (n_sample,) + a.shape).reshape((n_sample * size,) + a.shape[1:])
        if self._per_observation_noise():   # every observation on its own (rows of one observation)
            rows = (yv.reshape(-1, 1), rep(x).reshape(-1, 1, m), jnp.repeat(rep(w), n, axis=0),
                    rep(sx).reshape(-1), rep(sw).reshape(-1), rep(sy).reshape(-1))
        else:                               # one row per (draw, design): its N observations share a call
            rows = (yv.reshape(-1, n), rep(x), rep(w), rep(sx)[:, 0], rep(sw)[:, 0], rep(sy)[:, 0])
        res = _logpdf_rows(*rows)
        return LogpdfResult(*(r.reshape(out_shape) for r in res))

    @validate_sample
    def log_prob(self, value):
        as_finite_array("y", value, allow_empty=False)
        return self._evaluate(value).logp

    def log_prob_with_error(self, value):
        """(log p, estimated |log p error|, used-fallback flag), each shaped like log_prob(value)."""
        as_finite_array("y", value, allow_empty=False)
        return self._evaluate(value)
