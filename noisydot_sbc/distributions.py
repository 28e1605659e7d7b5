"""NumPyro distribution of the noisy dot product's output, with the exact marginal likelihood.

    y_n = Σ_i (x_ni + σ_x e_ni) · w_i (1 + σ_w u_ni) + σ_y v_n,   e, u, v ~ N(0, 1) independent.

``NoisyDot(x, w, x_noise_lvl, w_noise_lvl, y_noise=0.0)`` is a distribution over y with batch
shape (N,) and real support. ``sample`` runs the true process; ``log_prob`` is the exact
marginal density (saddlepoint-shifted Fourier inversion, see docs/likelihood.md and
:func:`noisydot_sbc.likelihoods.noisydot_logpdf`). Usage inside a model::

    numpyro.sample("obs", NoisyDot(x, w, sx, sw), obs=y)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro.distributions import Distribution, constraints
from numpyro.distributions.util import validate_sample

from ._validation import as_finite_array, check_design, check_positive
from .likelihoods import moments, noisydot_logpdf_with_error
from .simulate import _simulate_y


class NoisyDot(Distribution):
    """Output of the noisy device for a design x (N, M), weights w (M,) and noise levels.

    Noise levels are scalars (they may be traced, e.g. under NUTS). Inputs are checked when
    concrete: bad shapes, non-finite values, non-positive noise levels, all-zero w or empty
    data raise ``ValueError`` naming the argument.
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
        check_design(x, w)
        check_positive("x_noise_lvl", x_noise_lvl)
        check_positive("w_noise_lvl", w_noise_lvl)
        check_positive("y_noise", y_noise, allow_zero=True)
        for name, val in (("x_noise_lvl", x_noise_lvl), ("w_noise_lvl", w_noise_lvl), ("y_noise", y_noise)):
            if jnp.ndim(val) != 0:
                raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(val)}")
        x = jnp.asarray(x)
        dtype = jnp.result_type(x.dtype, float)
        self.x = x.astype(dtype)
        self.w = jnp.asarray(w, dtype)
        self.x_noise_lvl = jnp.asarray(x_noise_lvl, dtype)
        self.w_noise_lvl = jnp.asarray(w_noise_lvl, dtype)
        self.y_noise = jnp.asarray(y_noise, dtype)
        super().__init__(batch_shape=(self.x.shape[0],), event_shape=(), validate_args=validate_args)

    @property
    def mean(self):
        return self.x @ self.w

    @property
    def variance(self):
        return moments(self.x, self.w, self.x_noise_lvl, self.w_noise_lvl, self.y_noise)[1]

    def sample(self, key, sample_shape=()):
        sample_shape = tuple(sample_shape)
        n_draws = 1
        for d in sample_shape:
            n_draws *= d
        keys = jax.random.split(key, max(n_draws, 1))

        def one(k):
            return _simulate_y(k, self.x, self.w, self.x_noise_lvl, self.w_noise_lvl, self.y_noise)

        draws = jax.vmap(one)(keys)
        return draws[:n_draws].reshape(sample_shape + self.batch_shape)

    @validate_sample
    def log_prob(self, value):
        as_finite_array("y", value, allow_empty=False)
        value = jnp.asarray(value, self.x.dtype)
        n = self.batch_shape[0]
        if value.ndim == 0 or value.shape[-1] not in (1, n):
            raise ValueError(f"y must have a trailing dimension of size {n} (one per row of x), got shape {value.shape}")
        value = jnp.broadcast_to(value, value.shape[:-1] + (n,))
        lead = value.shape[:-1]
        flat = value.reshape((-1, n))

        def one(yv):
            return noisydot_logpdf_with_error(yv, self.x, self.w, self.x_noise_lvl, self.w_noise_lvl, self.y_noise).logp

        out = one(flat[0]) if flat.shape[0] == 1 else jax.vmap(one)(flat)
        return out.reshape(lead + (n,))

    def log_prob_with_error(self, value):
        """(log p, estimated |log p error|, used-fallback flag), each shaped like ``value`` (N,)."""
        as_finite_array("y", value, ndim=1)
        return noisydot_logpdf_with_error(value, self.x, self.w, self.x_noise_lvl, self.w_noise_lvl, self.y_noise)
