"""The three NumPyro models of the noisy dot product, selected by name.

- ``latent``: exact; the weight noise u (N×M, or M when shared per device) is latent
  (non-centred), the input noise is integrated analytically: y | u ~ N(x·w̃, σ_x² ‖w̃‖² + σ_y²).
- ``marginal``: exact; likelihood :class:`~noisydot_sbc.distributions.NoisyDot`, no latents.
- ``gaussian``: the moment-matched heteroscedastic Gaussian approximation.

Every model has the signature ``model(x, w, y=None, *, prior, y_noise=0.0)`` and samples the
sites ``x_noise_lvl`` and ``w_noise_lvl`` (see :mod:`noisydot_sbc.priors`) and ``obs``.
Noise levels enter the likelihood through |σ| so the labelled negative-control ``naive``
prior (Normal on scales) runs; with positive priors this is the identity.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from .distributions import NoisyDot
from .likelihoods import moments
from .priors import STRONG, Prior
from .simulate import simulate_y_unchecked


def latent_model(x, w, y=None, *, prior: Prior = STRONG, y_noise=0.0, shared_w_noise: bool = False):
    sx, sw = prior.sample_sites()
    sx, sw = jnp.abs(sx), jnp.abs(sw)
    n, m = x.shape
    if shared_w_noise:
        with numpyro.plate("inputs", m):
            u = numpyro.sample("u", dist.Normal(0.0, 1.0))
    else:
        with numpyro.plate("obs_plate_u", n, dim=-2), numpyro.plate("inputs", m, dim=-1):
            u = numpyro.sample("u", dist.Normal(0.0, 1.0))
    w_tilde = w * (1.0 + sw * u)
    mean = jnp.sum(x * w_tilde, axis=-1)
    scale = jnp.sqrt(sx**2 * jnp.sum(w_tilde**2, axis=-1) + y_noise**2)
    with numpyro.plate("obs_plate", n):
        numpyro.sample("obs", dist.Normal(mean, scale), obs=y)


def marginal_model(x, w, y=None, *, prior: Prior = STRONG, y_noise=0.0, shared_w_noise: bool = False):
    if shared_w_noise:
        raise ValueError(
            "shared_w_noise=True makes the observations dependent; the per-observation marginal "
            "likelihood does not apply. Use model=latent for the shared-noise variant."
        )
    sx, sw = prior.sample_sites()
    with numpyro.plate("obs_plate", x.shape[0]):
        numpyro.sample("obs", NoisyDot(x, w, jnp.abs(sx), jnp.abs(sw), y_noise), obs=y)


def gaussian_model(x, w, y=None, *, prior: Prior = STRONG, y_noise=0.0, shared_w_noise: bool = False):
    if shared_w_noise:
        raise ValueError("the Gaussian approximation models per-observation noise; shared_w_noise must be False")
    sx, sw = prior.sample_sites()
    mean, var = moments(x, w, jnp.abs(sx), jnp.abs(sw), y_noise)
    with numpyro.plate("obs_plate", x.shape[0]):
        numpyro.sample("obs", dist.Normal(mean, jnp.sqrt(var)), obs=y)


from .priors import PARAMS  # noqa: E402  the parameters every model infers (the site names), defined once

MODELS = {"latent": latent_model, "marginal": marginal_model, "gaussian": gaussian_model}


def get_model(name: str, prior: Prior = STRONG, y_noise: float = 0.0, shared_w_noise: bool = False):
    """The model called ``name`` with its prior and options bound: ``model(x, w, y=None)``."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return partial(MODELS[name], prior=prior, y_noise=y_noise, shared_w_noise=shared_w_noise)


class Model(NamedTuple):
    """A model with everything an inference method or a task needs, built by :func:`build_model`.

    ``fn``: the NumPyro model ``fn(x, w, y=None)`` (hashable: the NUTS driver caches on it);
    ``loglik``: the model's own per-observation log-likelihood ``loglik(y, x, w, sx, sw) -> (N,)``
    of the parameters (exact for ``latent`` and ``marginal``, whose marginal likelihood is the
    exact one; the moment-matched normal for ``gaussian``); ``prior``: the :class:`Prior`;
    ``y_noise``: the known readout noise; ``shared_w_noise``: weight noise drawn once per device;
    ``predictive``: the model's own sampling distribution, ``predictive(key, x, w, sx, sw) -> y``
    (N,) (traceable; σ enter through |σ|): the true process for ``latent`` and ``marginal``
    (their likelihood is the exact one), the moment-matched normal for ``gaussian``, so a
    posterior predictive check shows what the fitted model, approximation included, predicts.
    """

    name: str
    fn: Callable
    prior: Prior
    y_noise: float
    shared_w_noise: bool
    loglik: Callable
    params: tuple = PARAMS
    predictive: Callable = None


def build_model(name: str, prior: Prior = STRONG, y_noise: float = 0.0, shared_w_noise: bool = False) -> Model:
    """The :class:`Model` called ``name`` (``latent``, ``marginal`` or ``gaussian``)."""
    from .likelihoods import gaussian_logpdf, noisydot_logpdf_with_error

    fn = get_model(name, prior=prior, y_noise=y_noise, shared_w_noise=shared_w_noise)
    if name == "gaussian":
        loglik = lambda y, x, w, sx, sw: gaussian_logpdf(y, x, w, sx, sw, y_noise)
        predictive = partial(_gaussian_predictive, y_noise=float(y_noise))
    else:
        loglik = lambda y, x, w, sx, sw: noisydot_logpdf_with_error(y, x, w, sx, sw, y_noise).logp
        predictive = partial(_true_process_predictive, y_noise=float(y_noise), shared_w_noise=bool(shared_w_noise))
    return Model(name, fn, prior, float(y_noise), bool(shared_w_noise), loglik, PARAMS, predictive)


def _true_process_predictive(key, x, w, sx, sw, *, y_noise, shared_w_noise):
    return simulate_y_unchecked(key, x, w, jnp.abs(sx), jnp.abs(sw), y_noise, shared_w_noise)


def _gaussian_predictive(key, x, w, sx, sw, *, y_noise):
    mean, var = moments(x, w, jnp.abs(sx), jnp.abs(sw), y_noise)
    return mean + jnp.sqrt(var) * jax.random.normal(key, mean.shape, dtype=x.dtype)
